"""The enclave backend never keeps a socket that an exception interrupted.

An exception that is not a transport error (``KeyboardInterrupt``, a signal handler's exception, a
test timeout) can stop a call between sending the request and reading the whole answer. The answer
may still arrive later, so that connection must be closed, not kept for the next call (which would
read it as its own answer), and not left open for the garbage collector either (a ResourceWarning
in whatever runs next). The custody side here is a scripted peer on a real unix socket: it speaks the
protocol but decides when (and whether) to answer, and reports when our side closed the connection.
"""

from __future__ import annotations

import gc
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import pytest

from kubeshield.keys._custody_protocol import (
    Op,
    Response,
    Status,
    decode_request,
    encode_greeting,
    encode_response,
    read_body,
)
from kubeshield.keys.enclave import EnclaveKeyBackend

BOUND = 30.0  # generous: every wait below ends as soon as its event happens


class Interrupted(BaseException):
    """Raised in the main thread by our SIGUSR1 handler, like a KeyboardInterrupt."""


@pytest.fixture
def interrupt_main() -> Iterator[Callable[[], None]]:
    """A function that makes the main thread raise :class:`Interrupted` (from any thread)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted()

    previous = signal.signal(signal.SIGUSR1, handler)
    main = threading.main_thread().ident
    assert main is not None

    def interrupt() -> None:
        signal.pthread_kill(main, signal.SIGUSR1)

    try:
        yield interrupt
    finally:
        signal.signal(signal.SIGUSR1, previous)
        gc.collect()  # a socket leaked here warns in this test, not in a later one


class Peer:
    """A listener on ``path``; :meth:`run` handles one connection in a thread with ``script``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(4)
        self.listener.settimeout(BOUND)
        self.errors: list[BaseException] = []
        self.closed_by_client = threading.Event()
        self._threads: list[threading.Thread] = []

    def run(self, script: Callable[[socket.socket], None]) -> None:
        def serve() -> None:
            try:
                conn, _ = self.listener.accept()
                with conn:
                    conn.settimeout(BOUND)
                    script(conn)
            except BaseException as exc:  # reported by the test, not lost in the thread
                self.errors.append(exc)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        self._threads.append(t)

    def wait_for_client_close(self, conn: socket.socket) -> None:
        """Until our side of ``conn`` sees end of stream: the client closed its socket."""
        while conn.recv(4096):
            pass  # anything the client still sent (nothing, in these tests)
        self.closed_by_client.set()

    def join(self) -> None:
        for t in self._threads:
            t.join(BOUND)
        self.listener.close()
        assert not self.errors, self.errors


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    p = Peer(tmp_path / "custody.sock")
    try:
        yield p
    finally:
        p.join()


def test_an_interrupted_call_closes_its_connection_and_the_next_call_reconnects(
    peer: Peer, interrupt_main: Callable[[], None]
) -> None:
    def stall_then_interrupt(conn: socket.socket) -> None:
        conn.sendall(encode_greeting())
        body = read_body(conn)
        assert body is not None and decode_request(body).op == Op.KEY_ID
        interrupt_main()  # the request was read and is unanswered: the client waits for the answer
        peer.wait_for_client_close(conn)

    def answer(conn: socket.socket) -> None:
        conn.sendall(encode_greeting())
        body = read_body(conn)
        assert body is not None and decode_request(body).op == Op.KEY_ID
        conn.sendall(encode_response(Response(Status.OK, (b"second-connection",))))
        peer.wait_for_client_close(conn)

    backend = EnclaveKeyBackend(socket=peer.path, timeout=BOUND)
    try:
        peer.run(stall_then_interrupt)
        with pytest.raises(Interrupted):
            backend.key_id()
        assert peer.closed_by_client.wait(BOUND)  # closed at once, not left to the garbage collector
        peer.closed_by_client.clear()
        peer.run(answer)
        assert backend.key_id() == "second-connection"  # a new connection, its own answer
    finally:
        backend.close()
    assert peer.closed_by_client.wait(BOUND)


def test_an_interrupted_wait_for_the_greeting_closes_the_socket(
    peer: Peer, interrupt_main: Callable[[], None]
) -> None:
    def no_greeting(conn: socket.socket) -> None:
        interrupt_main()  # the client is connected (or connecting) and waits for the greeting
        peer.wait_for_client_close(conn)

    backend = EnclaveKeyBackend(socket=peer.path, timeout=BOUND)
    try:
        peer.run(no_greeting)
        with pytest.raises(Interrupted):
            backend.key_id()
        assert peer.closed_by_client.wait(BOUND)
    finally:
        backend.close()
