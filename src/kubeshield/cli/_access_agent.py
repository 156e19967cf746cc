"""``kubeshield access agent|import|unlock|lock|status|proxy|kubeconfig|exec-credential``.

The library halves live in ``kubeshield.access`` (agent, agent_client, store, kubeconfig_import,
kubeconfig_out, exec_credential); these commands parse flags, call them and print. Every flag also
comes from ``KUBESHIELD_<FLAG>``; the agent socket from ``KUBESHIELD_AGENT_SOCKET`` (like
``SSH_AUTH_SOCK``: ``KUBESHIELD_SOCKET`` already names the KMS socket), the store passphrase from
the file ``--passphrase-file`` or ``KUBESHIELD_ACCESS_PASSPHRASE``, never from a flag value.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from kubeshield.cli._common import DURATION, CLIError, option, warn

__all__ = ["commands"]

F = TypeVar("F", bound=Callable[..., Any])

PASSPHRASE_ENV = "KUBESHIELD_ACCESS_PASSPHRASE"
_PATH = click.Path(path_type=Path)
_FILE = click.Path(dir_okay=False, path_type=Path)


def _socket_option(func: F) -> F:
    return option(
        "--socket",
        "socket_path",
        type=_PATH,
        envvar="KUBESHIELD_AGENT_SOCKET",
        show_envvar=True,
        help="The agent's socket [default: $XDG_RUNTIME_DIR/kubeshield/agent.sock, "
        "else /run/user/UID/kubeshield/agent.sock].",
    )(func)


def _store_option(func: F) -> F:
    return option(
        "--store",
        "store_dir",
        type=_PATH,
        help="The sealed credential store's directory [default: $XDG_DATA_HOME/kubeshield/access].",
    )(func)


def _key_options(func: F) -> F:
    func = option(
        "--passphrase-file",
        type=_FILE,
        help=f"A file holding the store's passphrase (or ${PASSPHRASE_ENV}); without either, and without "
        "--config, the passphrase is asked on the terminal.",
    )(func)
    return option(
        "--config",
        "config_file",
        type=_FILE,
        help="kubeshield.yaml whose keys: section names the KeyBackend that seals the store "
        "(local keyring, PKCS#11, Transit, AWS KMS, TPM, custody) instead of a passphrase.",
    )(func)


def _client(socket_path: Path | None, timeout: float = 30.0) -> Any:
    from kubeshield.access.agent_client import AgentClient

    return AgentClient(socket_path, timeout=timeout)


def _store(store_dir: Path | None) -> Any:
    from kubeshield.access.store import CredentialStore, default_store_dir

    return CredentialStore(store_dir or default_store_dir())


def _passphrase(passphrase_file: Path | None, *, confirm: bool, required: bool = True) -> bytes | None:
    from kubeshield.keys.passphrase import PASSPHRASE_ENV as KEYRING_ENV
    from kubeshield.keys.passphrase import read_passphrase

    environ = {KEYRING_ENV: os.environ[PASSPHRASE_ENV]} if PASSPHRASE_ENV in os.environ else {}
    value = read_passphrase(passphrase_file=passphrase_file, environ=environ)
    if value is not None:
        return value
    if not required:
        return None
    if not sys.stdin.isatty():
        raise click.UsageError(
            f"the store needs a passphrase: give --passphrase-file or ${PASSPHRASE_ENV} "
            "(or --config with keys:)"
        )
    text = click.prompt(
        "Passphrase of the credential store", hide_input=True, confirmation_prompt=confirm, err=True
    )
    if not text:
        raise click.UsageError("an empty passphrase is refused")
    return str(text).encode("utf-8")


def _store_key(config_file: Path | None, passphrase_file: Path | None, *, creating: bool) -> Any:
    from kubeshield.access.store import StoreKey

    if config_file is not None:
        if passphrase_file is not None:
            raise click.UsageError("give --config or --passphrase-file, not both")
        from kubeshield.config import load_config
        from kubeshield.keys.registry import open_primary

        return StoreKey(backend=open_primary(load_config(config_file).keys))
    return StoreKey(passphrase=_passphrase(passphrase_file, confirm=creating))


def _agent_store_dir(client: Any) -> Path | None:
    """The store directory the agent was started with (so the remedy names the right command)."""
    from kubeshield.access.agent_client import AgentError, AgentUnavailable

    try:
        store = client.status().get("store")
    except (AgentError, AgentUnavailable):
        return None
    if isinstance(store, dict) and isinstance(store.get("path"), str):
        return Path(store["path"]).parent
    return None


def _kubeshield_command() -> str:
    """The absolute path of the kubeshield executable, for the kubeconfig's exec entry."""
    beside = Path(sys.executable).parent / "kubeshield"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("kubeshield")
    if found:
        return os.path.abspath(found)
    return os.path.abspath(sys.argv[0])


