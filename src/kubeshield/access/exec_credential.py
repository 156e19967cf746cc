"""``kubeshield access exec-credential``: a client-go exec credential plugin served from the agent.

client-go runs the plugin with ``KUBERNETES_EXEC_INFO`` set to an ``ExecCredential`` request (its
``apiVersion`` and ``spec.interactive``: whether stdin is the user's terminal) and reads an
``ExecCredential`` from stdout. The answer is built from the agent's memory and never cached on disk:

* with ``--proxy`` (the kubeconfig ``kubeshield access kubeconfig`` prints): the proxy session's bearer
  secret, ``status.token``, and its expiry;
* without: the cluster credential itself, a token or ``clientCertificateData`` + ``clientKeyData``,
  with ``expirationTimestamp``. Then the key is in kubectl's memory too: use the proxy where you can.

When the agent has no (unexpired) credential for the context, an interactive call (``spec.interactive``
true and stdin a terminal) asks once, on stderr, to unlock the store, and tries again; otherwise it
fails with one line naming the command to run, instead of kubectl later failing with an x509 or 401
error. See :func:`fetch_exec_credential`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubeshield.errors import ConfigError, KubeshieldError

__all__ = [
    "EXEC_INFO_ENV",
    "RECOVERABLE",
    "ExecCredentialUnavailable",
    "ExecInfo",
    "exec_credential_document",
    "fetch_exec_credential",
    "parse_exec_info",
    "remedy",
    "stale_proxy_kubeconfig",
]

EXEC_INFO_ENV = "KUBERNETES_EXEC_INFO"
_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")


@dataclass(frozen=True, slots=True)
class ExecInfo:
    """What client-go told the plugin: the API version to answer in and whether it may prompt."""

    api_version: str = _API_VERSIONS[0]
    interactive: bool = False
    #: ``spec.cluster.certificate-authority-data`` (with ``provideClusterInfo``): the CA the kubeconfig
    #: trusts, so a proxy kubeconfig printed by an earlier agent (another local CA) is recognised
    cluster_ca: bytes | None = None


def parse_exec_info(environ: Mapping[str, str]) -> ExecInfo:
    """``KUBERNETES_EXEC_INFO`` (absent: v1, not interactive). A malformed value is a ``ConfigError``."""
    raw = environ.get(EXEC_INFO_ENV)
    if not raw:
        return ExecInfo()
    try:
        value = json.loads(raw)
    except ValueError:
        raise ConfigError(f"{EXEC_INFO_ENV} is not JSON") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{EXEC_INFO_ENV} is not an ExecCredential object")
    api_version = value.get("apiVersion", _API_VERSIONS[0])
    if api_version not in _API_VERSIONS:
        raise ConfigError(
            f"{EXEC_INFO_ENV}: apiVersion {str(api_version)[:80]!r} is not supported "
            f"(this plugin answers {', '.join(_API_VERSIONS)})"
        )
    spec = value.get("spec") or {}
    interactive = isinstance(spec, dict) and spec.get("interactive") is True
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    ca: bytes | None = None
    if isinstance(cluster, dict) and isinstance(cluster.get("certificate-authority-data"), str):
        try:
            ca = base64.b64decode(cluster["certificate-authority-data"], validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(
                f"{EXEC_INFO_ENV}: spec.cluster.certificate-authority-data is not base64"
            ) from None
    return ExecInfo(api_version=api_version, interactive=interactive, cluster_ca=ca)


def stale_proxy_kubeconfig(info: ExecInfo, *, agent_ca_pem: bytes, context: str) -> str | None:
    """Why a proxy kubeconfig cannot work with this agent (it trusts another agent's local CA), or None.

    Without this, kubectl would fail later with an x509 error that names nothing to do.
    """
    if info.cluster_ca is None or info.cluster_ca.strip() == agent_ca_pem.strip():
        return None
    return (
        "kubeshield: this kubeconfig trusts the local CA of an earlier agent (the agent was restarted); "
        f"print it again: kubeshield access kubeconfig --context {context}"
    )


def exec_credential_document(status: Mapping[str, Any], *, info: ExecInfo) -> dict[str, Any]:
    """The ExecCredential client-go reads: ``status`` as the agent gave it, in ``info``'s version."""
    allowed = {"token", "clientCertificateData", "clientKeyData", "expirationTimestamp"}
    body = {k: v for k, v in status.items() if k in allowed and v is not None}
    if "token" not in body and not ("clientCertificateData" in body and "clientKeyData" in body):
        raise ValueError("an ExecCredential status needs a token or a client certificate and key")
    return {"apiVersion": info.api_version, "kind": "ExecCredential", "status": body}


def remedy(context: str, *, store_exists: bool, relay_hint: str | None = None) -> str:
    """The one line that tells a person what to run when the agent has nothing for ``context``."""
    if relay_hint:
        return f"run `kubeshield access login --relay {relay_hint}` to log in again"
    if store_exists:
        return f"run `kubeshield access unlock` to load {context!r} from the sealed store"
    return (
        f"run `kubeshield access import --kubeconfig FILE --context {context}` (or `kubeshield access login`)"
    )


class ExecCredentialUnavailable(KubeshieldError):
    """The agent has no usable credential and nobody can be asked; the message names what to run."""


#: the agent error kinds that a login or an unlock can cure
RECOVERABLE = frozenset({"not-found", "locked", "expired"})


def fetch_exec_credential(
    *,
    context: str,
    get: Callable[[], Mapping[str, Any]],
    info: ExecInfo,
    stdin_is_tty: bool,
    prompt: Callable[[], bool],
    remedy_line: str,
) -> dict[str, Any]:
    """The ExecCredential for ``context``: ``get()`` asks the agent; when it has nothing usable and the
    call is interactive (client-go said so and stdin is a terminal), ``prompt()`` runs once (an unlock
    or a login; True when it did something) and ``get()`` is tried again. Otherwise, or when that did
    not help, :class:`ExecCredentialUnavailable` with one line: what happened and ``remedy_line``."""
    from kubeshield.access.agent_client import AgentError, AgentUnavailable

    prompted = False
    while True:
        try:
            return exec_credential_document(get(), info=info)
        except AgentError as exc:
            if exc.kind not in RECOVERABLE:
                raise
            reason = str(exc)
        except AgentUnavailable as exc:
            raise ExecCredentialUnavailable(f"kubeshield: {exc}") from None
        if prompted or not (info.interactive and stdin_is_tty):
            raise ExecCredentialUnavailable(f"kubeshield: {reason}; {remedy_line}")
        prompted = True
        if not prompt():
            raise ExecCredentialUnavailable(f"kubeshield: {reason}; {remedy_line}")
