"""``kubeshield kms``: run the KMS plugin, ask it for its status, print its EncryptionConfiguration.

Only flag parsing and rendering live here; the plugin is ``kubeshield.kms``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from kubeshield.cli._common import EXIT_FAILURE, CLIError, option
from kubeshield.errors import ConfigError, KubeshieldError

__all__ = ["group"]

_DEFAULT_SOCKET = "/var/run/kubeshield/kms.sock"
_DEFAULT_HEALTH_ADDR = "127.0.0.1:8081"


@click.group("kms")
def group() -> None:
    """The KMS v2/v1 plugin for kube-apiserver, its status and its EncryptionConfiguration."""


def _settings(config: Path | None) -> Any:
    from kubeshield.config import load_config
    from kubeshield.config.settings import Settings

    return load_config(config) if config is not None else Settings()


def _open_backend(
    settings: Any, *, keyring: Path | None, passphrase_file: Path | None, create_keyring: bool
) -> Any:
    """The key backend: ``--keyring`` selects the local backend, else the config's ``keys`` section."""
    from kubeshield.keys.passphrase import read_passphrase

    use_local = keyring is not None or settings.keys.backend == "local"
    if use_local:
        from kubeshield.keys.local import LocalKeyBackend

        path = keyring if keyring is not None else settings.keys.local.keyring
        pass_file = passphrase_file if passphrase_file is not None else settings.keys.local.passphrase_file
        passphrase = read_passphrase(passphrase_file=pass_file)
        if create_keyring and not Path(path).exists():
            backend = LocalKeyBackend.create(path=path, passphrase=passphrase)
            click.echo(f"created keyring {path}", err=True)
            return backend
        return LocalKeyBackend(path=path, passphrase=passphrase)
    if create_keyring:
        raise ConfigError("--create-keyring only applies to the local backend")
    from kubeshield.keys.registry import open_backend

    return open_backend(settings.keys)


@group.command("serve")
@option("--config", type=click.Path(path_type=Path, dir_okay=False), help="kubeshield.yaml to read.")
@option("--keyring", type=click.Path(path_type=Path, dir_okay=False), help="Local keyring file.")
@option("--socket", help=f"KMS v2 socket path or unix:/// endpoint [default: {_DEFAULT_SOCKET}].")
@option("--v1-socket", help="Also serve the deprecated KMS v1 API on this socket.")
@option(
    "--health-addr", help=f"HOST:PORT for /livez /healthz /readyz /metrics [default: {_DEFAULT_HEALTH_ADDR}]."
)
@option("--socket-group", help="Make the sockets 0660 and owned by this group (non-root apiservers).")
@option("--passphrase-file", type=click.Path(path_type=Path, dir_okay=False), help="Keyring passphrase file.")
@option("--create-keyring", is_flag=True, help="Create the local keyring if it does not exist yet.")
@option(
    "--print-encryption-config", is_flag=True, help="Print the EncryptionConfiguration for the apiserver."
)
@option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Log level (JSON lines on stderr).",
)
def serve(
    config: Path | None,
    keyring: Path | None,
    socket: str | None,
    v1_socket: str | None,
    health_addr: str | None,
    socket_group: str | None,
    passphrase_file: Path | None,
    create_keyring: bool,
    print_encryption_config: bool,
    log_level: str,
) -> int:
    """Serve KMS v2 (and optionally v1) to kube-apiserver on a unix socket until SIGTERM/SIGINT."""
    from kubeshield.kms.encryption_config import render_encryption_config
    from kubeshield.kms.http import HealthServer
    from kubeshield.kms.logging import configure_logging
    from kubeshield.kms.metrics import KMSMetrics
    from kubeshield.kms.server import KMSServer, serve_until_signalled
    from kubeshield.kms.service import KMSService

    configure_logging(log_level)
    settings = _settings(config)
    socket = socket or str(settings.kms.socket)
    if v1_socket is None and settings.kms.v1_socket is not None:
        v1_socket = str(settings.kms.v1_socket)
    if health_addr is None:
        health_addr = settings.kms.health_addr
    backend = _open_backend(
        settings, keyring=keyring, passphrase_file=passphrase_file, create_keyring=create_keyring
    )
    metrics = KMSMetrics()
    service = KMSService(backend, metrics=metrics)
    server: KMSServer | None = None
    http: HealthServer | None = None
    try:
        server = KMSServer(
            service, socket=socket, v1_socket=v1_socket, socket_group=socket_group, metrics=metrics
        )
        service.start()
        state = service.last_health()
        if state is not None and not state.ok:
            click.echo(f"warning: key backend is unhealthy: {state.detail}", err=True)
        server.start()
        if health_addr:
            http = HealthServer(health_addr, service=service, metrics=metrics, serving=lambda: server.serving)
            http.start()
        if print_encryption_config:
            click.echo(render_encryption_config(socket=server.socket_path), nl=False)
        click.echo(f"serving KMS v2 on {server.socket_path}", err=True)
        return serve_until_signalled(server)
    finally:
        if server is not None and server.serving:
            server.stop(0).wait(5)
        if http is not None:
            http.stop()
        service.close()


@group.command("status")
@option("--socket", required=True, help="KMS v2 socket path or unix:/// endpoint.")
@option("--timeout", type=float, default=3.0, show_default=True, help="Per-call deadline in seconds.")
def status(socket: str, timeout: float) -> int:
    """Call Status as kube-apiserver does; print version, healthz, key_id and latency. Exit 1 if unhealthy."""
    from kubeshield.kms.client import KMSv2Client

    with KMSv2Client(socket, timeout=timeout) as client:
        start = time.perf_counter()
        try:
            reply = client.status()
        except KubeshieldError as exc:
            click.echo(f"unhealthy: {type(exc).__name__}: {exc}", err=True)
            return EXIT_FAILURE
        elapsed = time.perf_counter() - start
    click.echo(f"version:  {reply.version}")
    click.echo(f"healthz:  {reply.healthz}")
    click.echo(f"key_id:   {reply.key_id}")
    click.echo(f"latency:  {elapsed * 1000:.2f} ms")
    return 0


@group.command("encryption-config")
@option("--socket", required=True, help="The plugin's socket path (made absolute).")
@option(
    "--name", default="kubeshield", show_default=True, help="KMS provider name (no ':'; never change it)."
)
@option("--resources", default="secrets", show_default=True, help="Comma-separated resources to encrypt.")
@option(
    "--timeout", default="3s", show_default=True, help="Per-call timeout the apiserver uses (Go duration)."
)
def encryption_config(socket: str, name: str, resources: str, timeout: str) -> None:
    """Print the EncryptionConfiguration that points kube-apiserver at this plugin."""
    from kubeshield.kms._socket import parse_endpoint
    from kubeshield.kms.encryption_config import render_encryption_config

    names = [r.strip() for r in resources.split(",") if r.strip()]
    if not names:
        raise click.BadParameter("at least one resource is required", param_hint="--resources")
    try:
        text = render_encryption_config(
            socket=parse_endpoint(socket), name=name, resources=names, timeout=timeout
        )
    except ConfigError as exc:
        raise CLIError(str(exc)) from exc
    click.echo(text, nl=False)
