"""CustodyServer in this process over a real unix socket, with the in-memory backend."""

from __future__ import annotations

import dataclasses
import gc
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kubeshield.custody.measure import PeerIdentity, measure_pid, process_start_time
from kubeshield.custody.policy import parse_policy
from kubeshield.custody.server import CustodyServer, bind_unix_socket
from kubeshield.errors import BackendUnavailable, InvalidCiphertext, KeyNotFound, PolicyDenied
from kubeshield.keys._custody_protocol import (
    MAX_BODY,
    Op,
    Request,
    Status,
    decode_response,
    encode_request,
    read_body,
    read_greeting,
)
from kubeshield.keys.base import Refreshable, Rotatable, Wrapped
from kubeshield.keys.enclave import EnclaveKeyBackend
from kubeshield.keys.testing import InMemoryBackend

ALL = "    ops: [wrap, unwrap, key_id, health, rotate]\n"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., tuple[str, InMemoryBackend]]]:
    servers: list[tuple[CustodyServer, threading.Thread, socket.socket]] = []

    def start(policy: str, measure: Callable[[int, int, int], PeerIdentity] = measure_pid):
        backend = InMemoryBackend()
        path = str(tmp_path / f"c{len(servers)}.sock")
        listener = bind_unix_socket(path, mode=0o600)
        server = CustodyServer(
            backend=backend, policy=parse_policy(policy), listener=listener, measure=measure
        )
        t = threading.Thread(target=server.serve_forever, daemon=True)
        t.start()
        servers.append((server, t, listener))
        return path, backend

    yield start
    for server, t, listener in servers:
        try:
            server.shutdown()
            t.join(5)
        finally:
            listener.close()
    gc.collect()  # surface a leaked socket in the test that leaked it


def _policy(uid: int = os.getuid(), extra: str = ALL) -> str:
    return f"version: 1\nrules:\n  - name: me\n    uid: {uid}\n{extra}"


def test_all_five_operations(serve) -> None:
    path, inner = serve(_policy())
    b = EnclaveKeyBackend(socket=path)
    assert isinstance(b, Rotatable) and isinstance(b, Refreshable)
    assert b.key_id() == inner.key_id()
    w = b.wrap(b"secret-dek", aad=b"a")
    assert w.key_id == inner.key_id()
    assert inner.unwrap(w, aad=b"a") == b"secret-dek"  # the custody side really did the wrap
    assert b.unwrap(w, aad=b"a") == b"secret-dek"
    with pytest.raises(InvalidCiphertext):
        b.unwrap(w, aad=b"b")
    with pytest.raises(InvalidCiphertext):
        b.unwrap(Wrapped(w.ciphertext[:-1] + bytes([w.ciphertext[-1] ^ 1]), w.key_id), aad=b"a")
    with pytest.raises(KeyNotFound):
        b.unwrap(Wrapped(w.ciphertext, "memory:v9:nope"), aad=b"a")
    new = b.rotate()
    assert new == inner.key_id() != w.key_id
    assert b.unwrap(w, aad=b"a") == b"secret-dek"  # old versions still decrypt
    inner.rotate()  # rotated behind the client's back
    assert b.refresh() is True and b.key_id() == inner.key_id()
    assert b.refresh() is False
    h = b.check_health()
    assert h.ok and h.key_id == inner.key_id()
    b.close()


def test_a_failing_key_store_is_unavailable_not_a_wrong_answer(serve) -> None:
    path, inner = serve(_policy())
    b = EnclaveKeyBackend(socket=path)
    w = b.wrap(b"x" * 32)
    inner.fail_next_unwrap = BackendUnavailable("hsm down")
    with pytest.raises(BackendUnavailable):
        b.unwrap(w)
    assert b.unwrap(w) == b"x" * 32
    b.close()


def test_caller_with_another_uid_is_denied(serve) -> None:
    path, _ = serve(_policy(uid=os.getuid() + 4242))
    b = EnclaveKeyBackend(socket=path)
    with pytest.raises(PolicyDenied):
        b.wrap(b"x")
    b.close()


