"""Serving the relay: KMS v2 (and v1) for the apiserver on unix sockets with one grpc.aio server.

One event loop, in a thread of its own, carries both sides of the relay: the grpc.aio servers on the
sockets, the :class:`~kubeshield.kms.relay.Relay` coroutines and its grpc.aio upstream channels, and the
relay's replica checker task. The calling thread keeps only the lifecycle (``start``/``stop``), so the
ordinary two-stage shutdown (:func:`kubeshield.kms.shutdown.serve_until_signalled`) drives it unchanged.

Every method is registered with no (de)serializer: handlers get the request bytes and return the reply
bytes. Status, Encrypt, v1 Version and v1 Encrypt are parsed here (a message that does not parse is
INVALID_ARGUMENT "malformed request", as the plugin answers); Decrypt (v2 and v1) is handed to the relay
as bytes, which checks it once and forwards those bytes. Errors map to status codes exactly as the
plugin's servicers do (:func:`kubeshield.kms.server.map_error`: INTERNAL with a fixed text, traceback
logged locally), and every call is counted in ``kubeshield_kms_operations`` under ``v2.<Op>`` /
``v1beta1.<Op>``.

Sockets are handled as :class:`~kubeshield.kms.server.KMSServer` handles them: mode 0600 (0660 and group
``socket_group`` when given), a stale socket replaced, a live one or a non-socket refused, and on stop
only our own socket file removed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from kubeshield import __version__
from kubeshield.errors import ConfigError, InvalidRequest
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
from kubeshield.kms.api.v2 import api_pb2 as v2_pb2
from kubeshield.kms.logging import fields, get_logger
from kubeshield.kms.metrics import KMSMetrics
from kubeshield.kms.relay import Relay
from kubeshield.kms.server import MAX_MESSAGE_BYTES, RUNTIME_NAME, map_error

__all__ = ["RelayServer"]

_log = get_logger("kms.server")
_Handler = Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]


def _parse(message_type: Any, request: bytes) -> Any:
    try:
        return message_type.FromString(request)
    except Exception:  # google.protobuf.message.DecodeError and friends
        raise InvalidRequest("malformed request: not a valid protobuf message") from None


class _Methods:
    """The relay's KMS methods as raw-bytes aio handlers, with error mapping, logging and metrics."""

    def __init__(self, relay: Relay, *, metrics: KMSMetrics | None) -> None:
        self._relay = relay
        self._metrics = metrics

    def _wrap(
        self,
        api: str,
        operation: str,
        call: Callable[[bytes], Awaitable[bytes]] | None = None,
        *,
        with_context: Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]] | None = None,
    ) -> _Handler:
        name = f"{api}.{operation}"

        async def handle(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            start = time.perf_counter()
            try:
                if with_context is not None:
                    reply = await with_context(request, context)
                else:
                    assert call is not None
                    reply = await call(request)
            except Exception as exc:
                code, details = map_error(exc)
                if code is grpc.StatusCode.INTERNAL:
                    _log.error("internal error", exc_info=True, extra=fields(operation=name))
                else:
                    _log.info(
                        "request failed",
                        extra=fields(operation=name, code=code.name, error=type(exc).__name__),
                    )
                self._observe(name, code.name, start)
            else:
                self._observe(name, "OK", start)
                return reply
            await context.abort(code, details)
            raise AssertionError("unreachable: abort raises")

        return handle

    def _observe(self, name: str, code: str, start: float) -> None:
        if self._metrics is not None:
            self._metrics.observe_operation(name, code, time.perf_counter() - start)

    async def _status(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        _parse(v2_pb2.StatusRequest, request)
        reply = await self._relay.status()
        if reply.metadata:  # what the replica said about its keyring, so `kms status --expect-*` works here
            context.set_trailing_metadata(reply.metadata)
        response = v2_pb2.StatusResponse(version=reply.version, healthz=reply.healthz, key_id=reply.key_id)
        data: bytes = response.SerializeToString()
        return data

    async def _encrypt(self, request: bytes) -> bytes:
        message = _parse(v2_pb2.EncryptRequest, request)
        reply = await self._relay.encrypt(message.plaintext, uid=message.uid)
        response = v2_pb2.EncryptResponse(
            ciphertext=reply.ciphertext, key_id=reply.key_id, annotations=dict(reply.annotations)
        )
        data: bytes = response.SerializeToString()
        return data

    async def _v1_version(self, request: bytes) -> bytes:
        _parse(v1_pb2.VersionRequest, request)
        response = v1_pb2.VersionResponse(
            version="v1beta1", runtime_name=RUNTIME_NAME, runtime_version=__version__
        )
        data: bytes = response.SerializeToString()
        return data

    async def _v1_encrypt(self, request: bytes) -> bytes:
        message = _parse(v1_pb2.EncryptRequest, request)
        data: bytes = v1_pb2.EncryptResponse(
            cipher=await self._relay.v1_encrypt(message.plain)
        ).SerializeToString()
        return data

    def v2(self) -> grpc.GenericRpcHandler[Any, Any]:
        """``/v2.KeyManagementService/{Status,Encrypt,Decrypt}`` (Decrypt as bytes)."""
        methods = {"Encrypt": self._encrypt, "Decrypt": self._relay.decrypt}
        handlers = {op: self._wrap("v2", op, f) for op, f in methods.items()}
        handlers["Status"] = self._wrap("v2", "Status", with_context=self._status)
        return _generic("v2.KeyManagementService", handlers)

    def v1(self) -> grpc.GenericRpcHandler[Any, Any]:
        """``/v1beta1.KeyManagementService/{Version,Encrypt,Decrypt}`` (Decrypt as bytes)."""
        methods = {
            "Version": self._v1_version,
            "Encrypt": self._v1_encrypt,
            "Decrypt": self._relay.v1_decrypt,
        }
        return _generic(
            "v1beta1.KeyManagementService", {op: self._wrap("v1beta1", op, f) for op, f in methods.items()}
        )


def _generic(service: str, handlers: dict[str, _Handler]) -> grpc.GenericRpcHandler[Any, Any]:
    return grpc.method_handlers_generic_handler(
        service, {name: grpc.unary_unary_rpc_method_handler(h) for name, h in handlers.items()}
    )


class RelayServer:
    """Serves ``relay`` on ``socket`` (KMS v2) and optionally ``v1_socket`` (KMS v1) with grpc.aio.

    ``start()`` starts the event loop thread, runs ``relay.start()`` there (one replica check, then the
    checker task) and binds the sockets; it raises what went wrong (e.g. a ConfigError about a socket)
    after cleaning up. ``stop(grace)`` is the two-stage stop of the other servers: the first call stops
    accepting RPCs and lets in-flight ones finish within ``grace`` seconds (None: cancel them now); a
    later ``stop(None)`` cancels what still runs. Once stopped, the relay is closed (checker and upstream
    channels) and our socket files are removed. The server owns the relay's lifecycle.
    """

    def __init__(
        self,
        relay: Relay,
        *,
        socket: str,
        v1_socket: str | None = None,
        socket_group: str | None = None,
        metrics: KMSMetrics | None = None,
    ) -> None:
        self.relay = relay
        self.metrics = metrics
        self.socket_path = parse_endpoint(socket)
        self.v1_socket_path = parse_endpoint(v1_socket) if v1_socket else None
        if self.v1_socket_path is not None and self.v1_socket_path == self.socket_path:
            raise ConfigError("the v1 socket must differ from the v2 socket")
        for what, path in (("socket", self.socket_path), ("v1 socket", self.v1_socket_path)):
            if path is not None:
                refuse_abstract(path, what=what)  # before anything is bound
        self._gid = resolve_group(socket_group) if socket_group else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[grpc.aio.Server] = []
        self._listeners: list[SocketListener] = []
        self._closing = False
        self._stopped = threading.Event()
        self.serving = False

    def start(self) -> None:
        """Start the loop thread, the relay and the servers (see the class docstring)."""
        if self._loop is not None:
            raise RuntimeError("RelayServer.start() may be called once")
        loop = asyncio.new_event_loop()
        self._loop = loop
        threading.Thread(target=self._run_loop, args=(loop,), name="kubeshield-relay", daemon=True).start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), loop).result()
        except BaseException:
            self.stop(None).wait(10)
            raise
        self.serving = True

    def _run_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
            self._stopped.set()

    async def _start(self) -> None:
        await self.relay.start()
        methods = _Methods(self.relay, metrics=self.metrics)
        plan = [(self.socket_path, methods.v2())]
        if self.v1_socket_path is not None:
            plan.append((self.v1_socket_path, methods.v1()))
        for path, handler in plan:
            prepare_socket_path(path)
            server = grpc.aio.server(
                options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.so_reuseport", 0),
                ]
            )
            server.add_generic_rpc_handlers((handler,))
            listener = SocketListener(path)
            with private_umask(0o177):
                try:
                    server.add_insecure_port(grpc_address(path))
                except RuntimeError as exc:
                    raise ConfigError(f"cannot listen on socket {path!r}: {exc}") from None
                self._servers.append(server)
                await server.start()
            self._listeners.append(listener)
            listener.secure(self._gid)
            _log.info("serving", extra=fields(socket=path))

    def stop(self, grace: float | None) -> threading.Event:
        """Stop serving (two stages, see the class docstring); the event is set once fully stopped."""
        self.serving = False
        loop = self._loop
        if loop is None:
            self._stopped.set()
        elif not self._stopped.is_set():
            try:
                asyncio.run_coroutine_threadsafe(self._stop(grace), loop)
            except RuntimeError:  # the loop closed in between: already stopped
                pass
        return self._stopped

    async def _stop(self, grace: float | None) -> None:
        """Stop the servers; the first call to get past that closes the relay and ends the loop."""
        try:
            await asyncio.gather(*(server.stop(grace) for server in self._servers))
        finally:
            if not self._closing:
                self._closing = True
                try:
                    for listener in self._listeners:
                        listener.remove()
                    await self.relay.close()
                finally:
                    asyncio.get_running_loop().stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped."""
        return self._stopped.wait(timeout)
