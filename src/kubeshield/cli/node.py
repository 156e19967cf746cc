"""``kubeshield node``: values sealed per ServiceAccount, released only to the pod that proves it.

\b
kubeshield node keys init|rotate|list|public-key --config FILE
kubeshield node seal (--config FILE | --public-key FILE|URL | --url URL --token-file F) --namespace NS
                     --service-account SA [--from-file F] [--audience A] [--selector app=web]
kubeshield node unseal --config FILE [-f FILE] --reason TEXT
kubeshield node release-server --config FILE [--listen HOST:PORT] [--kubeconfig F]
kubeshield node csi-provider --config FILE --socket PATH [--kubeconfig F]
kubeshield node injector --config FILE [--listen HOST:PORT]
kubeshield node fetch --url URL --token-file F --sealed-dir D --out-dir D (--once | --refresh 5m) ...
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kubeshield.cli._common import CLIError, option, raise_cli_error
from kubeshield.errors import KubeshieldError

__all__ = ["group"]

_MAX_VALUE = 1 << 20
_CONFIG_HELP = "The node config (kubeshield.yaml with keys: and node:), see docs/node.md."


@click.group(name="node")
def group() -> None:
    """Secrets on the node: per-ServiceAccount sealed values, the release service, the Secrets Store
    CSI provider and the injector webhook (docs/node.md)."""


def _config(path: Path) -> Any:
    from kubeshield.node.settings import load_node_config

    try:
        return load_node_config(path)
    except KubeshieldError as exc:
        raise_cli_error(exc)


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )


def _run_until_signal(start: Callable[[], Any], stop: Callable[[], None], wait: Callable[[], None]) -> int:
    done = threading.Event()

    def handler(signum: int, frame: object) -> None:
        if done.is_set():  # a second signal: stop now
            os._exit(1)
        done.set()
        threading.Thread(target=stop, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
    start()
    wait()
    return 0


def _kube(kubeconfig: Path | None) -> Any:
    from kubeshield.node.kube_link import connect

    try:
        return connect(kubeconfig)
    except KubeshieldError as exc:
        raise_cli_error(exc)


# --- keys -------------------------------------------------------------------------------------------


@group.group("keys")
def keys_group() -> None:
    """Create, rotate and list the node sealing key (versioned roots wrapped by the keys: backend)."""


def _config_option(f: Any) -> Any:
    return option("--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
                  help=_CONFIG_HELP)(f)  # fmt: skip


@keys_group.command("init")
@_config_option
@option(
    "--force", is_flag=True, help="Replace an existing sealing-key file (its values will no longer open)."
)
def keys_init(config_path: Path, force: bool) -> None:
    """Create the sealing-key file (version 1) named by node.sealingKeys.

    \b
    Example:
      kubeshield node keys init --config /etc/kubeshield/node.yaml
    """
    from kubeshield.node.sealing_keys import SealingKeyFile
    from kubeshield.node.wiring import open_key_backend

    config = _config(config_path)
    try:
        info = SealingKeyFile(config.node.sealing_keys).create(open_key_backend(config), force=force)
    except KubeshieldError as exc:
        raise_cli_error(exc)
    click.echo(f"created {config.node.sealing_keys}: version {info.version} wrapped by key {info.key_id}")


@keys_group.command("rotate")
@_config_option
def keys_rotate(config_path: Path) -> None:
    """Add a new primary version; values sealed with older versions keep opening.

    \b
    Running servers pick the new version up within 30 s. Example:
      kubeshield node keys rotate --config /etc/kubeshield/node.yaml
    """
    from kubeshield.node.sealing_keys import SealingKeyFile
    from kubeshield.node.wiring import open_key_backend

    config = _config(config_path)
    try:
        info = SealingKeyFile(config.node.sealing_keys).rotate(open_key_backend(config))
    except KubeshieldError as exc:
        raise_cli_error(exc)
    click.echo(f"rotated {config.node.sealing_keys}: version {info.version} is primary")


@keys_group.command("list")
@_config_option
@option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def keys_list(config_path: Path, output: str) -> None:
    """List the sealing-key versions (no key backend needed; nothing secret is shown)."""
    from kubeshield.node.sealing_keys import SealingKeyFile

    config = _config(config_path)
    try:
        infos = SealingKeyFile(config.node.sealing_keys).info()
    except KubeshieldError as exc:
        raise_cli_error(exc)
    if output == "json":
        rows = [
            {"version": i.version, "state": i.state, "created": i.created, "keyId": i.key_id} for i in infos
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'VERSION':<8} {'STATE':<8} {'CREATED':<21} KEY ID")
    for i in infos:
        click.echo(f"{i.version:<8} {i.state:<8} {i.created:<21} {i.key_id}")


@keys_group.command("public-key")
@_config_option
@option("--version", "key_version", type=int, help="A key version [default: the primary].")
def keys_public(config_path: Path, key_version: int | None) -> None:
    """Print the public sealing key (JSON) for offline sealing with node seal --public-key.

    \b
    Example:
      kubeshield node keys public-key --config node.yaml > node-public.json
      kubeshield node seal --public-key node-public.json --namespace shop --service-account web < pw.txt
    """
    from kubeshield.node.sealing_keys import SealingKeyFile

    config = _config(config_path)
    try:
        click.echo(SealingKeyFile(config.node.sealing_keys).public_key(key_version).to_json(), nl=False)
    except KubeshieldError as exc:
        raise_cli_error(exc)


# --- seal / unseal ----------------------------------------------------------------------------------


def _read_value(path: Path | None) -> bytes:
    if path is None or str(path) == "-":
        if sys.stdin.isatty():
            click.echo("reading the value from standard input (end with Ctrl-D)", err=True)
        data = sys.stdin.buffer.read(_MAX_VALUE + 1)
        where = "standard input"
    else:
        try:
            with path.open("rb") as fh:
                data = fh.read(_MAX_VALUE + 1)
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {path}: {exc.strerror}", param_hint="--from-file"
            ) from None
        where = str(path)
    if len(data) > _MAX_VALUE:
        raise click.BadParameter(f"{where} holds more than {_MAX_VALUE} bytes", param_hint="--from-file")
    return data


def _public_key(source: str, ca_file: Path | None) -> Any:
    from kubeshield.node.sealing_keys import PublicSealingKey

    if source.startswith(("https://", "http://")):
        from kubeshield.node.client import ReleaseClient

        with ReleaseClient(source, ca_file=ca_file) as client:
            doc = client.public_key()
        return PublicSealingKey.from_json(json.dumps(doc), source=source)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(
            f"cannot read {source}: {type(exc).__name__}", param_hint="--public-key"
        ) from None
    return PublicSealingKey.from_json(text, source=source)


@group.command("seal")
@option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
        help="Seal with the sealing key itself (needs the keys: backend).")  # fmt: skip
@option("--public-key", help="Seal offline to a public sealing key: a file from node keys public-key, or the "
        "release server's URL (https://HOST:PORT, /v1/public-key is fetched).")  # fmt: skip
@option("--url", help="Seal through the release server with your own token (your RBAC is checked there).")
@option("--token-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="With --url: a file holding your bearer token (never a flag value).")  # fmt: skip
@option("--ca-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="CA bundle of the release server (with --url or a --public-key URL).")  # fmt: skip
@option("--namespace", required=True, help="The namespace of the ServiceAccount that may read the value.")
@option("--service-account", required=True, help="The ServiceAccount that may read the value.")
@option("--from-file", type=click.Path(dir_okay=False, path_type=Path),
        help="Read the value from this file [default: standard input].")  # fmt: skip
@option("--audience", help="Also require tokens issued for this audience.")
@option("--selector", help="Also require pod labels, e.g. app=web,tier=front (equality terms).")
def seal_cmd(
    config_path: Path | None,
    public_key: str | None,
    url: str | None,
    token_file: Path | None,
    ca_file: Path | None,
    namespace: str,
    service_account: str,
    from_file: Path | None,
    audience: str | None,
    selector: str | None,
) -> None:
    """Seal a value for NAMESPACE:SERVICE_ACCOUNT and print the sealed text.

    \b
    The text goes into a SecretProviderClass (objects: - sealed: ...), an annotation
    (kubeshield.io/secret-<name>) or a ConfigMap; it opens only for a pod of that ServiceAccount.
    Examples:
      kubeshield node seal --config node.yaml --namespace shop --service-account web --from-file pw.txt
      kubeshield node seal --public-key node-public.json --namespace shop --service-account web < pw.txt
      kubeshield node seal --url https://release:8443 --ca-file ca.crt --token-file ~/.kube/token \\
          --namespace shop --service-account web --from-file pw.txt
    """
    from kubeshield.errors import InvalidRequest
    from kubeshield.node.identity import Binding, Identity, parse_selector

    chosen = [x for x in (config_path, public_key, url) if x is not None]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --config, --public-key or --url")
    if url is not None and token_file is None:
        raise click.UsageError("--url needs --token-file (your own bearer token)")
    try:
        binding = Binding(Identity(namespace, service_account), audience, parse_selector(selector or ""))
    except InvalidRequest as exc:
        raise click.BadParameter(str(exc)) from None
    value = _read_value(from_file)
    try:
        if config_path is not None:
            from kubeshield.node.wiring import open_sealing_keys

            text = open_sealing_keys(_config(config_path)).seal(value, binding=binding)
        elif public_key is not None:
            text = _public_key(public_key, ca_file).seal(value, binding=binding)
        else:
            from kubeshield.node.client import ReleaseClient

            assert url is not None and token_file is not None
            token = token_file.read_text(encoding="ascii").strip()
            with ReleaseClient(url, ca_file=ca_file) as client:
                text = client.seal(
                    token, value, namespace=namespace, service_account=service_account, audience=audience,
                    selector=selector,
                )  # fmt: skip
    except KubeshieldError as exc:
        raise_cli_error(exc)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    click.echo(text)


@group.command("unseal")
@_config_option
@option("-f", "--file", "path", type=click.Path(dir_okay=False, path_type=Path),
        help="The sealed text [default: standard input].")  # fmt: skip
@option("--reason", required=True, help="Why you open it (goes into the audit line with your user).")
@option("--out", type=click.Path(dir_okay=False, path_type=Path),
        help="Write the value to this file (0600, atomically) instead of standard output.")  # fmt: skip
def unseal_cmd(config_path: Path, path: Path | None, reason: str, out: Path | None) -> None:
    """Open a sealed value as an operator (break-glass; every use is audited on standard error).

    \b
    Example:
      kubeshield node unseal --config node.yaml -f db.sealed --reason "INC-4711 rotate db password"
    """
    import getpass

    from kubeshield.errors import InvalidCiphertext
    from kubeshield.keys.files import write_private_atomic
    from kubeshield.node.audit import AuditLog
    from kubeshield.node.sealed import parse_sealed
    from kubeshield.node.wiring import open_sealing_keys

    text = _read_value(path).decode("ascii", "replace")
    audit = AuditLog(stream=sys.stderr)
    actor = f"{getpass.getuser()} (uid {os.getuid()})"
    try:
        sealed = parse_sealed(text)
    except InvalidCiphertext:
        raise CLIError("the input is not a kubeshield sealed value") from None
    try:
        value = open_sealing_keys(_config(config_path)).open(sealed)
    except KubeshieldError as exc:
        audit.record("unseal", outcome="failed", identity=str(sealed.binding.identity), actor=actor,
                     reason=reason, key_versions=[sealed.key_version])  # fmt: skip
        raise_cli_error(exc)
    audit.record("unseal", outcome="opened", identity=str(sealed.binding.identity), actor=actor,
                 reason=reason, key_versions=[sealed.key_version])  # fmt: skip
    if out is not None:
        write_private_atomic(out, value)
        click.echo(f"wrote {len(value)} bytes to {out}", err=True)
    else:
        sys.stdout.buffer.write(value)
        sys.stdout.flush()


# --- servers ----------------------------------------------------------------------------------------


@group.command("release-server")
@_config_option
@option("--listen", help="HOST:PORT [default: node.release.listen].")
@option("--kubeconfig", type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="Talk to the API server with this kubeconfig [default: in-cluster].")  # fmt: skip
def release_server_cmd(config_path: Path, listen: str | None, kubeconfig: Path | None) -> int:
    """Serve the release API: values only for a pod whose token proves the sealed-for identity.

    \b
    Each request: TokenReview of the pod's token (audience node.audience, pod-bound), the live pod's uid
    and ServiceAccount, the value's binding; replies are JWE to the caller's ephemeral key. Needs RBAC
    system:auth-delegator and get pods (deploy/node/release-server.yaml). Example:
      kubeshield node release-server --config /etc/kubeshield/node.yaml
    """
    from kubeshield.node.kube_link import pod_lookup
    from kubeshield.node.release_http import ReleaseServer
    from kubeshield.node.wiring import build_release_service

    _logging()
    config = _config(config_path)
    kube = _kube(kubeconfig)
    try:
        service = build_release_service(config, reviewer=kube, pods=pod_lookup(kube), access=kube)
        server = ReleaseServer(service, config.node.release, listen=listen)
    except KubeshieldError as exc:
        raise_cli_error(exc)
    click.echo(f"ready url={server.url}")
    sys.stdout.flush()
    return _run_until_signal(server.start, server.shutdown, server.wait)


@group.command("csi-provider")
@_config_option
@option("--socket", required=True, type=click.Path(dir_okay=False, path_type=Path),
        help="The unix socket the driver dials: <provider dir>/kubeshield.sock.")  # fmt: skip
@option("--kubeconfig", type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="With node.csi.mode local or readConfigMaps: the API server [default: in-cluster].")  # fmt: skip
def csi_provider_cmd(config_path: Path, socket: Path, kubeconfig: Path | None) -> int:
    """Serve the Secrets Store CSI driver's provider API (v1alpha1.CSIDriverProvider).

    \b
    SecretProviderClass spec.provider: kubeshield; parameters: objects (sealed / openbao / aws, fileName,
    mode), audience (default kubeshield). The CSIDriver needs tokenRequests for that audience.
    Example (the DaemonSet in deploy/node/csi-provider.yaml):
      kubeshield node csi-provider --config /etc/kubeshield/node.yaml \\
          --socket /etc/kubernetes/secrets-store-csi-providers/kubeshield.sock
    """
    from kubeshield.node.csi.server import CsiProviderServer
    from kubeshield.node.wiring import build_csi_provider

    _logging()
    config = _config(config_path)
    try:
        csi = config.node.csi
        if csi.mode == "local" or csi.read_config_maps:
            from kubeshield.node.kube_link import config_map_reader, pod_lookup

            kube = _kube(kubeconfig)
            readers: dict[str, Any] = {"config_maps": config_map_reader(kube)} if csi.read_config_maps else {}
            if csi.mode == "local":
                readers.update(reviewer=kube, pods=pod_lookup(kube))
            provider = build_csi_provider(config, **readers)
        else:
            provider = build_csi_provider(config)
        server = CsiProviderServer(provider, socket)
    except KubeshieldError as exc:
        raise_cli_error(exc)
    click.echo(f"ready socket={socket}")
    sys.stdout.flush()
    return _run_until_signal(lambda: None, server.stop, server.wait)


@group.command("injector")
@_config_option
@option("--listen", help="HOST:PORT [default: node.injector.listen].")
def injector_cmd(config_path: Path, listen: str | None) -> int:
    """Serve the mutating admission webhook that injects kubeshield's init container and sidecar.

    \b
    Pods opt in with kubeshield.io/inject: "true" and kubeshield.io/secret-<name>: <sealed text>.
    Example (deploy/node/injector.yaml):
      kubeshield node injector --config /etc/kubeshield/node.yaml
    """
    from kubeshield.node.injector.webhook import InjectorServer
    from kubeshield.node.wiring import injector_config

    _logging()
    config = _config(config_path)
    try:
        server = InjectorServer(injector_config(config), listen=listen or config.node.injector.listen,
                                tls=config.node.injector.tls)  # fmt: skip
    except KubeshieldError as exc:
        raise_cli_error(exc)
    if config.node.injector.tls is None:
        click.echo("WARNING: no node.injector.tls: the API server only calls HTTPS webhooks", err=True)
    click.echo(f"ready url={server.url}")
    sys.stdout.flush()
    return _run_until_signal(lambda: None, server.shutdown, server.serve_forever)


# --- fetch ------------------------------------------------------------------------------------------


def _file_map(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{item!r} must be NAME=PATH", param_hint="--file")
        out[name] = path
    return out


@group.command("fetch")
@option("--url", required=True, help="The release server (https://HOST:PORT).")
@option("--token-file", required=True, type=click.Path(dir_okay=False, path_type=Path),
        help="The pod's projected ServiceAccount token (re-read every round).")  # fmt: skip
@option("--sealed-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
        help="One file per sealed value; the file name is the value's name.")  # fmt: skip
@option("--out-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
        help="Where the values are written (a memory-backed emptyDir).")  # fmt: skip
@option("--format", "fmt", type=click.Choice(["files", "dotenv", "json"]), default="files", show_default=True)
@option("--file", "files", multiple=True, help="NAME=PATH: write value NAME to PATH (format files).")
@option("--output-file", help="The file name for format dotenv/json [default: secrets.env / secrets.json].")
@option("--env-file", help="Also write the values as a shell-sourceable dotenv file of this name.")
@option("--mode", default="0400", show_default=True, help="File mode (octal).")
@option(
    "--ca-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="CA bundle of the server."
)
@option("--ca-pem", help="CA bundle of the server as PEM text (the injector sets KUBESHIELD_CA_PEM).")
@option("--once", is_flag=True, help="Fetch once and exit (the init container); exit 1 on any failure.")
@option("--refresh", help="Fetch every interval, e.g. 5m, until stopped (the sidecar).")
@option("--timeout", default=10.0, show_default=True, type=float, help="Seconds per request.")
def fetch_cmd(
    url: str,
    token_file: Path,
    sealed_dir: Path,
    out_dir: Path,
    fmt: str,
    files: tuple[str, ...],
    output_file: str | None,
    env_file: str | None,
    mode: str,
    ca_file: Path | None,
    ca_pem: str | None,
    once: bool,
    refresh: str | None,
    timeout: float,
) -> int:
    """Release the pod's sealed values with its own token and write them for the app (0400, its uid).

    \b
    What the injected kubeshield-init (--once) and kubeshield-refresh (--refresh) containers run.
    Example:
      kubeshield node fetch --url https://kubeshield-release.kubeshield.svc:8443 \\
          --token-file /var/run/kubeshield/token --sealed-dir /var/run/kubeshield/sealed \\
          --out-dir /kubeshield/secrets --once
    """
    from kubeshield.config import parse_duration
    from kubeshield.node.client import ReleaseClient
    from kubeshield.node.fetch import FetchPlan, fetch_once, refresh_loop

    if once == (refresh is not None):
        raise click.UsageError("give exactly one of --once or --refresh INTERVAL")
    try:
        file_mode = int(mode, 8)
    except ValueError:
        raise click.BadParameter("an octal mode such as 0400", param_hint="--mode") from None
    if not 0 <= file_mode <= 0o777:
        raise click.BadParameter("0..0777", param_hint="--mode")
    plan = FetchPlan(
        token_file=token_file, sealed_dir=sealed_dir, out_dir=out_dir, format=fmt,  # type: ignore[arg-type]
        files=_file_map(files), output_file=output_file, env_file=env_file, mode=file_mode,
    )  # fmt: skip
    _logging()
    try:
        client = ReleaseClient(url, ca_file=ca_file, ca_pem=ca_pem, timeout=timeout)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--url") from None
    if once:
        try:
            with client:
                written = fetch_once(client, plan)
        except KubeshieldError as exc:
            raise_cli_error(exc)
        click.echo(f"wrote {len(written)} changed file(s) to {out_dir}", err=True)
        return 0
    assert refresh is not None
    try:
        interval = parse_duration(refresh)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--refresh") from None
    if interval < 1:
        raise click.BadParameter("at least 1s", param_hint="--refresh")
    stop = threading.Event()
    return _run_until_signal(
        lambda: None, stop.set, lambda: refresh_loop(client, plan, interval=interval, stop=stop)
    )
