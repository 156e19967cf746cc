"""Thin gRPC servicers for KMS v2 and v1beta1 over unix sockets, and the server that runs them.

The servicers only translate protobuf <-> :class:`~kubeshield.kms.service.KMSService` calls and map our
errors to gRPC status codes:

=========================================  ===================  ===============================
error                                      status code          details sent to the client
=========================================  ===================  ===============================
InvalidRequest                             INVALID_ARGUMENT     its (safe) message
InvalidCiphertext                          INVALID_ARGUMENT     ``invalid ciphertext`` (fixed)
KeyNotFound                                NOT_FOUND            its message
BackendUnavailable                         UNAVAILABLE          its message
BackendTimeout                             DEADLINE_EXCEEDED    its message
BackendAuthError, PolicyDenied             PERMISSION_DENIED    its message
anything else (incl. ContractViolation)    INTERNAL             ``internal error`` (fixed); the
                                                                traceback is logged locally only
=========================================  ===================  ===============================

A request whose bytes are not a valid protobuf message is answered INVALID_ARGUMENT ("malformed
request") by our own deserializer wrapper instead of grpc's generic INTERNAL. Messages of kubeshield
errors never hold secrets (errors.py contract). The server is grpc's sync server
with a thread pool: backend calls may block (remote key services), and ``bench/kms_bench.py`` measured it
against grpc.aio for this workload (see the numbers in the bench output and the module ``SERVER_NOTE``).

Status always finds a free worker. Each gRPC server runs its handlers on a pool of ``max_workers``
threads, and a key backend call may block for as long as the backend's own bound (a slow HSM, a hung
network). So at most ``max_workers - status_reserve`` Encrypt/Decrypt calls may be inside the key
backend at once (:class:`CallLimit`, one per server); a call beyond that is answered UNAVAILABLE at
once instead of waiting for a worker, and the reserved workers keep answering Status (which reads
cached state only, :mod:`kubeshield.kms.service`) however slow the backend is.
``bench/status_bench.py`` measures Status p99 under Decrypt load with a slow backend.

Service mode (``listen="tcp://HOST:PORT"`` with ``tls``): the same v2 and v1 services are also served on
a TCP port with TLS that *requires* a client certificate signed by the client CA
(:class:`~kubeshield.kms.tls.ReloadingServerCredentials`, reloaded without restart). When an
:class:`~kubeshield.kms.tls.AllowList` is configured, every RPC whose peer identities are not on it is
answered PERMISSION_DENIED before the request reaches the KMS service. There is never a plaintext TCP
listener.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

import grpc

from kubeshield import __version__
from kubeshield.errors import (
    BackendAuthError,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    InvalidCiphertext,
    InvalidRequest,
    KeyNotFound,
    PolicyDenied,
)
from kubeshield.keys.identity import KeyringIdentity
from kubeshield.kms._socket import (
    SocketListener,
    grpc_address,
    parse_endpoint,
    prepare_socket_path,
    private_umask,
    refuse_abstract,
    resolve_group,
)
from kubeshield.kms.api.v1beta1 import api_pb2 as v1_pb2
from kubeshield.kms.api.v1beta1 import api_pb2_grpc as v1_grpc
from kubeshield.kms.api.v2 import api_pb2 as v2_pb2
from kubeshield.kms.api.v2 import api_pb2_grpc as v2_grpc
from kubeshield.kms.logging import fields, get_logger
from kubeshield.kms.metrics import KMSMetrics
from kubeshield.kms.service import EncryptReply, StatusReply
from kubeshield.kms.shutdown import DEFAULT_GRACE
from kubeshield.kms.tls import AllowList, ReloadingServerCredentials, peer_identities

if TYPE_CHECKING:
    from kubeshield.kms.peer_attest import PeerAttestationGate

__all__ = [
    "DEFAULT_GRACE",
    "KMSAPI",
    "MAX_MESSAGE_BYTES",
    "RUNTIME_NAME",
    "CallLimit",
    "KMSServer",
    "KMSv1Servicer",
    "KMSv2Servicer",
    "map_error",
    "parse_listen",
    "v1_handler",
    "v2_handler",
]

RUNTIME_NAME = "kubeshield"
#: Requests are tiny (a 32-byte seed, a <=1 KiB ciphertext, <=32 KiB annotations, a <=64 KiB v1 blob).
MAX_MESSAGE_BYTES = 256 * 1024

_log = get_logger("kms.server")
_T = TypeVar("_T")


def map_error(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and the details text to send for ``exc`` (see the module table)."""
    if isinstance(exc, InvalidCiphertext):
        return grpc.StatusCode.INVALID_ARGUMENT, "invalid ciphertext"
    if isinstance(exc, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, KeyNotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc) or "key not found"
    if isinstance(exc, BackendUnavailable):
        return grpc.StatusCode.UNAVAILABLE, str(exc) or "key backend unavailable"
    if isinstance(exc, BackendTimeout):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc) or "key backend timed out"
    if isinstance(exc, (BackendAuthError, PolicyDenied)):
        return grpc.StatusCode.PERMISSION_DENIED, str(exc) or "permission denied"
    return grpc.StatusCode.INTERNAL, "internal error"


