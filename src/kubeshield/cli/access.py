"""``kubeshield access``: secure kubectl (agent, import, proxy, kubeconfig, exec-credential, login, relay).

The commands live in ``_access_agent`` (agent, import, proxy, kubeconfig, exec-credential, lock,
status) and ``_access_relay`` (relay, login); each exposes ``commands``; this module only groups them.
"""

from __future__ import annotations

import importlib

import click

__all__ = ["group"]

_PARTS = ("_access_agent", "_access_relay")


@click.group("access")
def group() -> None:
    """Secure kubectl: credentials only in memory, behind a local https proxy.

    \b
    agent            the per-user daemon that holds credentials in memory only
    import           move an existing kubeconfig's credentials into the agent and its sealed store
    unlock           load the sealed store into the agent (asks for its passphrase)
    lock             drop every credential the agent holds, and stop its proxies
    status           what the agent holds (contexts, expiry, proxies), never a secret
    proxy            serve one context on https://127.0.0.1:PORT for kubectl
    kubeconfig       print a kubeconfig that holds no secret (it points at the proxy)
    exec-credential  a client-go exec plugin served from the agent's memory
    login            log in through the relay (OIDC) and hand the certificate to the agent
    relay            the login relay: OIDC in, short-lived client certificates out

    A person's first login, step by step: docs/access.md.
    """


for _part in _PARTS:
    try:
        _module = importlib.import_module(f"kubeshield.cli.{_part}")
    except ModuleNotFoundError as _exc:  # a part not built yet
        if _exc.name != f"kubeshield.cli.{_part}":
            raise
        continue
    for _command in _module.commands:
        group.add_command(_command)