# --- agent ----------------------------------------------------------------------------------------


@click.command("agent")
@_socket_option
@option("--allow-exe", multiple=True, type=_FILE,
        help="Only callers running this executable are served (repeatable; compared by file identity, "
        "checked again before every request). For kubeshield's own commands that is its Python "
        "interpreter. Default: every process of your uid.")  # fmt: skip
@option("--require-mlock", is_flag=True, help="Refuse to start when memory cannot be locked (mlockall).")
@_store_option
@_key_options
@option(
    "--audit-log", type=_FILE, help="Append a JSON line per request through a proxy that touched a Secret."
)
@option("--redact-secrets", is_flag=True,
        help="Proxies hide Secret data in answers unless a request has X-Kubeshield-Reveal: 1.")  # fmt: skip
@option("--max-connections", type=click.IntRange(1, 4096), default=64, show_default=True,
        help="Connections served at once; more are told the agent is busy.")  # fmt: skip
@option("--request-timeout", type=DURATION, default="30s", show_default=True,
        help="Time for one request to arrive and be answered.")  # fmt: skip
@option("--proxy-session", type=DURATION, default="12h", show_default=True,
        help="Longest life of a proxy session's bearer (never past the credential's expiry).")  # fmt: skip
def agent_cmd(
    socket_path: Path | None,
    allow_exe: tuple[Path, ...],
    require_mlock: bool,
    store_dir: Path | None,
    config_file: Path | None,
    passphrase_file: Path | None,
    audit_log: Path | None,
    redact_secrets: bool,
    max_connections: int,
    request_timeout: float,
    proxy_session: float,
) -> None:
    """Run the per-user agent that holds cluster credentials in memory only.

    It listens on a unix socket in a 0700 directory, serves only processes of your uid (checked by
    the kernel, SO_PEERCRED; root is not let in either), runs hardened (no core file, not dumpable,
    memory locked), and drops every credential on `kubeshield access lock`, at each one's expiry and
    on SIGTERM/SIGINT/SIGHUP. With --config (a KeyBackend) or --passphrase-file it loads the sealed
    store at start; otherwise run `kubeshield access unlock`. Prints `ready SOCKET` once serving.

    \b
      kubeshield access agent &
      kubeshield access import --kubeconfig ~/.kube/config --remove
      kubeshield access kubeconfig --context prod > ~/.kube/prod-via-kubeshield
    """
    import datetime as dt

    from kubeshield.access.agent import AgentSettings, run_agent
    from kubeshield.access.agent_client import default_socket_path
    from kubeshield.access.peer import ExeAllowList
    from kubeshield.keys.harden import harden_process

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    # hardened before anything is read or opened: no core file, not dumpable, memory locked, and no
    # descriptor inherited from the parent (a key backend opened below keeps its own)
    harden_process(require_mlock=require_mlock, close_fds=True)
    store = _store(store_dir)
    store_key = None
    if config_file is not None or passphrase_file is not None or PASSPHRASE_ENV in os.environ:
        store_key = _store_key(config_file, passphrase_file, creating=False)
    settings = AgentSettings(
        socket_path=socket_path or default_socket_path(),
        allow_exe=ExeAllowList.from_paths(allow_exe) if allow_exe else None,
        store=store,
        store_key=store_key,
        max_connections=max_connections,
        request_timeout=request_timeout,
        proxy_session=dt.timedelta(seconds=proxy_session),
        audit_log=audit_log,
        redact_secrets=redact_secrets,
    )

    def ready(path: str) -> None:
        click.echo(f"ready {path}")
        sys.stdout.flush()

    run_agent(settings, harden=False, ready=ready)