def test_operation_outside_the_rule_is_denied(serve) -> None:
    path, inner = serve(_policy(extra="    ops: [wrap, unwrap, key_id, health]\n"))
    b = EnclaveKeyBackend(socket=path)
    before = inner.key_id()
    with pytest.raises(PolicyDenied):
        b.rotate()
    assert inner.key_id() == before
    assert b.wrap(b"x").key_id == before  # a new connection, allowed ops still work
    b.close()


def test_measurement_of_this_process(serve) -> None:
    me = measure_pid(os.getpid(), os.getuid(), os.getgid())
    import hashlib

    real = os.path.realpath(sys.executable)
    assert me.exe_sha256 == hashlib.sha256(Path(real).read_bytes()).hexdigest()
    info = os.stat(real)
    assert me.exe_id == (info.st_dev, info.st_ino)
    assert me.cgroup == Path(f"/proc/{os.getpid()}/cgroup").read_text().strip()
    assert me.start_time == process_start_time(os.getpid())
    # a rule pinning exactly this measurement allows us; one flipped digit refuses us
    path, _ = serve(_policy(extra=f"    exeSha256: {me.exe_sha256}\n"))
    ok = EnclaveKeyBackend(socket=path)
    assert ok.key_id()
    ok.close()
    digest = me.exe_sha256
    assert digest is not None
    flipped = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    path2, _ = serve(_policy(extra=f"    exeSha256: {flipped}\n"))
    b = EnclaveKeyBackend(socket=path2)
    with pytest.raises(PolicyDenied):
        b.key_id()
    b.close()


def test_admission_refuses_a_pid_that_is_not_the_measured_process(serve) -> None:
    def stale_measure(pid: int, uid: int, gid: int) -> PeerIdentity:
        real = measure_pid(pid, uid, gid)
        return dataclasses.replace(real, start_time=real.start_time - 1)  # as if the pid had been reused

    path, inner = serve(_policy(), measure=stale_measure)
    b = EnclaveKeyBackend(socket=path)
    with pytest.raises(PolicyDenied):
        b.wrap(b"x" * 32)
    assert inner.wrap_calls == 0  # refused before any key was used
    b.close()


def test_a_request_from_a_process_that_inherited_the_socket_is_refused(serve) -> None:
    """The admitted caller stays alive; its child writes on the inherited socket and is refused."""
    path, _ = serve(_policy())
    request = encode_request(Request(Op.KEY_ID))
    result_r, result_w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked caller
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(path)
            greeted = read_greeting(s) is None
            s.sendall(request)
            first = read_body(s)
            grandchild = os.fork()
            if grandchild == 0:
                s.sendall(request)  # written by another pid on the admitted connection
                try:
                    body = read_body(s)
                    second = decode_response(body).status.name if body is not None else "closed"
                except OSError:
                    second = "closed"
                os.write(result_w, second.encode())
                os._exit(0)
            os.waitpid(grandchild, 0)  # the admitted caller is alive all along
            ok_first = greeted and first is not None and decode_response(first).status == Status.OK
            os.write(result_w, b" first-ok" if ok_first else b" first-bad")
        finally:
            os._exit(0)
    os.close(result_w)
    os.waitpid(child, 0)
    data = b""
    while chunk := os.read(result_r, 64):
        data += chunk
    os.close(result_r)
    assert data == b"PERMISSION_DENIED first-ok"


def test_a_caller_that_is_not_allowed_is_refused_at_connect_without_sending_anything(serve) -> None:
    path, inner = serve(_policy(uid=os.getuid() + 4242))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        refusal = read_greeting(s)  # we send nothing: the refusal comes at once
        assert refusal is not None and refusal.status == Status.PERMISSION_DENIED
        assert s.recv(1) == b""  # and the connection is closed
    assert inner.wrap_calls == 0


def test_a_caller_that_writes_before_the_greeting_is_refused(serve) -> None:
    """Bytes waiting before the greeting may predate an exec: a protocol-1 client is refused too."""
    gate = threading.Event()

    def measure_after_the_write(pid: int, uid: int, gid: int) -> PeerIdentity:
        assert gate.wait(30)  # admission waits until our bytes are on the socket
        return measure_pid(pid, uid, gid)

    path, _ = serve(_policy(), measure=measure_after_the_write)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(encode_request(Request(Op.KEY_ID)))
        gate.set()
        refusal = read_greeting(s)
        assert refusal is not None and refusal.status == Status.PROTOCOL_ERROR
        assert refusal.fields == (b"request sent before the greeting",)
        assert _closed(s)