class CallLimit:
    """How many calls may be inside the key backend at once; one more is refused, never queued."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the call limit must be at least 1")
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def run(self, call: Callable[[], _T]) -> _T:
        """Run ``call`` in a slot; raise BackendUnavailable at once when every slot is taken."""
        if not self._slots.acquire(blocking=False):
            raise BackendUnavailable(
                f"the plugin is busy: {self.limit} key backend calls are in progress; retry"
            )
        try:
            return call()
        finally:
            self._slots.release()


class KMSAPI(Protocol):
    """What the servicers call: :class:`~kubeshield.kms.service.KMSService` (the relay serves itself)."""

    def status(self) -> StatusReply: ...

    def encrypt(self, plaintext: bytes, *, uid: str) -> EncryptReply: ...

    def decrypt(
        self, ciphertext: bytes, *, key_id: str, annotations: Mapping[str, bytes], uid: str
    ) -> bytes: ...

    def v1_encrypt(self, plain: bytes) -> bytes: ...

    def v1_decrypt(self, cipher: bytes) -> bytes: ...


def parse_listen(listen: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` (HOST may be ``[v6]``; PORT 0 picks a free one) -> (host, port)."""
    parts = urlsplit(listen)
    if parts.scheme != "tcp" or not parts.netloc or parts.path not in ("", "/"):
        raise ConfigError(f"listen address {listen!r} must be tcp://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"listen address {listen!r} has an invalid port") from None
    if port is None or parts.hostname is None:
        raise ConfigError(f"listen address {listen!r} must name a host and a port")
    return parts.hostname, port


class _Malformed:
    """Stands in for a request whose bytes are not a valid protobuf message."""


_MALFORMED = _Malformed()


def _safe_deserializer(message_type: Any) -> Callable[[bytes], Any]:
    """Parse a request; malformed bytes become ``_MALFORMED`` so we can answer INVALID_ARGUMENT."""

    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except Exception:  # google.protobuf.message.DecodeError and friends
            return _MALFORMED

    return parse


def _generic_handler(
    service: str, servicer: Any, methods: dict[str, tuple[Any, Any]]
) -> grpc.GenericRpcHandler[Any, Any]:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=_safe_deserializer(request_type),
            response_serializer=response_type.SerializeToString,
        )
        for name, (request_type, response_type) in methods.items()
    }
    return grpc.method_handlers_generic_handler(service, handlers)


def v2_handler(servicer: KMSv2Servicer) -> grpc.GenericRpcHandler[Any, Any]:
    """The ``v2.KeyManagementService`` handler (malformed requests answered INVALID_ARGUMENT)."""
    return _generic_handler(
        "v2.KeyManagementService",
        servicer,
        {
            "Status": (v2_pb2.StatusRequest, v2_pb2.StatusResponse),
            "Encrypt": (v2_pb2.EncryptRequest, v2_pb2.EncryptResponse),
            "Decrypt": (v2_pb2.DecryptRequest, v2_pb2.DecryptResponse),
        },
    )


