"""The gRPC servers ``kms_bench.py`` measures, each run in its own process on a unix socket.

Run one by hand (it serves until its standard input closes)::

    .venv/bin/python bench/_kms_servers.py --kind plugin-aio-inline --socket /tmp/x/kms.sock

Kinds (``KINDS``):

* ``plugin-sync``        the production server exactly as built: ``kubeshield.kms.server.KMSServer``.
* ``plugin-sync-tuned``  the same servicer (``v2_handler(KMSv2Servicer(...))``) on a ``grpc.server`` whose
                         thread pool size and channel options the bench chooses (``--workers``,
                         ``--streams``, ``--reuseport``): sync-server tuning without touching server.py.
* ``plugin-aio-inline``  an experimental ``grpc.aio`` servicer around the same ``KMSService``; the
                         (non-blocking, local) backend call runs inline on the event loop.
* ``plugin-aio-thread``  the same, with every service call in ``asyncio.to_thread`` (what a blocking
                         remote backend would need).
* ``floor-sync`` / ``floor-aio``  bare servers that answer fixed, pre-serialized reply bytes and do no
                         work: the best a Python gRPC server of that kind can do here.

The plugin kinds use the real ``LocalKeyBackend`` with a keyring created in a temp dir at start (no
passphrase, never written anywhere else), and a started ``KMSService`` (health and refresh threads).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from concurrent import futures
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import grpc  # noqa: E402

from kubeshield.kms.api.v2 import api_pb2 as pb  # noqa: E402

__all__ = ["KINDS", "SERVICE", "floor_replies", "main"]

SERVICE = "v2.KeyManagementService"
KINDS = (
    "plugin-sync",
    "plugin-sync-tuned",
    "plugin-aio-inline",
    "plugin-aio-thread",
    "floor-sync",
    "floor-aio",
)
_MAX_MESSAGE = 256 * 1024


def floor_replies() -> dict[str, bytes]:
    """Serialized replies of the same shape and size as the plugin's (a 69-byte local-backend blob)."""
    key_id = "local:v1:0000000000000000"
    return {
        "Status": pb.StatusResponse(version="v2", healthz="ok", key_id=key_id).SerializeToString(),
        "Encrypt": pb.EncryptResponse(ciphertext=b"c" * 69, key_id=key_id).SerializeToString(),
        "Decrypt": pb.DecryptResponse(plaintext=b"p" * 32).SerializeToString(),
    }


def _options(*, streams: int | None = None, reuseport: int | None = 0) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ("grpc.max_send_message_length", _MAX_MESSAGE),
    ]
    if reuseport is not None:
        options.append(("grpc.so_reuseport", reuseport))
    if streams is not None:
        options.append(("grpc.max_concurrent_streams", streams))
    return options


def _make_service(tmp: str) -> Any:
    from kubeshield.keys.local import LocalKeyBackend
    from kubeshield.kms.service import KMSService

    service = KMSService(LocalKeyBackend.create(path=Path(tmp) / "keyring"))
    service.start()
    return service


# --- sync -----------------------------------------------------------------------------------------


def _floor_sync_handler() -> grpc.GenericRpcHandler[Any, Any]:
    def make(body: bytes) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        return lambda request, context: body

    handlers = {name: grpc.unary_unary_rpc_method_handler(make(b)) for name, b in floor_replies().items()}
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def _serve_sync(kind: str, socket: str, tmp: str, args: argparse.Namespace) -> None:
    if kind == "plugin-sync":
        from kubeshield.kms.server import KMSServer

        service = _make_service(tmp)
        plugin = KMSServer(service, socket=socket)
        plugin.start()
        sys.stdin.read()  # the parent closes our stdin to stop us
        plugin.stop(None).wait(5)
        service.close()
        return
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers),
        options=_options(streams=args.streams, reuseport=args.reuseport),
    )
    service = None
    if kind == "floor-sync":
        server.add_generic_rpc_handlers((_floor_sync_handler(),))
    else:
        from kubeshield.kms.server import KMSv2Servicer, v2_handler

        service = _make_service(tmp)
        server.add_generic_rpc_handlers((v2_handler(KMSv2Servicer(service)),))
    server.add_insecure_port("unix:" + socket)
    server.start()
    sys.stdin.read()
    server.stop(None).wait(5)
    if service is not None:
        service.close()