# --- import ---------------------------------------------------------------------------------------


@click.command("import")
@option(
    "--kubeconfig", "kubeconfig", type=_FILE, required=True, help="The kubeconfig whose credentials move."
)
@option("--context", "contexts", multiple=True,
        help="The context to import (repeatable) [default: the file's current-context].")  # fmt: skip
@option("--remove", is_flag=True,
        help="Delete the kubeconfig and its key/token files once the sealed copy reads back.")  # fmt: skip
@option("--yes", is_flag=True, help="Do not ask before --remove deletes files (for scripts).")
@_store_option
@_key_options
@_socket_option
def import_cmd(
    kubeconfig: Path,
    contexts: tuple[str, ...],
    remove: bool,
    yes: bool,
    store_dir: Path | None,
    config_file: Path | None,
    passphrase_file: Path | None,
    socket_path: Path | None,
) -> None:
    """Move a kubeconfig's credentials into the sealed store and the running agent.

    Every form a kubeconfig user can hold is read: client-certificate(-data) + client-key(-data),
    token, tokenFile (relative paths against the kubeconfig's directory). A user with an exec plugin
    or an auth-provider holds nothing to import and is refused. The store is sealed with AES-256-GCM,
    its key wrapped by the KeyBackend of --config or derived from a passphrase (Argon2id).

    With --remove, after you confirm (or --yes), the kubeconfig and the key and token files it names
    are deleted, but only after the sealed store was written, synced and read back. A kubeconfig that
    holds credentials of other contexts is not removed (import those too).
    """
    from kubeshield.access.agent_client import AgentUnavailable
    from kubeshield.access.kubeconfig_import import read_kubeconfig_credentials

    found = read_kubeconfig_credentials(kubeconfig, contexts=contexts)
    if remove and found.other_secret_contexts:
        raise CLIError(
            f"{found.path} also holds credentials of {', '.join(found.other_secret_contexts)}: "
            "import them too (--context NAME, repeatable) or leave out --remove"
        )
    store = _store(store_dir)
    key = _store_key(config_file, passphrase_file, creating=not store.exists())
    names = store.upsert([c.credential for c in found.contexts], key)
    click.echo(
        f"sealed {', '.join(c.credential.context for c in found.contexts)} into {store.path}", err=True
    )
    client = _client(socket_path)
    try:
        for item in found.contexts:
            client.add(item.credential)
        click.echo("added to the agent", err=True)
    except AgentUnavailable as exc:
        warn(f"{exc}; the credentials are in the store: run `kubeshield access unlock` once an agent runs")
    if not remove:
        click.echo(f"the store holds {len(names)} context(s); {found.path} is unchanged", err=True)
        return
    files = [found.path, *sorted({p for c in found.contexts for p in c.secret_files})]
    listing = "\n  ".join(str(p) for p in files)
    if not yes and not click.confirm(
        f"Delete these plaintext files?\n  {listing}\n", default=False, err=True
    ):
        click.echo("nothing deleted", err=True)
        return
    back = {c.context: c for c in store.load(key)}  # read back once more, right before deleting
    for item in found.contexts:
        sealed = back.get(item.credential.context)
        if (
            sealed is None
            or sealed.client_key_pem != item.credential.client_key_pem
            or sealed.token != item.credential.token
        ):
            raise CLIError(
                f"the sealed copy of {item.credential.context!r} does not read back; nothing deleted"
            )
    for path in files:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CLIError(
                f"cannot delete {path}: {exc.strerror} (the sealed copy is in {store.path})"
            ) from None
        click.echo(f"deleted {path}", err=True)


# --- unlock, lock, status ---------------------------------------------------------------------------


