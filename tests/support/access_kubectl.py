"""Helpers for tests that drive real kubectl's streaming commands (exec, attach, cp, port-forward):
a TCP echo server to forward to, a reader of a child's output lines with a deadline, and the
round trip of bytes through a ``kubectl port-forward``."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import queue
import re
import select
import socket
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import IO

__all__ = ["DEADLINE", "EchoServer", "Lines", "echo_through", "forwarded_port", "on_a_terminal", "stop"]

DEADLINE = 60.0  # generous: the full suite runs under load


class EchoServer:
    """A TCP server on 127.0.0.1 that sends back every byte it receives, until its client half-closes."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port: int = self._sock.getsockname()[1]
        self.connections = 0
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, name="echo-accept", daemon=True)

    def __enter__(self) -> EchoServer:
        self._accepter.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        self._sock.close()
        self._accepter.join(DEADLINE)
        for thread in self._threads:
            thread.join(DEADLINE)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed by __exit__
                return
            self.connections += 1
            thread = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(DEADLINE)
            try:
                while chunk := conn.recv(65536):
                    conn.sendall(chunk)
            except OSError:
                pass


class Lines:
    """A child's text output, line by line, read by a thread so that a wait can have a deadline."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None, "the process needs stdout=PIPE"
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._queue.put(line)
        except (OSError, ValueError):
            pass
        self._queue.put(None)

    def join(self) -> None:
        """Wait for EOF (after the process exited)."""
        self._thread.join(DEADLINE)

    def next(self, timeout: float = DEADLINE) -> str:
        """The next line; AssertionError at EOF or after ``timeout`` seconds (naming what was seen)."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout} s; seen so far: {self.seen}") from None
        if line is None:
            raise AssertionError(f"the output ended; seen: {self.seen}")
        self.seen.append(line)
        return line

    def until(self, pattern: str, timeout: float = DEADLINE) -> re.Match[str]:
        """Read lines until one matches ``pattern`` (a regex); its match."""
        while True:
            found = re.search(pattern, self.next(timeout))
            if found:
                return found


def forwarded_port(lines: Lines) -> int:
    """The local port of ``kubectl port-forward pod :PORT`` from its 'Forwarding from' line."""
    return int(lines.until(r"Forwarding from 127\.0\.0\.1:(\d+) ->").group(1))


def echo_through(port: int, payload: bytes) -> bytes:
    """Send ``payload`` to 127.0.0.1:``port``, half-close, and return everything that comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        received = bytearray()
        with contextlib.suppress(ConnectionResetError):  # a refused forward may end in a reset
            while chunk := conn.recv(65536):
                received += chunk
        return bytes(received)


def stop(proc: subprocess.Popen[str], lines: Lines | None = None) -> str:
    """Terminate a kubectl child (SIGTERM, as Ctrl-C would end it), reap it, close its pipes; its
    stderr. ``lines`` is the reader of its stdout, if one was made (it is joined before closing)."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(DEADLINE)
    err = proc.stderr.read() if proc.stderr is not None else ""
    if lines is not None:
        lines.join()
    elif proc.stdout is not None:
        proc.stdout.read()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    return err


def on_a_terminal(argv: Sequence[str], env: Mapping[str, str], *, rows: int, cols: int) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal of ``rows`` x ``cols`` as its stdin/stdout/stderr (as a
    person's kubectl -it runs); its exit code and everything it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    try:
        proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
    finally:
        os.close(slave)
    out = bytearray()
    end = time.monotonic() + DEADLINE
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: kubectl exited and closed the terminal
                break
            if not chunk:
                break
            out += chunk
        code = proc.wait(DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(DEADLINE)
        os.close(master)
    return code, out.decode("utf-8", "replace")