def v1_handler(servicer: KMSv1Servicer) -> grpc.GenericRpcHandler[Any, Any]:
    """The ``v1beta1.KeyManagementService`` handler (malformed requests answered INVALID_ARGUMENT)."""
    return _generic_handler(
        "v1beta1.KeyManagementService",
        servicer,
        {
            "Version": (v1_pb2.VersionRequest, v1_pb2.VersionResponse),
            "Encrypt": (v1_pb2.EncryptRequest, v1_pb2.EncryptResponse),
            "Decrypt": (v1_pb2.DecryptRequest, v1_pb2.DecryptResponse),
        },
    )


class _Servicer:
    def __init__(
        self,
        service: KMSAPI,
        *,
        metrics: KMSMetrics | None,
        api: str,
        allow: AllowList | None = None,
        limit: CallLimit | None = None,
    ) -> None:
        self._service = service
        self._metrics = metrics
        self._api = api
        self._allow = allow
        self._limit = limit

    def _backend_call(self, call: Callable[[], _T]) -> Callable[[], _T]:
        """``call`` run within the server's :class:`CallLimit` (Encrypt and Decrypt reach the backend)."""
        limit = self._limit
        if limit is None:
            return call
        return lambda: limit.run(call)

    def _admit(self, context: grpc.ServicerContext, operation: str, start: float) -> None:
        """TLS peers must present a certificate whose identity is allowed (before any KMS call)."""
        if self._allow is None:
            return
        if not self._allow.permits(peer_identities(context.auth_context())):
            _log.warning("client refused: identity not allowed", extra=fields(operation=operation))
            self._observe(operation, grpc.StatusCode.PERMISSION_DENIED.name, start)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "client certificate identity is not allowed")

    def _run(
        self, context: grpc.ServicerContext, operation: str, call: Callable[[], _T], request: Any = None
    ) -> _T:
        start = time.perf_counter()
        self._admit(context, operation, start)
        try:
            if request is _MALFORMED:
                raise InvalidRequest("malformed request: not a valid protobuf message")
            result = call()
        except Exception as exc:
            code, details = map_error(exc)
            name = f"{self._api}.{operation}"
            if code is grpc.StatusCode.INTERNAL:
                _log.error("internal error", exc_info=True, extra=fields(operation=name))
            else:
                _log.info(
                    "request failed", extra=fields(operation=name, code=code.name, error=type(exc).__name__)
                )
            self._observe(operation, code.name, start)
            context.abort(code, details)
            raise  # unreachable: abort raises
        self._observe(operation, "OK", start)
        return result

    def _observe(self, operation: str, code: str, start: float) -> None:
        if self._metrics is not None:
            self._metrics.observe_operation(f"{self._api}.{operation}", code, time.perf_counter() - start)