@click.command("unlock")
@_store_option
@_key_options
@_socket_option
def unlock_cmd(
    store_dir: Path | None, config_file: Path | None, passphrase_file: Path | None, socket_path: Path | None
) -> None:
    """Load the sealed store into the running agent.

    A passphrase store: the passphrase (--passphrase-file, $KUBESHIELD_ACCESS_PASSPHRASE, or asked on
    the terminal) goes to the agent, which opens the store itself. A KeyBackend store: the agent uses
    the backend it was started with (--config), or, given --config here, this command opens the
    store and hands the credentials to the agent.
    """
    store = _store(store_dir)
    kind = store.protection_kind()
    if kind is None:
        raise CLIError(f"no credential store at {store.path}: run `kubeshield access import` first")
    client = _client(socket_path, timeout=120.0)
    if config_file is not None:
        key = _store_key(config_file, None, creating=False)
        credentials = store.load(key)
        for credential in credentials:
            if not credential.expired():
                client.add(credential)
        loaded = [c.context for c in credentials if not c.expired()]
    elif kind == "passphrase":
        loaded = client.unlock(passphrase=_passphrase(passphrase_file, confirm=False))
    else:
        loaded = client.unlock()
    click.echo(f"unlocked: {', '.join(loaded) if loaded else 'no unexpired context in the store'}")


@click.command("lock")
@_socket_option
def lock_cmd(socket_path: Path | None) -> None:
    """Drop every credential the agent holds, and stop its proxies (the sealed store stays)."""
    _client(socket_path).lock()
    click.echo("locked: the agent holds no credential")


@click.command("status")
@_socket_option
@option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True,
        help="Output format.")  # fmt: skip
