"""``kubeshield access relay [serve] | relay init-ca | login``.

The library halves live in ``kubeshield.access`` (relay, relay_ca, relay_settings, oidc, login,
relay_attest); these commands parse flags, call them and print. Every flag also comes from
``KUBESHIELD_<FLAG>`` (``--relay`` -> ``KUBESHIELD_RELAY``); the agent socket from
``KUBESHIELD_AGENT_SOCKET``. Nothing here prints a token, a key or a code other than the device
flow's user code (which is meant for the person).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import webbrowser
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import click

from kubeshield.cli._common import DURATION, CLIError, option, raise_cli_error
from kubeshield.errors import KubeshieldError

__all__ = ["commands"]

F = TypeVar("F", bound=Callable[..., Any])

_FILE = click.Path(dir_okay=False, path_type=Path)
_EXISTING = click.Path(dir_okay=False, exists=True, path_type=Path)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except KubeshieldError as exc:
        raise_cli_error(exc)


def _config_option(func: F) -> F:
    return option(
        "--config",
        "config_file",
        type=_FILE,
        help="relay.yaml: listen, tls, oidc, ca, certificates, clusters, keys (see docs/access.md).",
    )(func)


def _settings(config_file: Path | None) -> Any:
    from kubeshield.access.relay_settings import load_relay_settings

    if config_file is None:
        raise click.UsageError("give --config relay.yaml (or KUBESHIELD_CONFIG)")
    return load_relay_settings(config_file)


def _serve(config_file: Path | None) -> None:
    try:
        from kubeshield.access.relay import RelayServer, open_relay, relay_tls_context
    except ModuleNotFoundError as exc:  # the relay verifies ID tokens with joserfc (an optional package)
        if not (exc.name or "").startswith("joserfc"):
            raise
        raise CLIError(
            "the relay verifies ID tokens with joserfc, which is not installed: pip install joserfc"
        ) from None
    from kubeshield.access.relay_attest import open_attestation

    settings = _settings(config_file)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    attestation = open_attestation(settings.attestation) if settings.attestation is not None else None
    relay = open_relay(settings, attestation=attestation)
    server = RelayServer(
        relay=relay,
        listen=settings.listen,
        tls=relay_tls_context(cert=str(settings.tls.cert), key=str(settings.tls.key)),
    ).bind()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    server.start()
    click.echo(f"relay: serving on {server.url} for issuer {settings.oidc.issuer}", err=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.shutdown()
        click.echo("relay: stopped", err=True)


@click.group("relay", invoke_without_command=True)
@_config_option
@click.pass_context
def relay_group(ctx: click.Context, config_file: Path | None) -> None:
    """The login relay: an OIDC ID token and a CSR in, a short-lived client certificate out.

    \b
    kubeshield access relay --config relay.yaml           serve (same as `relay serve`)
    kubeshield access relay init-ca --config relay.yaml   make the CA; prints its certificate

    Every cluster that should accept these certificates trusts the CA (kube-apiserver
    --client-ca-file). The CA key is stored only wrapped by the keys: backend of relay.yaml.
    """
    ctx.ensure_object(dict)
    ctx.obj["relay_config"] = config_file
    if ctx.invoked_subcommand is None:
        with _errors():
            _serve(config_file)


@relay_group.command("serve")
@_config_option
@click.pass_context
def serve_command(ctx: click.Context, config_file: Path | None) -> None:
    """Serve the relay until SIGTERM or Ctrl-C."""
    with _errors():
        _serve(config_file or ctx.obj.get("relay_config"))


@relay_group.command("init-ca")
@_config_option
@option("--force", is_flag=True, help="Replace an existing CA (every cluster must then trust the new one).")
@click.pass_context
def init_ca_command(ctx: click.Context, config_file: Path | None, force: bool) -> None:
    """Create the relay CA (key wrapped by keys:) and print its certificate on stdout.

    Give the certificate to each cluster's admins: kube-apiserver --client-ca-file (a bundle may hold
    it next to the cluster's own CA).
    """
    from kubeshield.access.relay_ca import RelayCA
    from kubeshield.keys.registry import open_primary

    with _errors():
        settings = _settings(config_file or ctx.obj.get("relay_config"))
        backend = open_primary(settings.keys)
        try:
            ca = RelayCA.create(
                settings.ca.file,
                backend=backend,
                common_name=settings.ca.common_name,
                valid_for=timedelta(seconds=settings.ca.validity),
                key_type=settings.ca.key_type,
                force=force,
            )
        finally:
            backend.close()
    click.echo(ca.cert_pem.decode("ascii"), nl=False)
    click.echo(
        f"relay CA written to {settings.ca.file} (key wrapped by keys.backend {settings.keys.backend}); "
        "the certificate above goes into each cluster's --client-ca-file",
        err=True,
    )


@click.command("login")
@option("--relay", "relay_url", required=True, help="The relay's https URL, e.g. https://login.example.com.")
@option(
    "--flow",
    type=click.Choice(["device", "auth-code"]),
    default="device",
    show_default=True,
    help="device: open a URL on any device and type a code; auth-code: a browser on this machine.",
)
@option("--relay-ca", type=_EXISTING, help="CA bundle of the relay's https certificate [default: system].")
@option(
    "--provider-ca",
    type=_EXISTING,
    help="CA bundle of the OpenID provider's https certificate [default: system].",
)
@option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    envvar="KUBESHIELD_AGENT_SOCKET",
    show_envvar=True,
    help="The agent's socket [default: $XDG_RUNTIME_DIR/kubeshield/agent.sock].",
)
@option("--lifetime", type=DURATION, help="Ask for this certificate lifetime (the relay caps it).")
@option("--no-browser", is_flag=True, help="auth-code: print the URL only, do not open a browser.")
@option(
    "--expect-relay-attestation",
    "relay_policy",
    type=_EXISTING,
    help="An attestation policy the relay's TPM evidence must satisfy before anything is sent.",
)
@option(
    "--attest-tcti", help="This machine's TPM (e.g. device:/dev/tpmrm0) when the relay requires evidence."
)
@option(
    "--timeout", type=DURATION, default=300.0, show_default=True, help="How long to wait for the browser."
)
def login_command(
    relay_url: str,
    flow: str,
    relay_ca: Path | None,
    provider_ca: Path | None,
    socket_path: Path | None,
    lifetime: float | None,
    no_browser: bool,
    relay_policy: Path | None,
    attest_tcti: str | None,
    timeout: float,
) -> None:
    """Log in through the relay (OIDC) and hand the certificate to the agent.

    The key is made inside the agent (only a CSR leaves it); the ID token is used once and dropped.
    Afterwards the agent holds one credential per cluster of the relay: `kubeshield access proxy
    --context NAME` serves it to kubectl.
    """
    from kubeshield.access.agent_client import AgentClient
    from kubeshield.access.login import login
    from kubeshield.access.oidc import tls_context
    from kubeshield.access.relay_attest import login_evidence, relay_evidence_checker

    def show(line: str) -> None:
        click.echo(line, err=True)

    def open_url(url: str) -> None:
        if not no_browser:
            try:
                webbrowser.open(url)
            except webbrowser.Error:
                pass

    with _errors():
        result = login(
            relay_url=relay_url,
            holder=AgentClient(socket_path),
            flow="auth-code" if flow == "auth-code" else "device",
            relay_context=tls_context(ca_file=relay_ca),
            provider_context=tls_context(ca_file=provider_ca) if provider_ca is not None else None,
            show=show,
            open_url=open_url,
            lifetime_seconds=lifetime,
            expect_relay=relay_evidence_checker(relay_policy) if relay_policy is not None else None,
            evidence=login_evidence(attest_tcti) if attest_tcti else None,
            browser_timeout=timeout,
        )
    groups = ",".join(result.groups) or "-"
    names = ", ".join(c.name for c in result.clusters) or "none"
    click.echo(
        f"logged in as {result.user} (groups {groups}) until {result.expires_at.isoformat()}; "
        f"contexts in the agent: {names}"
    )


commands: list[click.Command] = [relay_group, login_command]
