"""CallLimit: Encrypt/Decrypt beyond the limit are refused at once; Status is never limited."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kubeshield.errors import BackendUnavailable
from kubeshield.keys.base import Health, Wrapped
from kubeshield.keys.testing import InMemoryBackend
from kubeshield.kms.client import KMSv2Client
from kubeshield.kms.server import CallLimit, KMSServer
from kubeshield.kms.service import KMSService

GENEROUS = 30.0


def test_a_call_beyond_the_limit_is_refused_without_waiting() -> None:
    limit = CallLimit(1)
    inside, release = threading.Event(), threading.Event()

    def slow() -> str:
        inside.set()
        release.wait(GENEROUS)
        return "done"

    results: list[str] = []
    thread = threading.Thread(target=lambda: results.append(limit.run(slow)), daemon=True)
    thread.start()
    assert inside.wait(GENEROUS)
    with pytest.raises(BackendUnavailable, match="busy: 1 key backend calls are in progress"):
        limit.run(lambda: "never")
    release.set()
    thread.join(GENEROUS)
    assert results == ["done"] and limit.run(lambda: "again") == "again"
    with pytest.raises(ValueError):
        CallLimit(0)


class BlockingBackend(InMemoryBackend):
    """unwrap blocks until released (a hung key service); key_id and health stay answerable."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = threading.Semaphore(0)
        self.release = threading.Event()

    def unwrap(self, wrapped: Wrapped, *, aad: bytes = b"") -> bytes:
        self.inside.release()
        self.release.wait(GENEROUS)
        return super().unwrap(wrapped, aad=aad)

    def check_health(self) -> Health:
        return Health(True, self.key_id(), "ok", 0.0, 0.0)


def test_status_answers_while_the_backend_holds_every_allowed_call(tmp_path: Path) -> None:
    backend = BlockingBackend()
    service = KMSService(backend)
    server = KMSServer(service, socket=str(tmp_path / "kms.sock"), max_workers=4, status_reserve=1)
    service.start()
    server.start()
    threads: list[threading.Thread] = []
    outcomes: list[str] = []
    try:
        with KMSv2Client(str(tmp_path / "kms.sock"), timeout=GENEROUS) as client:
            reply = client.encrypt(b"s" * 32)

            def decrypt() -> None:
                try:
                    client.decrypt(reply.ciphertext, key_id=reply.key_id, annotations=reply.annotations)
                    outcomes.append("ok")
                except BackendUnavailable:
                    outcomes.append("refused")

            for _ in range(3):  # the limit: 4 workers - 1 reserved
                threads.append(threading.Thread(target=decrypt, daemon=True))
                threads[-1].start()
            for _ in range(3):
                assert backend.inside.acquire(timeout=GENEROUS)
            decrypt()  # the fourth is refused at once instead of taking the last worker
            assert outcomes == ["refused"]
            assert client.status().key_id == backend.key_id()  # the reserved worker answers
            backend.release.set()
            for thread in threads:
                thread.join(GENEROUS)
        assert sorted(outcomes) == ["ok", "ok", "ok", "refused"]
    finally:
        backend.release.set()
        server.stop(None).wait(10)
        service.close()


def test_status_reserve_is_validated() -> None:
    service = KMSService(InMemoryBackend())
    with pytest.raises(ValueError):
        KMSServer(service, socket="/tmp/x.sock", max_workers=4, status_reserve=4)