class KMSv2Servicer(_Servicer, v2_grpc.KeyManagementServiceServicer):  # type: ignore[misc]
    """``/v2.KeyManagementService/{Status,Encrypt,Decrypt}``.

    ``keyring`` (cheap, no I/O) names the keys served: every Status reply, an error included, carries
    it as trailing metadata (``kubeshield-keyring-id``, ``kubeshield-keyring-versions``), which
    kube-apiserver ignores and ``kubeshield kms status`` prints (kubeshield.keys.identity).
    """

    def __init__(
        self,
        service: KMSAPI,
        *,
        metrics: KMSMetrics | None = None,
        allow: AllowList | None = None,
        limit: CallLimit | None = None,
        keyring: Callable[[], KeyringIdentity] | None = None,
    ) -> None:
        super().__init__(service, metrics=metrics, api="v2", allow=allow, limit=limit)
        self._keyring = keyring

    def Status(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 - gRPC method name
        def call() -> Any:
            self._send_keyring(context)  # after the caller was admitted, before Status can fail
            reply = self._service.status()
            return v2_pb2.StatusResponse(version=reply.version, healthz=reply.healthz, key_id=reply.key_id)

        return self._run(context, "Status", call, request)

    def _send_keyring(self, context: grpc.ServicerContext) -> None:
        if self._keyring is None:
            return
        try:
            context.set_trailing_metadata(self._keyring().metadata())
        except Exception:  # a closed backend has no identity; Status itself reports why
            _log.debug("no keyring identity for Status", exc_info=True)

    def Encrypt(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def call() -> Any:
            reply = self._service.encrypt(request.plaintext, uid=request.uid)
            return v2_pb2.EncryptResponse(
                ciphertext=reply.ciphertext, key_id=reply.key_id, annotations=dict(reply.annotations)
            )

        return self._run(context, "Encrypt", self._backend_call(call), request)

    def Decrypt(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def call() -> Any:
            plaintext = self._service.decrypt(
                request.ciphertext,
                key_id=request.key_id,
                annotations=dict(request.annotations),
                uid=request.uid,
            )
            return v2_pb2.DecryptResponse(plaintext=plaintext)

        return self._run(context, "Decrypt", self._backend_call(call), request)


class KMSv1Servicer(_Servicer, v1_grpc.KeyManagementServiceServicer):  # type: ignore[misc]
    """``/v1beta1.KeyManagementService/{Version,Encrypt,Decrypt}`` (deprecated KMS v1)."""

    def __init__(
        self,
        service: KMSAPI,
        *,
        metrics: KMSMetrics | None = None,
        allow: AllowList | None = None,
        limit: CallLimit | None = None,
    ) -> None:
        super().__init__(service, metrics=metrics, api="v1beta1", allow=allow, limit=limit)

    def Version(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def call() -> Any:
            return v1_pb2.VersionResponse(
                version="v1beta1", runtime_name=RUNTIME_NAME, runtime_version=__version__
            )

        return self._run(context, "Version", call, request)

    def Encrypt(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._run(
            context,
            "Encrypt",
            self._backend_call(
                lambda: v1_pb2.EncryptResponse(cipher=self._service.v1_encrypt(request.plain))
            ),
            request,
        )

    def Decrypt(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._run(
            context,
            "Decrypt",
            self._backend_call(
                lambda: v1_pb2.DecryptResponse(plain=self._service.v1_decrypt(request.cipher))
            ),
            request,
        )


class KMSServer:
    """The gRPC server serving KMS v2 on ``socket`` and, optionally, KMS v1 on ``v1_socket``.

    Sockets are mode 0600 (0660 and group ``socket_group`` when given). A stale socket is replaced; a
    live one, a regular file, or a missing directory is refused with a ConfigError that says so.
    """

    def __init__(
        self,
        service: KMSAPI,
        *,
        socket: str | None = None,
        v1_socket: str | None = None,
        socket_group: str | None = None,
        listen: str | None = None,
        tls: ReloadingServerCredentials | None = None,
        allow: AllowList | None = None,
        max_workers: int = 32,
        status_reserve: int = 8,
        metrics: KMSMetrics | None = None,
        peer_attestation: PeerAttestationGate | None = None,
        keyring: Callable[[], KeyringIdentity] | None = None,
    ) -> None:
        if not 0 <= status_reserve < max_workers:
            raise ValueError("status_reserve must be >= 0 and below max_workers (0: no reserve)")
        self.service = service
        self._peer_attestation = peer_attestation  # kubeshield.kms.peer_attest: guards TCP Decrypt
        self.metrics = metrics
        self.keyring = keyring
        self.socket_path = parse_endpoint(socket) if socket else None
        self.v1_socket_path = parse_endpoint(v1_socket) if v1_socket else None
        if self.v1_socket_path is not None and self.v1_socket_path == self.socket_path:
            raise ConfigError("the v1 socket must differ from the v2 socket")
        for what, path in (("socket", self.socket_path), ("v1 socket", self.v1_socket_path)):
            if path is not None:
                refuse_abstract(path, what=what)  # before anything is bound
        self.listen = parse_listen(listen) if listen else None
        if self.listen is not None and tls is None:
            raise ConfigError("--listen requires TLS: give --tls-cert, --tls-key and --client-ca")
        if tls is not None and self.listen is None:
            raise ConfigError("TLS material was given but no --listen address")
        if self.socket_path is None and self.listen is None:
            raise ConfigError("nothing to serve: give a socket or a --listen address")
        self._tls = tls
        self._allow = allow if allow is not None else AllowList()
        self.listen_port: int | None = None
        self._gid = resolve_group(socket_group) if socket_group else None
        self._max_workers = max_workers
        self._call_limit = max_workers - status_reserve
        self._servers: list[grpc.Server] = []
        self._listeners: list[SocketListener] = []
        self._stopped = threading.Event()
        self.serving = False

    def _limit(self) -> CallLimit:
        """A fresh :class:`CallLimit` for one server (each server has its own worker pool)."""
        return CallLimit(self._call_limit)

    def _new_server(self, interceptors: Sequence[grpc.ServerInterceptor[Any, Any]] = ()) -> grpc.Server:
        return grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="kubeshield-grpc"),
            interceptors=list(interceptors),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )

    def start(self) -> None:
        """Bind the sockets and start serving (the service's background threads must be started apart)."""
        plan: list[tuple[str, Callable[[grpc.Server], None]]] = []
        if self.socket_path is not None:
            plan.append(
                (
                    self.socket_path,
                    lambda s: s.add_generic_rpc_handlers(
                        (
                            v2_handler(
                                KMSv2Servicer(
                                    self.service,
                                    metrics=self.metrics,
                                    limit=self._limit(),
                                    keyring=self.keyring,
                                )
                            ),
                        )
                    ),
                )
            )
        if self.v1_socket_path is not None:
            plan.append(
                (
                    self.v1_socket_path,
                    lambda s: s.add_generic_rpc_handlers(
                        (v1_handler(KMSv1Servicer(self.service, metrics=self.metrics, limit=self._limit())),)
                    ),
                )
            )
        try:
            for path, register in plan:
                prepare_socket_path(path)
                server = self._new_server()
                register(server)
                listener = SocketListener(path)
                with private_umask(0o177):
                    try:
                        server.add_insecure_port(grpc_address(path))
                    except RuntimeError as exc:
                        raise ConfigError(f"cannot listen on socket {path!r}: {exc}") from None
                    server.start()
                self._servers.append(server)
                self._listeners.append(listener)
                listener.secure(self._gid)
                _log.info("serving", extra=fields(socket=path))
            if self.listen is not None:
                self._start_tcp(self.listen)
        except BaseException:
            self.stop(None).wait(5)
            raise
        self.serving = True

    def _start_tcp(self, listen: tuple[str, int]) -> None:
        """Serve v2 and v1 on TCP with mTLS (and the allow-list checked on every RPC)."""
        assert self._tls is not None  # checked in __init__
        host, port = listen
        gate = self._peer_attestation
        server = self._new_server(() if gate is None else (gate.interceptor(),))
        if gate is not None:  # peer attestation (kubeshield.kms.peer_attest): the exchange service
            server.add_generic_rpc_handlers((gate.handler(),))
        limit = self._limit()  # one pool, one limit for both APIs
        server.add_generic_rpc_handlers(
            (
                v2_handler(
                    KMSv2Servicer(
                        self.service,
                        metrics=self.metrics,
                        allow=self._allow,
                        limit=limit,
                        keyring=self.keyring,
                    )
                ),
                v1_handler(KMSv1Servicer(self.service, metrics=self.metrics, allow=self._allow, limit=limit)),
            )
        )
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = server.add_secure_port(address, self._tls.credentials)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on tcp://{address}: {exc}") from None
        if bound == 0:
            raise ConfigError(f"cannot listen on tcp://{address} (address in use or not local)")
        server.start()
        self._servers.append(server)
        self.listen_port = bound
        _log.info("serving mTLS", extra=fields(address=host, port=bound, allow_list=len(self._allow.entries)))

    def stop(self, grace: float | None = DEFAULT_GRACE) -> threading.Event:
        """Stop accepting RPCs; in-flight ones get ``grace`` seconds (None: cancel them now).

        Returns an event set once every server has stopped and our socket files are removed.
        """
        self.serving = False
        events = [server.stop(grace) for server in self._servers]
        done = threading.Event()

        def finish() -> None:
            for event in events:
                event.wait()
            for listener in self._listeners:
                listener.remove()
            self._stopped.set()
            done.set()

        threading.Thread(target=finish, name="kubeshield-grpc-stop", daemon=True).start()
        return done

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped."""
        return self._stopped.wait(timeout)
