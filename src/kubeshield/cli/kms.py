"""``kubeshield kms``: run the KMS plugin (locally or as an mTLS service), the node-local relay, ask a
plugin for its status, print its EncryptionConfiguration.

Only flag parsing and rendering live here; the plugin is ``kubeshield.kms``.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kubeshield.cli._common import DURATION, EXIT_FAILURE, CLIError, option
from kubeshield.cli._peer_attest import attested_upstreams, peer_attestation_option, peer_gate
from kubeshield.config.settings import HEALTH_ADDR_NONE
from kubeshield.errors import ConfigError, KubeshieldError
from kubeshield.kms.shutdown import StopSignals

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


def _open_primary(
    settings: Any, *, keyring: Path | None, passphrase_file: Path | None, create_keyring: bool
) -> tuple[Any, Any]:
    """The bare key backend and the ``keys`` settings it stands for.

    ``--keyring`` selects the local backend (and wins over the config's ``keys.backend``); otherwise the
    config's ``keys`` section decides.
    """
    import dataclasses

    from kubeshield.keys.passphrase import read_passphrase
    from kubeshield.keys.registry import open_primary

    keys = settings.keys
    if keyring is not None and keys.backend != "local":
        keys = dataclasses.replace(keys, backend="local")
    if keys.backend != "local":
        if create_keyring:
            raise ConfigError("--create-keyring only applies to the local backend")
        # a key service that is down now gives a backend that connects when it returns (keys.lazy)
        return open_primary(keys, during_outage=True), keys
    from kubeshield.keys.local import LocalKeyBackend

    path = keyring if keyring is not None else keys.local.keyring
    pass_file = passphrase_file if passphrase_file is not None else keys.local.passphrase_file
    passphrase = read_passphrase(passphrase_file=pass_file)
    if create_keyring and not Path(path).exists():
        backend = LocalKeyBackend.create(path=path, passphrase=passphrase)
        click.echo(f"created keyring {path}", err=True)
        if passphrase is None:
            click.echo(
                "WARNING: the keyring has no passphrase: only its permissions (0600) and disk encryption "
                "protect the keys (give --passphrase-file or $KUBESHIELD_KEYRING_PASSPHRASE for production)",
                err=True,
            )
        return backend, keys
    return LocalKeyBackend(path=path, passphrase=passphrase), keys


def _check_key_files(
    settings: Any,
    *,
    keyring: Path | None,
    passphrase_file: Path | None,
    allow_insecure: bool,
    allow_unprotected_emergency: bool,
) -> None:
    """Refuse exposed keyring/passphrase files and an unprotected emergency keyring (see ``serve``)."""
    from kubeshield.config.settings import TpmSettings
    from kubeshield.keys.files import file_exposure
    from kubeshield.keys.keyring import KeyringFile

    keys = settings.keys
    files: list[tuple[str, Path]] = []
    if keyring is not None or keys.backend == "local":
        files.append(("keyring", keyring if keyring is not None else keys.local.keyring))
        pass_file = passphrase_file if passphrase_file is not None else keys.local.passphrase_file
        if pass_file is not None:
            files.append(("passphrase file", pass_file))
    elif keys.backend == "tpm":
        files.append(("keyring", (keys.tpm if keys.tpm is not None else TpmSettings()).keyring))
    if keys.emergency is not None:
        files.append(("emergency keyring", keys.emergency.keyring))
        if keys.emergency.passphrase_file is not None:
            files.append(("emergency passphrase file", keys.emergency.passphrase_file))
    for what, path in files:
        if not Path(path).exists():
            continue  # opening it says what is missing (or --create-keyring makes it 0600)
        problem = file_exposure(Path(path))
        if problem is None:
            continue
        if not allow_insecure:
            raise ConfigError(
                f"refusing to serve: the {what} {problem}, or pass --allow-insecure-permissions"
            )
        click.echo(f"WARNING: the {what} {problem} (serving anyway: --allow-insecure-permissions)", err=True)
    primary = files[0][1] if files and files[0][0] == "keyring" else None
    if primary is not None and Path(primary).exists() and not KeyringFile(primary).read_info().protected:
        click.echo(
            f"WARNING: the keyring {primary} has no passphrase: only its permissions and disk encryption "
            "protect the keys (give --passphrase-file or $KUBESHIELD_KEYRING_PASSPHRASE for production)",
            err=True,
        )
    if keys.emergency is not None and Path(keys.emergency.keyring).exists():
        info = KeyringFile(keys.emergency.keyring).read_info()
        if not info.protected:
            text = (
                f"the emergency keyring {info.path} has no passphrase (protection kdf none): it is a second "
                "key to every Secret (docs/backup.md)"
            )
            if not allow_unprotected_emergency:
                raise ConfigError(
                    f"refusing to serve: {text}. Restore it with a passphrase (kubeshield keys restore ... "
                    "--passphrase-file F, and keys.emergency.passphraseFile: F), or pass "
                    "--allow-unprotected-emergency-keyring"
                )
            click.echo(f"WARNING: {text} (serving anyway: --allow-unprotected-emergency-keyring)", err=True)


def _with_stop_signals(command: Callable[..., int]) -> Callable[..., int]:
    """Install the stop-signal handlers before anything binds a socket; restore them afterwards."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> int:
        signals = StopSignals()
        try:
            return command(*args, signals=signals, **kwargs)
        finally:
            signals.restore()

    return run


@group.command("serve")
@option("--config", type=click.Path(path_type=Path, dir_okay=False), help="kubeshield.yaml to read.")
@option("--keyring", type=click.Path(path_type=Path, dir_okay=False), help="Local keyring file.")
@option("--socket", help=f"KMS v2 socket path or unix:/// endpoint [default: {_DEFAULT_SOCKET}].")
@option("--v1-socket", help="Also serve the deprecated KMS v1 API on this socket.")
@option(
    "--health-addr",
    help=f"HOST:PORT for /livez /healthz /readyz /metrics [default: {_DEFAULT_HEALTH_ADDR}]; 'none' (or '') "
    "for none, e.g. a recovery plugin beside a live one (KUBESHIELD_HEALTH_ADDR=none: click ignores an "
    "empty variable).",
)
@option("--socket-group", help="Make the sockets 0660 and owned by this group (non-root apiservers).")
@option("--passphrase-file", type=click.Path(path_type=Path, dir_okay=False), help="Keyring passphrase file.")
@option("--create-keyring", is_flag=True, help="Create the local keyring if it does not exist yet.")
@option(
    "--print-encryption-config", is_flag=True, help="Print the EncryptionConfiguration for the apiserver."
)
@option("--listen", help="Service mode: also serve KMS v2/v1 with mTLS on tcp://HOST:PORT.")
@option("--tls-cert", type=click.Path(path_type=Path, dir_okay=False), help="Server certificate (PEM).")
@option("--tls-key", type=click.Path(path_type=Path, dir_okay=False), help="Server private key (PEM).")
@option("--client-ca", type=click.Path(path_type=Path, dir_okay=False), help="CA that signs client certs.")
@option(
    "--allow",
    help="Allowed client identities, comma-separated, typed: dns:NAME, uri:URI, email:ADDR, ip:IP, cn:NAME.",
)
@option(
    "--allow-any-client-cert",
    is_flag=True,
    help="Accept any client certificate the --client-ca signed (instead of an --allow list).",
)
@option(
    "--tls-expiry-margin",
    default="24h",
    type=DURATION,
    show_default=True,
    help="/readyz fails once the serving certificate expires within this duration.",
)
@option(
    "--etcd-endpoints", help="Sync the local keyring's versions through etcd at these URLs (comma-separated)."
)
@option("--etcd-cacert", type=click.Path(dir_okay=False), help="etcd CA certificate.")
@option("--etcd-cert", type=click.Path(dir_okay=False), help="etcd client certificate.")
@option("--etcd-key", type=click.Path(dir_okay=False), help="etcd client key.")
@option(
    "--sync-prefix", default="/kubeshield/keyring/", show_default=True, help="etcd prefix for keyring sync."
)
@option("--sync-interval", type=DURATION, default="1s", show_default=True, help="Time between keyring syncs.")
@option(
    "--adopt-timeout",
    default="20s",
    type=DURATION,
    show_default=True,
    help="With --etcd-endpoints and no keyring file: how long to wait for the cluster keyring in etcd.",
)
@option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Log level (JSON lines on stderr).",
)
@peer_attestation_option
@option(
    "--allow-insecure-permissions",
    is_flag=True,
    help="Serve even when a keyring or passphrase file is accessible by group or others (warns).",
)
@option(
    "--allow-unprotected-emergency-keyring",
    is_flag=True,
    help="Serve with an emergency keyring that has no passphrase (a second key to every Secret; warns).",
)
@_with_stop_signals
def serve(
    peer_attestation: Path | None,
    config: Path | None,
    keyring: Path | None,
    socket: str | None,
    v1_socket: str | None,
    health_addr: str | None,
    socket_group: str | None,
    passphrase_file: Path | None,
    create_keyring: bool,
    print_encryption_config: bool,
    listen: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    client_ca: Path | None,
    allow: str | None,
    allow_any_client_cert: bool,
    tls_expiry_margin: float,
    etcd_endpoints: str | None,
    etcd_cacert: str | None,
    etcd_cert: str | None,
    etcd_key: str | None,
    sync_prefix: str,
    sync_interval: float,
    adopt_timeout: float,
    log_level: str,
    allow_insecure_permissions: bool,
    allow_unprotected_emergency_keyring: bool,
    signals: StopSignals,
) -> int:
    """Serve KMS v2 (and optionally v1) on a unix socket and/or, with --listen, over mTLS, until SIGTERM.

    The key backend is --keyring (a local keyring file) or the keys: section of --config. A rotated
    keyring is picked up within 5 s; Status returns UNAVAILABLE while the last deep health round trip
    (every 10 s, every 1 s while failing) failed. /livez never depends on the key backend. A key
    service that cannot be reached at start (Transit, AWS KMS, a PKCS#11 token) does not stop the
    plugin: it serves, unhealthy, decrypts what the emergency keyring can, and connects when the
    service comes back (retries with backoff). A wrong setting or credential still stops it at start.
    Every Status reply names the keys served (trailing metadata kubeshield-keyring-id; `kubeshield kms
    status` prints it), and /metrics has kubeshield_keyring_info: every node of a cluster must show the
    same.

    Service mode (--listen) is always mutual TLS: callers are restricted to --allow (typed identities of
    their certificates), or --allow-any-client-cert accepts any certificate the --client-ca signed; one
    of the two is required. With --etcd-endpoints the local keyring's versions are kept in step with
    the other replicas through etcd; a replica with no keyring file adopts the cluster keyring from
    etcd (it never creates one: publish it once with `kubeshield keys sync --from local`).

    \b
    Refused at start, naming the file and its mode, unless the flag below says otherwise:
      a keyring or passphrase file (primary or emergency) accessible by group or others
        (--allow-insecure-permissions; a 0440 Secret file whose group is this pod's fsGroup is fine)
      an emergency keyring without a passphrase (--allow-unprotected-emergency-keyring)
    A keyring in a group- or world-writable directory is always refused.

    \b
    Examples:
      kubeshield kms serve --keyring /var/lib/kubeshield/keyring \\
          --passphrase-file /etc/kubeshield/passphrase --socket /var/run/kubeshield/kms.sock
      kubeshield kms serve --config /etc/kubeshield/kubeshield.yaml
      kubeshield kms serve --config kubeshield.yaml --listen tcp://0.0.0.0:9443 \\
          --tls-cert tls.crt --tls-key tls.key --client-ca ca.crt --allow dns:relay.example.com
      kubeshield kms serve --keyring /var/lib/kubeshield/sync/keyring --passphrase-file pass \\
          --listen tcp://10.0.0.11:9443 --tls-cert tls.crt --tls-key tls.key --client-ca ca.crt \\
          --allow dns:relay.example.com --etcd-endpoints https://10.0.0.11:2379 \\
          --etcd-cacert etcd-ca.crt --etcd-cert etcd.crt --etcd-key etcd.key
    """
    from kubeshield.kms.encryption_config import render_encryption_config
    from kubeshield.kms.http import HealthServer
    from kubeshield.kms.logging import configure_logging
    from kubeshield.kms.metrics import KMSMetrics
    from kubeshield.kms.server import KMSServer
    from kubeshield.kms.service import KMSService
    from kubeshield.kms.shutdown import serve_until_signalled

    configure_logging(log_level)
    settings = _settings(config)
    listen = listen or settings.kms.listen
    if listen:
        tls = settings.kms.tls
        tls_cert = tls_cert or (tls.cert if tls else None)
        tls_key = tls_key or (tls.key if tls else None)
        client_ca = client_ca or (tls.client_ca if tls else None)
        missing = [
            f
            for f, v in (("--tls-cert", tls_cert), ("--tls-key", tls_key), ("--client-ca", client_ca))
            if not v
        ]
        if missing:
            raise click.UsageError(
                f"--listen requires {', '.join(missing)} (service mode is always mutual TLS)"
            )
        if allow and allow_any_client_cert:
            raise click.UsageError("--allow and --allow-any-client-cert contradict each other: give one")
        if not allow and not allow_any_client_cert:
            raise click.UsageError(
                "--listen requires --allow IDENTITIES (e.g. --allow dns:relay.example.com) or, to accept "
                "any certificate the --client-ca signed, --allow-any-client-cert"
            )
        socket = socket or None  # service mode: a unix socket only when asked for
    else:
        if tls_cert or tls_key or client_ca or allow or allow_any_client_cert:
            raise click.UsageError(
                "--tls-cert/--tls-key/--client-ca/--allow/--allow-any-client-cert need --listen"
            )
        socket = socket or str(settings.kms.socket)
    if v1_socket is None and settings.kms.v1_socket is not None:
        v1_socket = str(settings.kms.v1_socket)
    if health_addr is None:
        health_addr = settings.kms.health_addr
    if health_addr in HEALTH_ADDR_NONE:
        health_addr = ""
    credentials = None
    allow_list = None
    if listen:
        from kubeshield.kms.server import parse_listen
        from kubeshield.kms.tls import AllowList, ReloadingServerCredentials

        parse_listen(listen)  # before anything is created
        margin = tls_expiry_margin

        assert tls_cert is not None and tls_key is not None and client_ca is not None
        allow_list = AllowList.any_client() if allow_any_client_cert else AllowList.parse(allow)
        credentials = ReloadingServerCredentials(
            cert=tls_cert, key=tls_key, client_ca=client_ca, expiry_margin=margin
        )
    from kubeshield.keys.identity import identity_source
    from kubeshield.keys.registry import open_backends

    if etcd_endpoints:
        if create_keyring:
            raise click.UsageError(
                "--create-keyring with --etcd-endpoints would give this replica a keyring of its own, which "
                "the others cannot read and sync refuses; a replica with no keyring file adopts the cluster "
                "keyring from etcd (publish it once with `kubeshield keys sync --from local`)"
            )
        _adopt_if_missing(
            settings,
            keyring=keyring,
            passphrase_file=passphrase_file,
            endpoints=etcd_endpoints,
            cacert=etcd_cacert,
            cert=etcd_cert,
            key=etcd_key,
            prefix=sync_prefix,
            timeout=adopt_timeout,
        )

    _check_key_files(
        settings,
        keyring=keyring,
        passphrase_file=passphrase_file,
        allow_insecure=allow_insecure_permissions,
        allow_unprotected_emergency=allow_unprotected_emergency_keyring,
    )
    primary, keys_settings = _open_primary(
        settings, keyring=keyring, passphrase_file=passphrase_file, create_keyring=create_keyring
    )
    keyring_identity = identity_source(keys_settings, primary)
    metrics = KMSMetrics()
    metrics.track_keyring(keyring_identity)
    sync = None
    if etcd_endpoints:
        primary, sync = _with_sync(
            primary,
            endpoints=etcd_endpoints,
            cacert=etcd_cacert,
            cert=etcd_cert,
            key=etcd_key,
            prefix=sync_prefix,
            interval=sync_interval,
            passphrase_file=passphrase_file or settings.keys.local.passphrase_file,
        )
    # v2 gets the configured stack (hierarchy, break-glass); v1 has no annotations, so it gets the stack
    # without the layers that need them (keys.registry.open_backends).
    stack = open_backends(keys_settings, on_emergency=metrics.count_break_glass, primary=primary)
    service = KMSService(
        stack.v2,
        v1_backend=stack.v1,
        metrics=metrics,
        refresh_interval=min(5.0, sync_interval) if sync else 5.0,
    )
    if sync is not None:
        sync.set_on_change(service.refresh_now)
        sync.set_on_health_change(service.check_health_now)  # a divergence fails Status at once
        sync.register_metrics(metrics.registry)
    if credentials is not None:
        credentials.register_metrics(metrics.registry)
    server: KMSServer | None = None
    http: HealthServer | None = None
    try:
        server = KMSServer(
            service,
            socket=socket,
            v1_socket=v1_socket,
            socket_group=socket_group,
            listen=listen,
            tls=credentials,
            allow=allow_list,
            metrics=metrics,
            peer_attestation=peer_gate(peer_attestation),
            keyring=keyring_identity,
        )
        if sync is not None:
            sync.start()
        service.start()
        state = service.last_health()
        if state is not None and not state.ok:
            click.echo(f"warning: key backend is unhealthy: {state.detail}", err=True)
        server.start()
        if health_addr:
            http = HealthServer(
                health_addr,
                service=service,
                metrics=metrics,
                serving=lambda: server.serving,
                readiness=[credentials.readiness] if credentials is not None else [],
            )
            http.start()
        if credentials is not None and not credentials.readiness()[0]:
            click.echo(f"warning: {credentials.readiness()[1]}", err=True)
        if print_encryption_config and server.socket_path is not None:
            click.echo(render_encryption_config(socket=server.socket_path), nl=False)
        if server.socket_path is not None:
            click.echo(f"serving KMS v2 on {server.socket_path}", err=True)
        if server.listen is not None:
            click.echo(
                f"serving KMS v2/v1 with mTLS on tcp://{server.listen[0]}:{server.listen_port}", err=True
            )
        return serve_until_signalled(server, signals=signals)
    finally:
        if server is not None and server.serving:
            server.stop(0).wait(5)
        if http is not None:
            http.stop()
        service.close()