# --- aio ------------------------------------------------------------------------------------------


class _Malformed:
    """A request whose bytes are not a valid protobuf message (answered INVALID_ARGUMENT)."""


def _parse(message_type: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except Exception:
            return _Malformed()

    return parse


def aio_plugin_handler(service: Any, *, offload: bool) -> grpc.GenericRpcHandler[Any, Any]:
    """The KMS v2 servicer on grpc.aio: same translation and error mapping as the sync servicer.

    ``offload=False`` calls the service on the event loop (fine for a backend that never blocks, like
    the local keyring: one AES-GCM call); ``offload=True`` runs it in ``asyncio.to_thread``.
    """
    from kubeshield.errors import InvalidRequest
    from kubeshield.kms.server import map_error

    def status(_: Any) -> Any:
        r = service.status()
        return pb.StatusResponse(version=r.version, healthz=r.healthz, key_id=r.key_id)

    def encrypt(req: Any) -> Any:
        r = service.encrypt(req.plaintext, uid=req.uid)
        return pb.EncryptResponse(ciphertext=r.ciphertext, key_id=r.key_id, annotations=dict(r.annotations))

    def decrypt(req: Any) -> Any:
        plain = service.decrypt(
            req.ciphertext, key_id=req.key_id, annotations=dict(req.annotations), uid=req.uid
        )
        return pb.DecryptResponse(plaintext=plain)

    def wrap(fn: Callable[[Any], Any]) -> Callable[[Any, Any], Awaitable[Any]]:
        async def handler(request: Any, context: Any) -> Any:
            try:
                if isinstance(request, _Malformed):
                    raise InvalidRequest("malformed request: not a valid protobuf message")
                if offload:
                    return await asyncio.to_thread(fn, request)
                return fn(request)
            except Exception as exc:
                code, details = map_error(exc)
                await context.abort(code, details)

        return handler

    methods: dict[str, tuple[Callable[[Any], Any], Any, Any]] = {
        "Status": (status, pb.StatusRequest, pb.StatusResponse),
        "Encrypt": (encrypt, pb.EncryptRequest, pb.EncryptResponse),
        "Decrypt": (decrypt, pb.DecryptRequest, pb.DecryptResponse),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            wrap(fn), request_deserializer=_parse(req), response_serializer=resp.SerializeToString
        )
        for name, (fn, req, resp) in methods.items()
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def _floor_aio_handler() -> grpc.GenericRpcHandler[Any, Any]:
    def make(body: bytes) -> Callable[[bytes, Any], Awaitable[bytes]]:
        async def handler(request: bytes, context: Any) -> bytes:
            return body

        return handler

    handlers = {name: grpc.unary_unary_rpc_method_handler(make(b)) for name, b in floor_replies().items()}
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


async def _serve_aio(kind: str, socket: str, tmp: str, args: argparse.Namespace) -> None:
    server = grpc.aio.server(options=_options(streams=args.streams, reuseport=args.reuseport))
    service = None
    if kind == "floor-aio":
        server.add_generic_rpc_handlers((_floor_aio_handler(),))
    else:
        service = _make_service(tmp)
        server.add_generic_rpc_handlers((aio_plugin_handler(service, offload=kind == "plugin-aio-thread"),))
    server.add_insecure_port("unix:" + socket)
    await server.start()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(None)
    if service is not None:
        service.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--workers", type=int, default=32, help="sync thread pool size")
    parser.add_argument("--streams", type=int, default=None, help="grpc.max_concurrent_streams")
    parser.add_argument("--reuseport", type=int, default=0, help="grpc.so_reuseport (-1: leave unset)")
    args = parser.parse_args(argv)
    if args.reuseport < 0:
        args.reuseport = None
    tmp = tempfile.mkdtemp(prefix="kms-bench-keys-")
    os.chmod(tmp, 0o700)
    try:
        if args.kind in ("plugin-sync", "plugin-sync-tuned", "floor-sync"):
            _serve_sync(args.kind, args.socket, tmp, args)
        else:
            asyncio.run(_serve_aio(args.kind, args.socket, tmp, args))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
