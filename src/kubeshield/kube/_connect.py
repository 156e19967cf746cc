"""Where the API is and who we are: kubeconfig and in-cluster settings -> base URL, TLS context, auth.

lightkube parses the kubeconfig (contexts, clusters, users, relative paths) and the in-cluster service
account; this module turns the chosen context into what httpx2 needs, with two differences from
lightkube's own adapter, both on purpose:

* inline ``client-key-data`` is loaded through an anonymous memory file (``memfd_create``), so a client
  key never lands in ``/tmp`` (lightkube writes it to a NamedTemporaryFile);
* exec credential plugins speak ``client.authentication.k8s.io/v1`` as well as ``v1beta1`` (lightkube
  refuses ``v1``), honour ``expirationTimestamp``, and are never given an interactive terminal.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import yaml
from lightkube.config.kubeconfig import KubeConfig, SingleConfig
from lightkube.core.exceptions import ConfigError as LightkubeConfigError

from kubeshield.errors import ConfigError, KubeUnauthorized

__all__ = ["Connection", "from_kubeconfig", "in_cluster"]

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_EXEC_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")


@dataclass(frozen=True)
class Connection:
    """Everything a client needs to reach one API server as one identity."""

    base_url: str
    verify: ssl.SSLContext | bool
    auth: httpx2.Auth | None
    namespace: str
    context: str


def _decode_data(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise ConfigError(f"kubeconfig {what} is not valid base64") from None


def _load_cert_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """Load a client certificate and key held in memory, without writing the key to a file system."""
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        fd = memfd("kubeshield-client-cert", os.MFD_CLOEXEC)
        try:
            os.write(fd, cert_pem.rstrip(b"\n") + b"\n" + key_pem)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    # no memfd on this platform: a private directory, unlinked before this returns
    with tempfile.TemporaryDirectory() as tmp:  # pragma: no cover - Linux always has memfd_create
        path = Path(tmp) / "client.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(cert_pem + b"\n" + key_pem)
        ctx.load_cert_chain(str(path))


def _ssl_context(config: SingleConfig) -> ssl.SSLContext | bool:
    cluster, user = config.cluster, config.user
    if not cluster.server.startswith("https://"):
        return False
    if cluster.insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif cluster.certificate_auth_data:
        ctx = ssl.create_default_context(
            cadata=_decode_data(cluster.certificate_auth_data, "certificate-authority-data").decode()
        )
    elif cluster.certificate_auth:
        ctx = ssl.create_default_context(cafile=str(config.abs_file(cluster.certificate_auth)))
    else:
        ctx = ssl.create_default_context()
    if user is not None and (user.client_cert or user.client_cert_data):
        if user.client_cert_data:
            cert = _decode_data(user.client_cert_data, "client-certificate-data")
        else:
            cert = Path(config.abs_file(user.client_cert or "")).read_bytes()
        if user.client_key_data:
            key = _decode_data(user.client_key_data, "client-key-data")
        elif user.client_key:
            key = Path(config.abs_file(user.client_key)).read_bytes()
        else:
            raise ConfigError(
                f"kubeconfig user of context {config.context_name!r} has a certificate but no key"
            )
        try:
            _load_cert_chain(ctx, cert, key)
        except ssl.SSLError:
            raise ConfigError(
                f"kubeconfig context {config.context_name!r}: the client certificate and key do not load"
            ) from None
    return ctx


class _BearerAuth(httpx2.Auth):
    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token.strip()}"

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


class _TokenFileAuth(httpx2.Auth):
    """A token file the kubelet rotates: re-read when it changes (checked at most every ``recheck`` s) and
    after a 401, like client-go's cached token source."""

    def __init__(
        self, path: Path, *, recheck: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._path = path
        self._recheck = recheck
        self._clock = clock
        self._lock = threading.Lock()
        self._header = ""
        self._read_at = float("-inf")

    def _load(self, force: bool) -> str:
        with self._lock:
            now = self._clock()
            if force or now - self._read_at >= self._recheck or not self._header:
                try:
                    token = self._path.read_text().strip()
                except OSError as exc:
                    raise ConfigError(f"cannot read the token file {self._path}: {exc.strerror}") from None
                if not token:
                    raise ConfigError(f"the token file {self._path} is empty")
                self._header, self._read_at = f"Bearer {token}", now
            return self._header

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        request.headers["Authorization"] = self._load(force=False)
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = self._load(force=True)
            yield request


class _ExecAuth(httpx2.Auth):
    """A client-go exec credential plugin (token credentials), cached until its expirationTimestamp."""

    def __init__(
        self,
        exec_conf: Mapping[str, Any],
        *,
        context: str,
        clock: Callable[[], float] = time.time,
        runner: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run,
    ) -> None:
        api_version = str(exec_conf.get("apiVersion", ""))
        if api_version not in _EXEC_VERSIONS:
            raise ConfigError(
                f"kubeconfig context {context!r}: exec apiVersion {api_version!r} is not supported "
                f"(use one of {', '.join(_EXEC_VERSIONS)})"
            )
        if not exec_conf.get("command"):
            raise ConfigError(f"kubeconfig context {context!r}: exec.command is required")
        self._conf = exec_conf
        self._api_version = api_version
        self._context = context
        self._clock = clock
        self._runner = runner
        self._lock = threading.Lock()
        self._header = ""
        self._expires = float("-inf")

    def _run(self) -> None:
        env = dict(os.environ)
        for item in self._conf.get("env") or ():
            env[str(item["name"])] = str(item["value"])
        env["KUBERNETES_EXEC_INFO"] = json.dumps(
            {"apiVersion": self._api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
        )
        command = [str(self._conf["command"]), *(str(a) for a in self._conf.get("args") or ())]
        try:
            done = self._runner(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(
                f"kubeconfig context {self._context!r}: exec plugin {command[0]!r} failed: {exc}"
            ) from None
        if done.returncode != 0:
            raise KubeUnauthorized(
                f"exec credential plugin {command[0]!r} exited with status {done.returncode}", code=401
            )
        try:
            status = json.loads(done.stdout)["status"]
            token = str(status["token"])
        except (ValueError, KeyError, TypeError):
            raise KubeUnauthorized(
                f"exec credential plugin {command[0]!r} printed no ExecCredential with status.token", code=401
            ) from None
        expires = float("inf")
        if status.get("expirationTimestamp"):
            stamp = str(status["expirationTimestamp"]).replace("Z", "+00:00")
            expires = dt.datetime.fromisoformat(stamp).timestamp()
        self._header, self._expires = f"Bearer {token}", expires

    def _current(self, force: bool) -> str:
        with self._lock:
            # renew a little before the plugin's own expiry, as client-go does
            if force or not self._header or self._clock() >= self._expires - 10:
                self._run()
            return self._header

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        request.headers["Authorization"] = self._current(force=False)
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = self._current(force=True)
            yield request


def _raw_exec(config_file: Path | None, user_name: str | None) -> Mapping[str, Any] | None:
    """The user's ``exec`` block as written (lightkube's model drops fields such as interactiveMode)."""
    if config_file is None or user_name is None:
        return None
    doc = yaml.safe_load(config_file.read_text()) or {}
    for entry in doc.get("users") or ():
        if entry.get("name") == user_name:
            exec_conf = (entry.get("user") or {}).get("exec")
            return exec_conf if isinstance(exec_conf, dict) else None
    return None


def _auth(config: SingleConfig, kubeconfig: KubeConfig) -> httpx2.Auth | None:
    user = config.user
    if user is None:
        return None
    if user.auth_provider:
        raise ConfigError(
            f"kubeconfig context {config.context_name!r}: auth-provider plugins are not supported; "
            "use an exec credential plugin"
        )
    if user.token_file:
        return _TokenFileAuth(Path(config.abs_file(user.token_file)))
    if user.token:
        return _BearerAuth(user.token)
    if user.exec is not None:
        raw = _raw_exec(kubeconfig.fname, config.context.user)
        if raw is None:
            raw = {
                "apiVersion": user.exec.apiVersion,
                "command": user.exec.command,
                "args": user.exec.args,
                "env": [{"name": e.name, "value": e.value} for e in user.exec.env or ()],
            }
        return _ExecAuth(raw, context=config.context_name)
    if user.username and user.password:
        return httpx2.BasicAuth(user.username, user.password)
    return None


def _merged(paths: list[Path]) -> KubeConfig:
    """KUBECONFIG with several files: the first file that names a context, cluster or user wins."""
    merged: dict[str, Any] = {"clusters": [], "contexts": [], "users": [], "current-context": None}
    seen: dict[str, set[str]] = {"clusters": set(), "contexts": set(), "users": set()}
    for path in paths:
        if not path.is_file():
            continue
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"kubeconfig {path} is not valid YAML: {exc}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"kubeconfig {path} is not a mapping")
        if merged["current-context"] is None:
            merged["current-context"] = doc.get("current-context")
        for section in ("clusters", "contexts", "users"):
            for entry in doc.get(section) or ():
                if isinstance(entry, dict) and entry.get("name") not in seen[section]:
                    seen[section].add(str(entry.get("name")))
                    merged[section].append(entry)
    return KubeConfig.from_dict(merged, fname=paths[0])


def from_kubeconfig(path: str | os.PathLike[str] | None = None, context: str | None = None) -> Connection:
    """Settings from a kubeconfig: ``path``, else ``$KUBECONFIG`` (colon-separated, merged), else
    ``~/.kube/config``; ``context`` defaults to the file's current-context."""
    if path is not None:
        files = [Path(path).expanduser()]
        if not files[0].is_file():
            raise ConfigError(f"kubeconfig {files[0]} does not exist")
    else:
        env = os.environ.get("KUBECONFIG", "")
        files = [Path(p).expanduser() for p in env.split(os.pathsep) if p] or [
            Path("~/.kube/config").expanduser()
        ]
        if not any(f.is_file() for f in files):
            raise ConfigError(f"no kubeconfig found (looked at {', '.join(map(str, files))})")
    try:
        kubeconfig = KubeConfig.from_file(files[0]) if len(files) == 1 else _merged(files)
        single = kubeconfig.get(context)
    except (LightkubeConfigError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"kubeconfig {files[0]}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"kubeconfig {files[0]} is not valid YAML: {exc}") from None
    if single is None:  # pragma: no cover - get() without a default raises instead
        raise ConfigError(f"kubeconfig {files[0]} has no current context")
    return Connection(
        base_url=single.cluster.server.rstrip("/"),
        verify=_ssl_context(single),
        auth=_auth(single, kubeconfig),
        namespace=single.namespace,
        context=single.context_name,
    )


def in_cluster(
    service_account_dir: str | os.PathLike[str] = SERVICE_ACCOUNT_DIR,
    environ: Mapping[str, str] | None = None,
) -> Connection:
    """Settings inside a pod: ``KUBERNETES_SERVICE_HOST``/``_PORT``, the projected token (re-read as the
    kubelet rotates it), ``ca.crt`` and ``namespace`` from the service account directory."""
    env = os.environ if environ is None else environ
    base = Path(service_account_dir)
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise ConfigError("not in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set")
    token, ca = base / "token", base / "ca.crt"
    for needed in (token, ca):
        if not needed.is_file():
            raise ConfigError(f"not in a cluster: {needed} does not exist")
    try:
        namespace = (base / "namespace").read_text().strip() or "default"
    except OSError:
        namespace = "default"
    host = f"[{host}]" if ":" in host else host
    return Connection(
        base_url=f"https://{host}:{port}",
        verify=ssl.create_default_context(cafile=str(ca)),
        auth=_TokenFileAuth(token),
        namespace=namespace,
        context="in-cluster",
    )