def _etcd_store(*, endpoints: str, cacert: str | None, cert: str | None, key: str | None) -> Any:
    """The sync etcd, connected on first use and again after a failure (kms.sync.ReconnectingStore)."""
    from kubeshield.etcd.client import EtcdClient
    from kubeshield.kms.sync import ReconnectingStore

    urls = [e.strip() for e in endpoints.split(",") if e.strip()]
    if not urls:
        raise click.BadParameter("at least one etcd URL is required", param_hint="--etcd-endpoints")
    if (cert is None) != (key is None):  # checked here: the client itself connects only on first use
        raise ConfigError("--etcd-cert and --etcd-key must be given together")
    for path, flag in ((cacert, "--etcd-cacert"), (cert, "--etcd-cert"), (key, "--etcd-key")):
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"{flag}: cannot read {path!r}")
    flags = ("--etcd-cacert", "--etcd-cert", "--etcd-key")  # errors name serve's own flags
    return ReconnectingStore(
        lambda: EtcdClient(urls, cacert=cacert, cert=cert, key=key, timeout=2.0, flags=flags)
    )


def _adopt_if_missing(
    settings: Any,
    *,
    keyring: Path | None,
    passphrase_file: Path | None,
    endpoints: str,
    cacert: str | None,
    cert: str | None,
    key: str | None,
    prefix: str,
    timeout: float,
) -> None:
    """A replica with an empty keyring path fetches the cluster keyring from etcd (kms.sync_ops)."""
    from kubeshield.keys.passphrase import read_passphrase
    from kubeshield.kms.sync_ops import adopt_keyring

    if keyring is None and settings.keys.backend != "local":
        return  # remote backends share their key already (refused with a clear error later)
    path = keyring if keyring is not None else settings.keys.local.keyring
    if os.path.lexists(path):
        return
    pass_file = passphrase_file if passphrase_file is not None else settings.keys.local.passphrase_file
    store = _etcd_store(endpoints=endpoints, cacert=cacert, cert=cert, key=key)
    try:
        info = adopt_keyring(
            store=store,
            keyring=path,
            passphrase=read_passphrase(passphrase_file=pass_file),
            prefix=prefix,
            timeout=timeout,
        )
    finally:
        store.close()
    click.echo(f"adopted the cluster keyring {info.keyring_id} from etcd into {path}", err=True)