def status_cmd(socket_path: Path | None, output: str) -> None:
    """Show the agent and the contexts it holds (names, servers, kinds, expiry; never a secret)."""
    client = _client(socket_path)
    status = client.status()
    contexts = client.contexts()
    if output == "json":
        click.echo(json.dumps({"agent": status, "contexts": contexts}, indent=2))
        return
    hardening = status.get("hardening", {})
    click.echo(
        f"agent pid {status.get('pid')} uid {status.get('uid')} on {status.get('socket')}; "
        f"memory locked: {'yes' if hardening.get('mlocked') else 'no'}"
        f"{'; locked' if status.get('locked') else ''}"
    )
    if not contexts:
        click.echo("no context (run `kubeshield access unlock`, `import` or `login`)")
        return
    rows = [("CONTEXT", "KIND", "EXPIRES", "SUBJECT", "PROXY", "SERVER")]
    for c in contexts:
        rows.append(
            (
                c["context"],
                c["kind"],
                c.get("expires") or "-",
                c.get("subject") or "-",
                c.get("proxy") or "-",
                c["server"],
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


# --- proxy, kubeconfig, exec-credential --------------------------------------------------------------


def _context_option(func: F) -> F:
    return option("--context", required=True, help="The context (as the agent holds it).")(func)


def _listen_option(func: F) -> F:
    return option("--listen", default="127.0.0.1:0", show_default=True,
                  help="Loopback address and port for the proxy (0: a free port).")(func)  # fmt: skip


@click.command("proxy")
@_context_option
@_listen_option
@option("--detach", is_flag=True, help="Return once the proxy runs (it keeps running in the agent).")
@_socket_option
def proxy_cmd(context: str, listen: str, detach: bool, socket_path: Path | None) -> None:
    """Serve one context on https://127.0.0.1:PORT for kubectl, from inside the agent.

    The proxy runs in the agent's process (the client key never leaves it); this command prints its
    URL and waits until Ctrl-C, then stops it (--detach: returns at once). kubectl reaches it with the
    kubeconfig of `kubeshield access kubeconfig`, which carries no secret.
    """
    import signal
    import threading

    client = _client(socket_path)
    done = threading.Event()
    if not detach:  # before the URL is printed: whoever reads it may interrupt at once
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: done.set())
    info = client.start_proxy(context, listen=listen)
    click.echo(info.url)
    sys.stdout.flush()
    if detach:
        return
    done.wait()
    try:
        client.stop_proxy(context)
    except Exception as exc:
        warn(f"stopping the proxy: {exc}")


@click.command("kubeconfig")
@_context_option
@_listen_option
@option("--namespace", help="The namespace kubectl uses by default.")
@_socket_option
def kubeconfig_cmd(context: str, listen: str, namespace: str | None, socket_path: Path | None) -> None:
    """Print a kubeconfig that holds no secret: it points kubectl at the agent's proxy.

    The proxy for the context is started (or found running); the kubeconfig names its https URL, the
    agent's local CA, and an exec entry that runs `kubeshield access exec-credential --proxy` to get
    the session's bearer secret from the agent whenever kubectl needs it.

    \b
      kubeshield access kubeconfig --context prod > ~/.kube/prod.yaml
      KUBECONFIG=~/.kube/prod.yaml kubectl get pods
    """
    from kubeshield.access.kubeconfig_out import render_kubeconfig

    info = _client(socket_path).start_proxy(context, listen=listen)
    click.echo(
        render_kubeconfig(
            context=context,
            proxy_url=info.url,
            ca_pem=info.ca_pem,
            command=_kubeshield_command(),
            namespace=namespace,
            socket_path=str(socket_path) if socket_path is not None else None,
        ),
        nl=False,
    )


@click.command("exec-credential")
@_context_option
@option("--proxy", is_flag=True, help="Give the proxy session's bearer secret (the kubeconfig's way).")
@option("--listen", help="With --proxy: start the proxy again on this address when it is not running.")
@_store_option
@_socket_option
def exec_credential_cmd(
    context: str, proxy: bool, listen: str | None, store_dir: Path | None, socket_path: Path | None
) -> None:
    """A client-go exec credential plugin, served from the agent's memory (never cached on disk).

    With --proxy: the bearer secret of the context's proxy session. Without: the credential itself,
    a token or a client certificate and key, with its expirationTimestamp, for tools that cannot use
    the proxy (the key is then in that tool's memory). When the agent holds nothing for the context
    and kubectl runs interactively, it asks once for the store's passphrase; otherwise it fails with
    one line naming the command to run.
    """
    from kubeshield.access.exec_credential import (
        ExecCredentialUnavailable,
        fetch_exec_credential,
        parse_exec_info,
        remedy,
        stale_proxy_kubeconfig,
    )

    client = _client(socket_path)
    store = _store(store_dir or _agent_store_dir(client))
    info = parse_exec_info(os.environ)

    def prompt() -> bool:
        kind = store.protection_kind()
        if kind is None:
            return False
        click.echo(
            f"kubeshield: the agent holds no credential for {context!r}; unlocking the store", err=True
        )
        if kind == "passphrase":
            client.unlock(passphrase=_passphrase(None, confirm=False))
        else:
            client.unlock()
        return True

    if proxy and info.cluster_ca is not None:
        from kubeshield.access.agent_client import AgentError, AgentUnavailable
        from kubeshield.access.agent_protocol import ProtocolError, unb64

        try:
            agent_ca = unb64(client.status().get("localCA"), field="localCA")
        except (AgentError, AgentUnavailable, ProtocolError):
            agent_ca = None  # fetch_exec_credential below reports the agent's state
        stale = stale_proxy_kubeconfig(info, agent_ca_pem=agent_ca, context=context) if agent_ca else None
        if stale is not None:
            raise CLIError(stale)
    try:
        document = fetch_exec_credential(
            context=context,
            get=lambda: client.exec_credential(context, proxy=proxy, listen=listen),
            info=info,
            stdin_is_tty=sys.stdin.isatty(),
            prompt=prompt,
            remedy_line=remedy(context, store_exists=store.exists()),
        )
    except ExecCredentialUnavailable as exc:
        raise CLIError(str(exc)) from None
    click.echo(json.dumps(document))


commands: list[click.Command] = [
    agent_cmd,
    import_cmd,
    unlock_cmd,
    lock_cmd,
    status_cmd,
    proxy_cmd,
    kubeconfig_cmd,
    exec_credential_cmd,
]
