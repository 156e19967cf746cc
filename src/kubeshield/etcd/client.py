"""etcd v3 over gRPC, from our own generated stubs (``kubeshield.etcd.api``).

Only what the tools need: paged Range (``limit`` + a moving start key, pinned to one revision so a walk
is a consistent view), Put, Txn (batched puts, and compare-on-mod_revision puts), DeleteRange. TLS with
client certificates. Every gRPC failure becomes an :class:`~kubeshield.errors.EtcdError` naming the
endpoint, the operation and the gRPC status (never a key's value).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc

from kubeshield.errors import ConfigError, EtcdError
from kubeshield.etcd.api import kv_pb2, rpc_pb2, rpc_pb2_grpc
from kubeshield.etcd.store import KeyValue, prefix_range_end

__all__ = ["MAX_TXN_OPS", "EtcdClient", "parse_endpoint"]

#: etcd's default ``--max-txn-ops``; batched puts never exceed it.
MAX_TXN_OPS = 128
_MAX_MESSAGE = 256 * 1024 * 1024


def parse_endpoint(endpoint: str) -> tuple[str, bool]:
    """``http://h:p`` / ``https://h:p`` / ``h:p`` -> (gRPC target ``h:p``, scheme says TLS)."""
    text = endpoint.strip()
    if not text:
        raise ConfigError("--endpoints: empty endpoint")
    if "://" not in text:
        return text, False
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--endpoints: {endpoint!r} is not http(s)://HOST:PORT")
    return parts.netloc, parts.scheme == "https"


def _read(path: str | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path}: {exc.strerror}") from exc


def _kv(msg: Any) -> KeyValue:
    return KeyValue(
        key=bytes(msg.key),
        value=bytes(msg.value),
        mod_revision=int(msg.mod_revision),
        create_revision=int(msg.create_revision),
        version=int(msg.version),
    )


class EtcdClient:
    """A small etcd v3 KV client. Use as a context manager, or call :meth:`close`.

    ``endpoints`` are tried in order; the first that answers a probe Range is used for the whole run.
    TLS is used when an endpoint is ``https://`` or any of ``cacert``/``cert``/``key`` is given.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        cacert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        timeout: float = 10.0,
        flags: tuple[str, str, str] = ("--cacert", "--cert", "--key"),
    ) -> None:
        """``flags`` are the command's names for ``cacert``, ``cert`` and ``key``, used in errors."""
        if not endpoints:
            raise ConfigError("--endpoints: at least one endpoint is required")
        ca_flag, cert_flag, key_flag = flags
        if (cert is None) != (key is None):
            raise ConfigError(f"{cert_flag} and {key_flag} must be given together")
        self._timeout = timeout
        roots, chain = _read(cacert, ca_flag), _read(cert, cert_flag)
        private = _read(key, key_flag)
        want_tls = any(x is not None for x in (roots, chain, private))
        options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
        ]
        errors: list[str] = []
        for endpoint in endpoints:
            target, tls = parse_endpoint(endpoint)
            if tls or want_tls:
                creds = grpc.ssl_channel_credentials(roots, private, chain)
                channel = grpc.secure_channel(target, creds, options=options)
            else:
                channel = grpc.insecure_channel(target, options=options)
            self._channel, self.endpoint = channel, endpoint
            self._kv_stub = rpc_pb2_grpc.KVStub(channel)
            try:
                self._call("connect", self._kv_stub.Range, rpc_pb2.RangeRequest(key=b"\x00", count_only=True))
            except EtcdError as exc:
                channel.close()
                errors.append(str(exc))
                continue
            return
        raise EtcdError("no etcd endpoint answered: " + "; ".join(errors))

    # -- plumbing ---------------------------------------------------------------------------------------

    def _call(self, op: str, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else ""
            name = code.name if code is not None else "UNKNOWN"
            raise EtcdError(f"etcd {op} at {self.endpoint} failed: {name}: {details}") from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads ------------------------------------------------------------------------------------------

    def iter_prefix(
        self, prefix: bytes, *, page_size: int = 500, keys_only: bool = False, pin_revision: bool = True
    ) -> Iterator[KeyValue]:
        """Every key under ``prefix`` in key order, ``page_size`` per Range, never all values at once.

        With ``pin_revision`` every page reads at the revision of the first page (a consistent view);
        without it each page reads the latest data (what a rewrite wants).
        """
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        end = prefix_range_end(prefix)
        start, revision = prefix, 0
        while True:
            request = rpc_pb2.RangeRequest(
                key=start, range_end=end, limit=page_size, revision=revision, keys_only=keys_only
            )
            response = self._call("range", self._kv_stub.Range, request)
            if pin_revision and revision == 0:
                revision = int(response.header.revision)
            for msg in response.kvs:
                yield _kv(msg)
            if not response.more or not response.kvs:
                return
            start = bytes(response.kvs[-1].key) + b"\x00"

    def get(self, key: bytes) -> KeyValue | None:
        response = self._call("range", self._kv_stub.Range, rpc_pb2.RangeRequest(key=key))
        return _kv(response.kvs[0]) if response.kvs else None

    def revision(self) -> int:
        """The store's current revision."""
        response = self._call(
            "range", self._kv_stub.Range, rpc_pb2.RangeRequest(key=b"\x00", count_only=True)
        )
        return int(response.header.revision)

    # -- writes -----------------------------------------------------------------------------------------

    def put(self, key: bytes, value: bytes) -> int:
        """Unconditional put; returns the new revision."""
        response = self._call("put", self._kv_stub.Put, rpc_pb2.PutRequest(key=key, value=value))
        return int(response.header.revision)

    def put_many(self, items: Iterable[tuple[bytes, bytes]], *, batch: int = MAX_TXN_OPS) -> int:
        """Unconditional puts, ``batch`` per Txn (for seeding). Returns how many were written."""
        if not 1 <= batch <= MAX_TXN_OPS:
            raise ValueError(f"batch must be 1..{MAX_TXN_OPS}")
        ops: list[Any] = []
        written = 0
        for key, value in items:
            ops.append(rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value)))
            if len(ops) == batch:
                self._call("txn", self._kv_stub.Txn, rpc_pb2.TxnRequest(success=ops))
                written += len(ops)
                ops = []
        if ops:
            self._call("txn", self._kv_stub.Txn, rpc_pb2.TxnRequest(success=ops))
            written += len(ops)
        return written

    def compare_and_put(self, key: bytes, value: bytes, *, mod_revision: int) -> tuple[bool, KeyValue | None]:
        """Put ``value`` only if ``key``'s mod_revision is still ``mod_revision`` (one Txn).

        Returns ``(True, None)`` when written, or ``(False, current)`` with the key's current record
        (None when it was deleted) when someone else wrote first.
        """
        compare = rpc_pb2.Compare(
            result=rpc_pb2.Compare.EQUAL, target=rpc_pb2.Compare.MOD, key=key, mod_revision=mod_revision
        )
        request = rpc_pb2.TxnRequest(
            compare=[compare],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))],
        )
        response = self._call("txn", self._kv_stub.Txn, request)
        if response.succeeded:
            return True, None
        kvs = response.responses[0].response_range.kvs if response.responses else []
        return False, (_kv(kvs[0]) if kvs else None)

    def delete(self, key: bytes) -> int:
        """Delete one key; returns how many were deleted (0 or 1)."""
        response = self._call("delete", self._kv_stub.DeleteRange, rpc_pb2.DeleteRangeRequest(key=key))
        return int(response.deleted)


# keep the mvccpb module referenced: rpc_pb2 depends on it being imported first
_ = kv_pb2