def _with_sync(
    backend: Any,
    *,
    endpoints: str,
    cacert: str | None,
    cert: str | None,
    key: str | None,
    prefix: str,
    interval: float,
    passphrase_file: Path | None,
) -> tuple[Any, Any]:
    """Wrap the local backend so its keyring versions are synchronised through etcd."""
    from kubeshield.keys.local import LocalKeyBackend
    from kubeshield.keys.passphrase import read_passphrase
    from kubeshield.kms.sync import KeyringSync, SyncedBackend

    if not isinstance(backend, LocalKeyBackend):
        raise ConfigError(
            "--etcd-endpoints: keyring sync is for the local backend; remote backends share their key already"
        )
    store = _etcd_store(endpoints=endpoints, cacert=cacert, cert=cert, key=key)
    sync = KeyringSync(
        store=store,
        keyring=backend.path,
        passphrase=read_passphrase(passphrase_file=passphrase_file),
        prefix=prefix,
        interval=interval,
    )
    return SyncedBackend(backend, sync), sync


@group.command("relay")
@option("--socket", required=True, help="KMS v2 socket for the apiserver (path or unix:/// endpoint).")
@option("--v1-socket", help="Also serve the deprecated KMS v1 API on this socket.")
@option("--socket-group", help="Make the sockets 0660 and owned by this group (non-root apiservers).")
@option(
    "--upstream",
    required=True,
    help="Every replica, each at an address this node reaches: https://HOST:PORT[,https://HOST:PORT...].",
)
@option(
    "--tls-cert", required=True, type=click.Path(path_type=Path, dir_okay=False), help="Client cert (PEM)."
)
@option("--tls-key", required=True, type=click.Path(path_type=Path, dir_okay=False), help="Client key (PEM).")
@option(
    "--ca", required=True, type=click.Path(path_type=Path, dir_okay=False), help="CA of the replicas' certs."
)
@option("--server-name", help="Expected name in the replicas' certificates (default: the upstream host).")
@option(
    "--check-interval", type=DURATION, default="1s", show_default=True, help="Time between replica checks."
)
@option(
    "--budget",
    type=DURATION,
    default="2.5s",
    show_default=True,
    help="Time per call, all failovers included.",
)
@option(
    "--tls-expiry-margin",
    default="24h",
    type=DURATION,
    show_default=True,
    help="/readyz fails once the client certificate expires within this duration.",
)
@option(
    "--health-addr",
    default="127.0.0.1:8082",
    show_default=True,
    help="HOST:PORT for /livez /readyz /metrics.",
)
@option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Log level (JSON lines on stderr).",
)
@peer_attestation_option
@_with_stop_signals
def relay(
    peer_attestation: Path | None,
    socket: str,
    v1_socket: str | None,
    socket_group: str | None,
    upstream: str,
    tls_cert: Path,
    tls_key: Path,
    ca: Path,
    server_name: str | None,
    check_interval: float,
    budget: float,
    tls_expiry_margin: float,
    health_addr: str,
    log_level: str,
    signals: StopSignals,
) -> int:
    """Serve KMS v2/v1 on a local socket and forward to service replicas over mTLS, with failover.

    List every replica in --upstream at an address the node reaches before the cluster is up (node IPs
    of hostNetwork replicas, not a Service name): the relay fails over between them, moves the key_id
    only when every healthy replica serves it, and logs why a replica is unreachable (dns, refused,
    tls, closed, timeout...) and when it is back. Its client certificate and CA are reloaded when the
    files change; /readyz fails once the certificate expires within --tls-expiry-margin.

    \b
    Example:
      kubeshield kms relay --socket /var/run/kubeshield/kms.sock \\
          --upstream https://10.0.0.11:9443,https://10.0.0.12:9443,https://10.0.0.13:9443 \\
          --tls-cert /etc/kubeshield/relay/tls.crt --tls-key /etc/kubeshield/relay/tls.key \\
          --ca /etc/kubeshield/relay/ca.crt
    """
    from kubeshield.kms.http import HealthServer
    from kubeshield.kms.logging import configure_logging
    from kubeshield.kms.metrics import KMSMetrics
    from kubeshield.kms.relay import AioUpstream, Relay, parse_upstreams
    from kubeshield.kms.relay_server import RelayServer
    from kubeshield.kms.shutdown import serve_until_signalled
    from kubeshield.kms.tls import ReloadingClientCredentials

    configure_logging(log_level)
    if budget <= 0 or check_interval <= 0:
        raise click.UsageError("--budget and --check-interval must be > 0")
    targets = parse_upstreams(upstream)
    margin = tls_expiry_margin
    tls = ReloadingClientCredentials(ca=ca, cert=tls_cert, key=tls_key, expiry_margin=margin)
    metrics = KMSMetrics()
    tls.register_metrics(metrics.registry)
    upstreams = [AioUpstream(t, credentials=tls.credentials, server_name=server_name) for t in targets]
    upstreams = attested_upstreams(
        upstreams, peer_attestation, credentials=tls.credentials, tls_cert=tls_cert, server_name=server_name
    )
    pool = Relay(upstreams, check_interval=check_interval, budget=budget, metrics=metrics, tls=tls)
    server = RelayServer(pool, socket=socket, v1_socket=v1_socket, socket_group=socket_group, metrics=metrics)
    http: HealthServer | None = None
    try:
        server.start()  # checks every replica once, then binds the sockets
        if pool.agreed_key_id is None:
            click.echo("warning: the replicas do not agree on a key_id yet (or none is reachable)", err=True)
        if health_addr:
            # the relay has the two calls HealthServer uses (is_healthy, last_health)
            http = HealthServer(
                health_addr,
                service=pool,
                metrics=metrics,
                serving=lambda: server.serving,
                readiness=[tls.readiness],
            )
            http.start()
        ready, why = tls.readiness()
        if not ready:
            click.echo(f"warning: {why}", err=True)
        click.echo(f"relaying KMS v2 on {server.socket_path} to {len(targets)} replicas", err=True)
        return serve_until_signalled(server, signals=signals)
    finally:
        if server.serving:
            server.stop(0).wait(5)
        if http is not None:
            http.stop()


