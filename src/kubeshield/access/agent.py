"""The access agent: one asyncio process per user that holds cluster credentials in memory only.

Like ssh-agent, it listens on a unix socket (default ``$XDG_RUNTIME_DIR/kubeshield/agent.sock``; the
directory must be the user's and 0700 or the agent refuses to start, the socket is 0600) and answers
the requests of ``agent_protocol``. What it guarantees, and how:

* **Memory only.** Credentials arrive over the socket (``add``, ``install_certificate``), or from the
  sealed store (``unlock``, or at start when its key is at hand); nothing is written to disk. Each
  one is dropped at its ``expires_at`` (a timer, and a check at every use), all of them on ``lock``,
  on SIGTERM, SIGINT and SIGHUP (logout). Python cannot promise that freed bytes are overwritten;
  what it can do is done at start (``kubeshield.keys.harden``): no core files, not dumpable (another
  process of the user cannot ptrace it or read ``/proc/<pid>/mem``), ``mlockall`` so nothing reaches
  swap (a warning when that fails, a refusal with ``require_mlock``).
* **Only the user.** Every connection is checked (``kubeshield.access.peer``): the same uid by
  ``SO_PEERCRED``, root included in the refusal, and optionally an executable allow-list.
* **Keys never leave it.** ``new_key`` makes the key pair of a relay-signed certificate inside the agent
  and returns only a CSR. The proxies (``kubeshield.access.proxy.LocalProxy``) run on the agent's event
  loop, so a client key is used for TLS to the apiserver without leaving this process; kubectl gets a
  per-session 256-bit bearer secret instead (``exec_credential`` with ``proxy``). The serving
  certificates come from an in-memory CA (``local_ca``).
* **Robust service.** A message is at most ``MAX_MESSAGE_BYTES``; at most ``max_connections``
  connections are served at once (more are told so and closed); each request must arrive and be
  answered within ``request_timeout`` seconds; an unknown op or a malformed message gets a clear
  ``protocol`` error and the agent keeps serving (a broken frame header ends only that connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import os
import secrets
import signal
import socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kubeshield.access.agent_protocol import (
    HEADER,
    OPS,
    PROTOCOL_VERSION,
    ProtocolError,
    b64,
    credential_from_wire,
    decode_body,
    decode_length,
    encode_frame,
    endpoint_from_wire,
    format_time,
    unb64,
)
from kubeshield.access.credential import ClusterCredential
from kubeshield.access.local_ca import LocalCA
from kubeshield.access.peer import AdmittedPeer, ExeAllowList, PeerRefused, admit
from kubeshield.access.store import CredentialStore, StoreKey
from kubeshield.errors import ConfigError, InvalidCiphertext, KubeshieldError, WrongPassphrase
from kubeshield.keys._unix_socket import prepare_socket_path

if TYPE_CHECKING:
    from kubeshield.access.audit import AuditLog
    from kubeshield.access.proxy import LocalProxy

__all__ = ["Agent", "AgentSettings", "prepare_socket_dir", "run_agent"]

log = logging.getLogger("kubeshield.access.agent")

_PENDING_KEY_LIFETIME = dt.timedelta(minutes=10)
_MAX_PENDING_KEYS = 16
_MAX_CONTEXTS = 1024


@dataclass(frozen=True)
class AgentSettings:
    """How one agent runs. ``store_key`` opens the sealed store without asking (a KeyBackend's key);
    None: the store waits for ``unlock`` with a passphrase."""

    socket_path: Path
    allow_exe: ExeAllowList | None = None
    store: CredentialStore | None = None
    store_key: StoreKey | None = None
    max_connections: int = 64
    request_timeout: float = 30.0
    idle_timeout: float = 600.0
    proxy_session: dt.timedelta = dt.timedelta(hours=12)
    audit_log: Path | None = None
    redact_secrets: bool = False
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))


class _Fail(Exception):
    """An error answer: ``kind`` is the protocol's error type, the message is safe to send."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class _Session:
    proxy: LocalProxy
    bearer: bytes
    url: str
    port: int
    expires_at: dt.datetime
    timer: asyncio.TimerHandle | None = None


@dataclass
class _Held:
    credential: ClusterCredential
    timer: asyncio.TimerHandle | None = None
    source: str = "added"


def prepare_socket_dir(socket_path: Path) -> None:
    """The socket's directory: made 0700 when missing; an existing one must be ours and exactly 0700."""
    directory = socket_path.parent
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        directory.mkdir(mode=0o700, parents=True)
        os.chmod(directory, 0o700)
        info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"socket directory {directory} is not a directory (a symbolic link?)")
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"socket directory {directory} belongs to uid {info.st_uid}, not to the agent's uid"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode != 0o700:
        raise ConfigError(
            f"socket directory {directory} is mode {mode:04o}; it must be 0700 so that nobody else can "
            f"reach or replace the socket (chmod 700 {directory})"
        )


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise _Fail("invalid", f"listen {listen[:80]!r}: expected HOST:PORT, e.g. 127.0.0.1:0")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise _Fail("invalid", f"listen {listen[:80]!r}: the proxy listens on a loopback address only")
    return host, int(port_text)


