"""The accept loop survives running out of file descriptors (EMFILE), for real, in a child process.

The child serves an in-memory key store. On request, a helper thread in it (not the server) opens
``/dev/null`` until the kernel says EMFILE and holds every descriptor, so the server's next
``accept()`` fails with EMFILE; a client that connects meanwhile waits in the backlog. With one
descriptor given back, ``accept()`` succeeds but pinning the caller (its pidfd) fails: that client is
told UNAVAILABLE, not PERMISSION_DENIED. Once the helper lets go of all, the same ``serve_forever``
serves a new client.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from kubeshield.keys._custody_protocol import (
    Op,
    Request,
    Status,
    decode_response,
    encode_request,
    read_body,
    read_greeting,
)

_SERVER = textwrap.dedent("""
    import errno, logging, os, sys, threading
    from kubeshield.custody.policy import parse_policy
    from kubeshield.custody.server import CustodyServer, bind_unix_socket
    from kubeshield.keys.testing import InMemoryBackend

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    listener = bind_unix_socket(sys.argv[1], mode=0o600)
    server = CustodyServer(
        backend=InMemoryBackend(),
        policy=parse_policy(f"version: 1\\nrules:\\n  - {{name: me, uid: {os.getuid()}}}\\n"),
        listener=listener,
    )

    def hog():  # not part of the server: uses up the descriptors, then gives them back
        held = []
        for line in sys.stdin:
            if line.strip() == "fill":
                try:
                    while True:
                        held.append(os.open("/dev/null", os.O_RDONLY))
                except OSError as exc:
                    assert exc.errno == errno.EMFILE
                print("full", flush=True)
            elif line.strip() == "free1":  # room for accept(), none for the pidfd after it
                os.close(held.pop())
                print("freed1", flush=True)
            elif line.strip() == "free":
                for fd in held:
                    os.close(fd)
                held.clear()
                print("freed", flush=True)

    threading.Thread(target=hog, daemon=True).start()
    print("ready", flush=True)
    server.serve_forever()
""")


def _served(s: socket.socket) -> bool:
    if read_greeting(s) is not None:
        return False
    s.sendall(encode_request(Request(Op.KEY_ID)))
    body = read_body(s)
    return body is not None and decode_response(body).status == Status.OK


def _client(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(path)
    return s


def test_emfile_at_accept_is_survived(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sock")
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert proc.stdout.readline().strip() == "ready"
        with _client(path) as before:
            assert _served(before)
        proc.stdin.write("fill\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "full"
        waiting = _client(path)  # in the backlog: every accept() now fails with EMFILE
        deadline = time.monotonic() + 60
        while not any("accept failed (EMFILE)" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert any("accept failed (EMFILE)" in line for line in lines), "".join(lines)
        assert proc.poll() is None  # serve_forever did not return
        proc.stdin.write("free1\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "freed1"
        with waiting:  # accepted, but no descriptor left to pin it: told UNAVAILABLE, not DENIED
            refusal = read_greeting(waiting)
            assert refusal is not None and refusal.status == Status.UNAVAILABLE, "".join(lines)
        proc.stdin.write("free\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "freed"
        with _client(path) as after:
            assert _served(after)  # the same serve_forever, serving again
        assert proc.poll() is None
        assert any("UNAVAILABLE, the caller could not be pinned" in line for line in lines), "".join(lines)
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