@group.command("status")
@option("--socket", required=True, help="KMS v2 socket path or unix:/// endpoint.")
@option(
    "--timeout",
    type=DURATION,
    default="3s",
    show_default=True,
    help="Per-call deadline (3s, 500ms, or seconds).",
)
@option("--expect-keyring-id", help="Exit 1 unless the plugin serves this keyring id (compare nodes).")
@option("--expect-versions-digest", help="Exit 1 unless the plugin's keyring has this versions digest.")
def status(
    socket: str, timeout: float, expect_keyring_id: str | None, expect_versions_digest: str | None
) -> int:
    """Call Status as kube-apiserver does; print version, healthz, key_id, keyring and latency.

    Exit 1 if unhealthy, or if --expect-keyring-id / --expect-versions-digest differ from what the
    plugin serves. `keyring:` is the keyring id a kubeshield plugin sends with Status (for a keyring
    file its keyringId; for other backends the key's identity), `versions:` the keyring's versions
    digest; `kubeshield keys list` shows the same values for the keyring file.

    \b
    Check that every control-plane node serves the same keyring (docs/backup.md):
      kubeshield kms status --socket /var/run/kubeshield/kms.sock \\
          --expect-keyring-id 6f1c...  --expect-versions-digest 3a9e...
    """
    from kubeshield.kms.client import KMSv2Client

    with KMSv2Client(socket, timeout=timeout) as client:
        start = time.perf_counter()
        try:
            reply = client.status()
        except KubeshieldError as exc:
            click.echo(f"unhealthy: {type(exc).__name__}: {exc}", err=True)
            if client.keyring_id is not None:
                click.echo(f"keyring:  {client.keyring_id}", err=True)
            return EXIT_FAILURE
        elapsed = time.perf_counter() - start
        keyring_id, digest = client.keyring_id, client.versions_digest
    click.echo(f"version:  {reply.version}")
    click.echo(f"healthz:  {reply.healthz}")
    click.echo(f"key_id:   {reply.key_id}")
    click.echo(f"keyring:  {keyring_id if keyring_id is not None else '(not sent by this plugin)'}")
    if digest is not None:
        click.echo(f"versions: {digest}")
    click.echo(f"latency:  {elapsed * 1000:.2f} ms")
    failed = False
    for flag, expected, actual in (
        ("--expect-keyring-id", expect_keyring_id, keyring_id),
        ("--expect-versions-digest", expect_versions_digest, digest),
    ):
        if expected is not None and expected != actual:
            click.echo(f"mismatch: {flag} {expected} but the plugin serves {actual}", err=True)
            failed = True
    return EXIT_FAILURE if failed else 0


@group.command("encryption-config")
@option("--socket", required=True, help="The plugin's socket path (made absolute).")
@option(
    "--name", default="kubeshield", show_default=True, help="KMS provider name (no ':'; never change it)."
)
@option("--resources", default="secrets", show_default=True, help="Comma-separated resources to encrypt.")
@option(
    "--timeout",
    type=DURATION,
    default="3s",
    show_default=True,
    help="Per-call timeout the apiserver uses (3s, 500ms, or seconds).",
)
def encryption_config(socket: str, name: str, resources: str, timeout: float) -> None:
    """Print the EncryptionConfiguration that points kube-apiserver at this plugin."""
    from kubeshield.config.duration import format_duration
    from kubeshield.kms._socket import parse_endpoint
    from kubeshield.kms.encryption_config import render_encryption_config

    names = [r.strip() for r in resources.split(",") if r.strip()]
    if not names:
        raise click.BadParameter("at least one resource is required", param_hint="--resources")
    try:
        text = render_encryption_config(
            socket=parse_endpoint(socket), name=name, resources=names, timeout=format_duration(timeout)
        )
    except ConfigError as exc:
        raise CLIError(str(exc)) from exc
    click.echo(text, nl=False)