def _closed(s: socket.socket) -> bool:
    """The server closed: end of stream, or a reset (it closed with our unread bytes queued)."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_connections_beyond_the_limit_are_refused_and_the_server_keeps_serving(tmp_path: Path) -> None:
    backend = InMemoryBackend()
    path = str(tmp_path / "cap.sock")
    listener = bind_unix_socket(path, mode=0o600)
    server = CustodyServer(
        backend=backend, policy=parse_policy(_policy()), listener=listener, max_connections=2
    )
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        a, b = EnclaveKeyBackend(socket=path), EnclaveKeyBackend(socket=path)
        assert a.key_id() and b.key_id()  # two open connections: the limit
        c = EnclaveKeyBackend(socket=path)
        with pytest.raises(BackendUnavailable, match="too many connections"):
            c.key_id()
        a.close()
        assert _wait_until(lambda: _try_key_id(c))  # a slot came free: served again
        for x in (b, c):
            x.close()
    finally:
        server.shutdown()
        t.join(5)
        listener.close()


def _try_key_id(b: EnclaveKeyBackend) -> bool:
    try:
        return bool(b.key_id())
    except BackendUnavailable:
        return False


def _wait_until(condition: Callable[[], bool], bound: float = 30.0) -> bool:
    import time

    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def _raw(path: str, data: bytes) -> tuple[Status | None, bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        assert read_greeting(s) is None
        s.sendall(data)
        body = read_body(s)
        status = decode_response(body).status if body is not None else None
        rest = s.recv(1)  # the server closed the connection
    return status, rest


@pytest.mark.parametrize(
    "frame",
    [
        struct.pack(">I", MAX_BODY + 1),  # oversized: refused from the header, body never read
        struct.pack(">I", 0xFFFFFFFF),
        struct.pack(">I", 2),  # too short to be a body
        struct.pack(">I", 3) + b"\x07\x01\x00",  # unknown version
        struct.pack(">I", 3) + b"\x01\x03\x00",  # protocol version 1
        struct.pack(">I", 3) + b"\x02\x63\x00",  # unknown op
        struct.pack(">I", 7) + b"\x02\x01\x01" + b"\xff\xff\xff\xff",  # field past the end
        struct.pack(">I", 3) + b"\x02\x01\x00",  # wrap with no fields
        struct.pack(">I", 8) + b"\x02\x03\x01" + b"\x00\x00\x00\x01x",  # key_id with a field
    ],
)
def test_malformed_or_oversized_frames_get_protocol_error_and_close(serve, frame: bytes) -> None:
    path, inner = serve(_policy())
    status, rest = _raw(path, frame)
    assert status == Status.PROTOCOL_ERROR
    assert rest == b""
    assert inner.wrap_calls == 0


def test_wrong_arguments_are_type_errors(tmp_path: Path) -> None:
    b = EnclaveKeyBackend(socket=str(tmp_path / "none.sock"))
    with pytest.raises(TypeError):
        b.wrap("text")  # type: ignore[arg-type]
    with pytest.raises(BackendUnavailable, match="cannot reach"):
        b.wrap(b"x")
    assert b.check_health().ok is False
    with pytest.raises(ValueError):
        EnclaveKeyBackend(socket="")


def test_a_probe_that_connects_and_closes_is_not_logged_as_a_protocol_error(serve, caplog) -> None:
    """A liveness probe (e.g. another server checking the socket) closes before its greeting."""
    import logging

    gate = threading.Event()

    def measure_after_the_close(pid: int, uid: int, gid: int) -> PeerIdentity:
        assert gate.wait(30)
        return measure_pid(pid, uid, gid)

    caplog.set_level(logging.INFO, logger="kubeshield.custody")
    path, _ = serve(_policy(), measure=measure_after_the_close)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.connect(path)
    probe.close()
    gate.set()
    assert _wait_until(lambda: "closed the connection before its greeting" in caplog.text)
    assert "PROTOCOL ERROR" not in caplog.text