def _public_der(key: Any) -> bytes:
    return bytes(
        key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


class Agent:
    """The agent's state and request handling (the module docstring). Runs on one event loop."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self._uid = os.geteuid()
        self._held: dict[str, _Held] = {}
        self._sessions: dict[str, _Session] = {}
        self._pending: dict[str, tuple[ec.EllipticCurvePrivateKey, dt.datetime]] = {}
        self._locked = False
        self._active = 0
        self._ca = LocalCA()
        self._server: asyncio.AbstractServer | None = None
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._audit: AuditLog | None = None
        if settings.audit_log is not None:  # opened (and checked: ours, 0600) at start, shared by sessions
            from kubeshield.access.audit import AuditLog

            self._audit = AuditLog(settings.audit_log)
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "status": self._op_status,
            "add": self._op_add,
            "contexts": self._op_contexts,
            "remove": self._op_remove,
            "lock": self._op_lock,
            "unlock": self._op_unlock,
            "new_key": self._op_new_key,
            "install_certificate": self._op_install_certificate,
            "exec_credential": self._op_exec_credential,
            "start_proxy": self._op_start_proxy,
            "stop_proxy": self._op_stop_proxy,
        }
        assert set(self._handlers) == OPS

    def __repr__(self) -> str:
        return f"Agent(socket={str(self.settings.socket_path)!r}, contexts={len(self._held)})"

    # --- lifecycle ---------------------------------------------------------------------------------

    def bind(self) -> socket.socket:
        """Check the directory, replace a stale socket, bind it 0600 (before the loop runs)."""
        path = self.settings.socket_path
        prepare_socket_dir(path)
        prepare_socket_path(str(path))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot bind the agent socket {path}: {exc.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(128)
        return sock

    async def serve(
        self, sock: socket.socket, *, ready: Callable[[], None] | None = None, handle_signals: bool = True
    ) -> None:
        """Serve until a signal (SIGTERM, SIGINT, SIGHUP) or :meth:`shutdown`; then drop everything.

        ``handle_signals=False`` for an agent on a thread's loop (tests): only :meth:`shutdown` stops it.
        """
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) if handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
        self._server = await asyncio.start_unix_server(self._connection, sock=sock)
        if (
            self.settings.store is not None
            and self.settings.store_key is not None
            and self.settings.store.exists()
        ):
            try:
                loaded = await self._load_store(self.settings.store_key)
                log.info("loaded %d context(s) from the sealed store", len(loaded))
            except _Fail as exc:
                log.warning("the sealed store was not loaded: %s", exc)
        if ready is not None:
            ready()
        try:
            await self._stopped.wait()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            self._server.close()
            await self._drop_all()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.settings.socket_path)
            if self._audit is not None:
                self._audit.close()

    def _on_signal(self, sig: int) -> None:
        log.info("%s: dropping every credential and stopping", signal.Signals(sig).name)
        self.shutdown()

    def shutdown(self) -> None:
        # drop the references at once (the proxies stop in serve()'s cleanup)
        for held in self._held.values():
            if held.timer is not None:
                held.timer.cancel()
        self._held.clear()
        self._pending.clear()
        self._stopped.set()

    # --- one connection ----------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        peer: AdmittedPeer | None = None
        try:
            if self._active >= self.settings.max_connections:
                log.warning("connection refused: %d connections are open already", self._active)
                await self._answer(
                    writer, self._error("unavailable", "the agent is busy: too many connections")
                )
                return
            self._active += 1
            try:
                peer = self._admit(writer)
                if peer is None:
                    return
                await self._requests(reader, writer, peer)
            finally:
                self._active -= 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:  # one connection's failure never ends the agent
            log.exception("a connection failed")
        finally:
            if peer is not None:
                peer.close()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    def _admit(self, writer: asyncio.StreamWriter) -> AdmittedPeer | None:
        transport_sock = writer.get_extra_info("socket")
        raw = socket.socket(fileno=os.dup(transport_sock.fileno()))
        try:
            return admit(raw, uid=self._uid, allow=self.settings.allow_exe)
        except PeerRefused as exc:
            log.warning("connection refused: %s", exc)
            with contextlib.suppress(OSError):
                writer.write(encode_frame(self._error("refused", str(exc))))
            return None
        finally:
            raw.close()

    async def _requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: AdmittedPeer
    ) -> None:
        timeout = self.settings.request_timeout
        while True:
            try:
                async with asyncio.timeout(self.settings.idle_timeout):
                    header = await reader.readexactly(HEADER.size)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    log.info("a caller (%s) closed in the middle of a frame header", peer.describe())
                return
            except TimeoutError:
                return
            try:
                length = decode_length(header)
            except ProtocolError as exc:  # the framing is lost: answer and end this connection only
                await self._answer(writer, self._error("protocol", str(exc)))
                return
            try:
                async with asyncio.timeout(timeout):
                    body = await reader.readexactly(length)
            except TimeoutError:
                await self._answer(
                    writer, self._error("protocol", f"the message did not arrive within {timeout:g}s")
                )
                return
            reason = peer.still_same()
            if reason is not None:
                log.warning("request refused (%s): %s", peer.describe(), reason)
                await self._answer(writer, self._error("refused", f"the caller is refused: {reason}"))
                return
            answer = await self._handle(body, timeout)
            await self._answer(writer, answer)

    async def _handle(self, body: bytes, timeout: float) -> dict[str, Any]:
        try:
            message = decode_body(body)
            op = message.get("op")
            if not isinstance(op, str) or op not in self._handlers:
                shown = op[:40] if isinstance(op, str) else op
                raise ProtocolError(f"unknown op {shown!r} (known: {', '.join(sorted(OPS))})")
            async with asyncio.timeout(timeout):
                result = await self._handlers[op](message)
        except ProtocolError as exc:
            return self._error("protocol", str(exc))
        except _Fail as exc:
            return self._error(exc.kind, str(exc))
        except TimeoutError:
            return self._error("unavailable", f"the request was not done within {timeout:g}s")
        except Exception:
            log.exception("a request failed")
            return self._error("internal", "the agent failed on this request (see its log)")
        return {"v": PROTOCOL_VERSION, "ok": True, "result": result}

    @staticmethod
    def _error(kind: str, message: str) -> dict[str, Any]:
        return {"v": PROTOCOL_VERSION, "ok": False, "error": {"type": kind, "message": message}}

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, answer: dict[str, Any]) -> None:
        try:
            frame = encode_frame(answer)
        except ProtocolError:
            frame = encode_frame(Agent._error("internal", "the answer is larger than the message limit"))
        writer.write(frame)
        await writer.drain()

    # --- credentials -------------------------------------------------------------------------------

    def _now(self) -> dt.datetime:
        return self.settings.clock()

    def _hold(self, credential: ClusterCredential, *, source: str) -> None:
        if credential.expired(self._now()):
            raise _Fail("expired", f"the credential for context {credential.context!r} has expired already")
        if credential.context not in self._held and len(self._held) >= _MAX_CONTEXTS:
            raise _Fail("invalid", f"the agent holds {_MAX_CONTEXTS} contexts already")
        old = self._held.pop(credential.context, None)
        if old is not None and old.timer is not None:
            old.timer.cancel()
        held = _Held(credential=credential, source=source)
        if credential.expires_at is not None:
            delay = (credential.expires_at - self._now()).total_seconds()
            held.timer = asyncio.get_running_loop().call_later(max(delay, 0.0), self._expire, credential)
        self._held[credential.context] = held
        self._locked = False
        log.info("holding %r (from %s)", credential, source)

    def _expire(self, credential: ClusterCredential) -> None:
        held = self._held.get(credential.context)
        if held is not None and held.credential is credential:
            log.info("dropping %r: it expired", credential)
            del self._held[credential.context]
            self._spawn(self._stop_session(credential.context))

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _current(self, context: str) -> ClusterCredential:
        held = self._held.get(context)
        if held is None:
            if self._locked:
                raise _Fail("locked", f"the agent is locked: no credential for context {context!r}")
            raise _Fail("not-found", f"the agent holds no credential for context {context!r}")
        if held.credential.expired(self._now()):
            self._expire(held.credential)
            raise _Fail("expired", f"the credential for context {context!r} has expired")
        return held.credential

    async def _drop_all(self) -> None:
        for held in self._held.values():
            if held.timer is not None:
                held.timer.cancel()
        self._held.clear()
        self._pending.clear()
        for context in list(self._sessions):
            await self._stop_session(context)

    async def _load_store(self, key: StoreKey) -> list[str]:
        store = self.settings.store
        if store is None:
            raise _Fail("invalid", "this agent has no credential store (--store)")
        try:
            credentials = await asyncio.to_thread(store.load, key)
        except WrongPassphrase:
            raise _Fail("invalid", "the passphrase does not open the credential store") from None
        except InvalidCiphertext:
            raise _Fail(
                "invalid",
                f"the credential store {store.path} cannot be opened (changed, or sealed with another key)",
            ) from None
        except (ConfigError, KubeshieldError) as exc:
            raise _Fail("invalid", str(exc)) from None
        loaded: list[str] = []
        for credential in credentials:
            if credential.expired(self._now()):
                log.info("not loading %r: it expired", credential)
                continue
            self._hold(credential, source="store")
            loaded.append(credential.context)
        return loaded

    # --- ops ---------------------------------------------------------------------------------------

    async def _op_status(self, message: dict[str, Any]) -> Any:
        from kubeshield.keys.harden import hardening_report

        report = hardening_report()
        store = self.settings.store
        return {
            "protocol": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "uid": self._uid,
            "socket": str(self.settings.socket_path),
            "locked": self._locked,
            "contexts": len(self._held),
            "proxies": len(self._sessions),
            "allowExe": list(self.settings.allow_exe.paths) if self.settings.allow_exe else [],
            "localCA": b64(self._ca.cert_pem),
            "store": None
            if store is None
            else {
                "path": str(store.path),
                "exists": store.exists(),
                "autoUnlock": self.settings.store_key is not None,
            },
            "hardening": {
                "mlocked": report.mlocked,
                "mlockError": report.mlock_error,
                "dumpable": report.dumpable,
                "coreLimit": report.core_limit,
            },
        }

    async def _op_add(self, message: dict[str, Any]) -> Any:
        self._hold(credential_from_wire(message.get("credential")), source="added")
        return None

    async def _op_contexts(self, message: dict[str, Any]) -> Any:
        out = []
        for name in sorted(self._held):
            c = self._held[name].credential
            session = self._sessions.get(name)
            out.append(
                {
                    "context": c.context,
                    "server": c.server,
                    "kind": c.kind,
                    "expires": format_time(c.expires_at),
                    "subject": c.subject,
                    "source": self._held[name].source,
                    "proxy": session.url if session is not None else None,
                }
            )
        return out

    def _context_arg(self, message: dict[str, Any]) -> str:
        context = message.get("context")
        if not isinstance(context, str) or not context:
            raise ProtocolError("context: expected non-empty text")
        return context

    async def _op_remove(self, message: dict[str, Any]) -> Any:
        context = self._context_arg(message)
        held = self._held.pop(context, None)
        if held is None:
            raise _Fail("not-found", f"the agent holds no credential for context {context!r}")
        if held.timer is not None:
            held.timer.cancel()
        await self._stop_session(context)
        return None

    async def _op_lock(self, message: dict[str, Any]) -> Any:
        count = len(self._held)
        await self._drop_all()
        self._locked = True
        log.info("locked: %d credential(s) dropped", count)
        return None

    async def _op_unlock(self, message: dict[str, Any]) -> Any:
        if "passphrase" in message:
            passphrase = unb64(message["passphrase"], field="passphrase")
            if not passphrase:
                raise ProtocolError("passphrase: empty")
            key = StoreKey(passphrase=passphrase)
        elif self.settings.store_key is not None:
            key = self.settings.store_key
        else:
            raise _Fail(
                "invalid",
                "the store is sealed with a passphrase and none was given "
                "(or the agent was started without --config keys:)",
            )
        return {"loaded": await self._load_store(key)}

    async def _op_new_key(self, message: dict[str, Any]) -> Any:
        now = self._now()
        for handle, (_, made) in list(self._pending.items()):
            if now - made > _PENDING_KEY_LIFETIME:
                del self._pending[handle]
        if len(self._pending) >= _MAX_PENDING_KEYS:
            raise _Fail("invalid", f"{_MAX_PENDING_KEYS} key pairs wait for a certificate already")
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubeshield-access")]))
            .sign(key, hashes.SHA256())
        )
        handle = secrets.token_urlsafe(16)
        self._pending[handle] = (key, now)
        return {"handle": handle, "csr": b64(csr.public_bytes(serialization.Encoding.PEM))}

    async def _op_install_certificate(self, message: dict[str, Any]) -> Any:
        handle = message.get("handle")
        if not isinstance(handle, str):
            raise ProtocolError("handle: expected text")
        cert_pem = unb64(message.get("cert"), field="cert")
        clusters = message.get("clusters")
        if not isinstance(clusters, list) or not clusters:
            raise ProtocolError("clusters: expected a non-empty list")
        endpoints = [endpoint_from_wire(c, field=f"clusters[{i}]") for i, c in enumerate(clusters)]
        subject = message.get("subject")
        if subject is not None and not isinstance(subject, str):
            raise ProtocolError("subject: expected text")
        pending = self._pending.get(handle)
        if pending is None:
            raise _Fail("not-found", "no key pair waits under this handle (it expired, or was used)")
        key, _ = pending
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            raise _Fail("invalid", "the certificate is not a PEM certificate") from None
        if _public_der(cert.public_key()) != _public_der(key.public_key()):
            raise _Fail("invalid", "the certificate is not for the key pair this handle names")
        if cert.not_valid_after_utc <= self._now():
            raise _Fail("expired", "the certificate has expired already")
        if subject is None:
            names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            subject = str(names[0].value) if names else None
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        made = []
        for endpoint in endpoints:
            try:
                credential = ClusterCredential(
                    context=endpoint.name,
                    server=endpoint.server,
                    ca_pem=endpoint.ca_pem,
                    tls_server_name=endpoint.tls_server_name,
                    client_cert_pem=cert_pem,
                    client_key_pem=key_pem,
                    expires_at=cert.not_valid_after_utc,
                    subject=subject,
                )
            except ValueError as exc:
                raise _Fail("invalid", str(exc)) from None
            made.append(credential)
        del self._pending[handle]
        for credential in made:
            self._hold(credential, source="relay")
        return {"contexts": [c.context for c in made]}

    async def _op_exec_credential(self, message: dict[str, Any]) -> Any:
        context = self._context_arg(message)
        proxy = message.get("proxy", False)
        if not isinstance(proxy, bool):
            raise ProtocolError("proxy: expected true or false")
        credential = self._current(context)
        if proxy:
            session = self._sessions.get(context)
            if session is None:
                listen = message.get("listen")
                if not isinstance(listen, str):
                    raise _Fail(
                        "not-found",
                        f"no proxy runs for context {context!r}: "
                        f"run `kubeshield access proxy --context {context}`",
                    )
                session = await self._start_session(context, listen)
            return {
                "token": session.bearer.decode("ascii"),
                "expirationTimestamp": format_time(session.expires_at),
            }
        expires = format_time(credential.expires_at)
        if credential.token is not None:
            return {"token": credential.token, "expirationTimestamp": expires}
        assert credential.client_cert_pem is not None and credential.client_key_pem is not None
        return {
            "clientCertificateData": credential.client_cert_pem.decode("ascii"),
            "clientKeyData": credential.client_key_pem.decode("ascii"),
            "expirationTimestamp": expires,
        }

    async def _op_start_proxy(self, message: dict[str, Any]) -> Any:
        context = self._context_arg(message)
        listen = message.get("listen", "127.0.0.1:0")
        if not isinstance(listen, str):
            raise ProtocolError("listen: expected HOST:PORT text")
        self._current(context)
        session = await self._start_session(context, listen)
        return {"url": session.url, "ca": b64(self._ca.cert_pem), "expires": format_time(session.expires_at)}

    async def _op_stop_proxy(self, message: dict[str, Any]) -> Any:
        context = self._context_arg(message)
        if context not in self._sessions:
            raise _Fail("not-found", f"no proxy runs for context {context!r}")
        await self._stop_session(context)
        return None

    # --- proxy sessions ----------------------------------------------------------------------------

    def _proxy_credential(self, context: str) -> ClusterCredential:
        """What the proxy calls for every upstream connection: the credential held now, or a refusal."""
        held = self._held.get(context)
        if held is None or held.credential.expired(self._now()):
            from kubeshield.access.upstream import UpstreamError

            raise UpstreamError(
                401,
                f"the agent holds no valid credential for context {context!r}: "
                "run `kubeshield access unlock` or `kubeshield access login`",
            )
        return held.credential

    async def _start_session(self, context: str, listen: str) -> _Session:
        host, port = _parse_listen(listen)
        existing = self._sessions.get(context)
        if existing is not None:
            if port in (0, existing.port):
                return existing
            raise _Fail(
                "invalid", f"a proxy for context {context!r} runs on {existing.url} already: stop it first"
            )
        try:
            from kubeshield.access.proxy import LocalProxy
        except ImportError:
            raise _Fail(
                "unavailable", "this kubeshield has no local proxy (kubeshield.access.proxy)"
            ) from None
        credential = self._current(context)
        now = self._now()
        expires = now + self.settings.proxy_session
        if credential.expires_at is not None:
            expires = min(expires, credential.expires_at)
        serving = self._ca.issue_serving(now=now)
        expires = min(expires, serving.expires_at)
        bearer = secrets.token_urlsafe(32).encode("ascii")  # 256 random bits
        proxy = LocalProxy(
            credential=lambda: self._proxy_credential(context),
            bearer=bearer,
            serving_cert_pem=serving.cert_pem,
            serving_key_pem=serving.key_pem,
            audit=self._audit,
            redact_secrets=self.settings.redact_secrets,
        )
        try:
            _, bound = await proxy.start(host, port)
        except OSError as exc:
            await proxy.stop()
            raise _Fail("invalid", f"the proxy cannot listen on {listen}: {exc.strerror}") from None
        session = _Session(proxy=proxy, bearer=bearer, url=proxy.url, port=bound, expires_at=expires)
        delay = max((expires - now).total_seconds(), 0.0)
        session.timer = asyncio.get_running_loop().call_later(delay, self._end_session, context, session)
        self._sessions[context] = session
        log.info("proxy for %r on %s until %s", context, session.url, format_time(expires))
        return session

    def _end_session(self, context: str, session: _Session) -> None:
        if self._sessions.get(context) is session:
            log.info("proxy session for %r ended (expired)", context)
            self._spawn(self._stop_session(context))

    async def _stop_session(self, context: str) -> None:
        session = self._sessions.pop(context, None)
        if session is None:
            return
        if session.timer is not None:
            session.timer.cancel()
        try:
            await session.proxy.stop()
        except Exception:
            log.exception("stopping the proxy for %r failed", context)
        log.info("proxy for %r stopped", context)


def run_agent(
    settings: AgentSettings,
    *,
    require_mlock: bool = False,
    harden: bool = True,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Harden this process, bind the socket, serve until a signal. ``ready(socket_path)`` once serving."""
    if harden:
        from kubeshield.keys.harden import harden_process

        harden_process(require_mlock=require_mlock, close_fds=False)

    async def main() -> None:
        agent = Agent(settings)
        sock = agent.bind()
        await agent.serve(sock, ready=None if ready is None else lambda: ready(str(settings.socket_path)))

    asyncio.run(main())
