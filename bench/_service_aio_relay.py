"""A what-if for ``service_bench.py``: the relay's Decrypt path on grpc.aio, NOT the production relay.

Run by the bench as its own process (it serves until SIGTERM or SIGINT)::

    .venv/bin/python bench/_service_aio_relay.py --socket S --upstream 127.0.0.1:P,... \\
        --ca CA --cert C --key K

It answers ``/v2.KeyManagementService/{Status,Encrypt,Decrypt}`` on a unix socket with one grpc.aio
server and forwards every call to the replicas over one ``grpc.aio`` mTLS channel per replica, round
robin, trying the next replica after a failure (each try bounded by 1 s). Requests are parsed (a
malformed one is refused, as the production servicer does) and forwarded as the received bytes; replies
are parsed before they are returned. What it leaves out of ``kubeshield.kms.relay.Relay``: health
checks, the agreed-key_id rule for Encrypt and Status, metrics and logging. It shows how fast the same
hop can be when one event loop carries both sides of the relay instead of a thread per call blocking on
a sync stub; it is a measurement aid, never a replacement to deploy.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import grpc  # noqa: E402

from kubeshield.kms.api.v2 import api_pb2 as pb  # noqa: E402

__all__ = ["main"]

SERVICE = "v2.KeyManagementService"
_MESSAGES: dict[str, tuple[Any, Any]] = {
    "Status": (pb.StatusRequest, pb.StatusResponse),
    "Encrypt": (pb.EncryptRequest, pb.EncryptResponse),
    "Decrypt": (pb.DecryptRequest, pb.DecryptResponse),
}


async def _serve(args: argparse.Namespace) -> None:
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(args.ca).read_bytes(),
        private_key=Path(args.key).read_bytes(),
        certificate_chain=Path(args.cert).read_bytes(),
    )
    channels = [
        grpc.aio.secure_channel(t, creds, options=[("grpc.ssl_target_name_override", "localhost")])
        for t in args.upstream.split(",")
    ]
    order = itertools.count()

    def make(op: str) -> Callable[[bytes, Any], Awaitable[bytes]]:
        request_type, reply_type = _MESSAGES[op]
        calls = [
            c.unary_unary(f"/{SERVICE}/{op}", request_serializer=None, response_deserializer=None)
            for c in channels
        ]

        async def handler(request: bytes, context: Any) -> bytes:
            try:
                request_type.FromString(request)
            except Exception:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed request")
            start = next(order)
            for i in range(len(calls)):
                try:
                    reply: bytes = await calls[(start + i) % len(calls)](request, timeout=1.0)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() is grpc.StatusCode.INVALID_ARGUMENT:
                        await context.abort(exc.code(), exc.details() or "")
                    continue
                reply_type.FromString(reply)
                return reply
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no replica answered")
            raise AssertionError("unreachable")

        return handler

    handlers = {op: grpc.unary_unary_rpc_method_handler(make(op)) for op in _MESSAGES}
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port("unix:" + args.socket)
    await server.start()
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    await stopped.wait()
    await server.stop(None)
    for c in channels:
        await c.close(None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--upstream", required=True, help="HOST:PORT,HOST:PORT,...")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
