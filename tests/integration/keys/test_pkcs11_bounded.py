"""Issue 15 items 3-4 with a real SoftHSM2 token: Status and key_id never wait for a busy token, every
other call waits a bounded time in a bounded queue, and a token created later is found.

A "hung token call" is made honestly: a wrap whose IV source blocks. The backend draws the IV while it
holds the token (the same place a slow C_Encrypt would block), so every other caller meets a busy
token exactly as with a slow HSM.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from kubeshield.errors import BackendTimeout, BackendUnavailable
from kubeshield.keys.base import Wrapped
from kubeshield.keys.pkcs11 import Pkcs11KeyBackend
from kubeshield.kms.service import KMSService
from tests.support.softhsm import SoftHsm, unique_label

GENEROUS = 30.0  # deadlock detectors, not timing assertions
HANG = 4 * GENEROUS  # a hung call outlasts every wait of the test, so a caller that waits on it is seen


class HangingRng:
    """An rng that blocks the first ``arm()``-ed call until ``release`` (while the token is held)."""

    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def arm(self) -> None:
        self.armed = True

    def __call__(self, n: int) -> bytes:
        if self.armed:
            self.armed = False
            self.entered.set()
            self.release.wait(HANG)
        return os.urandom(n)


@contextlib.contextmanager
def busy_token(factory: Any, **kwargs: Any) -> Iterator[tuple[Pkcs11KeyBackend, Wrapped]]:
    """A backend (and a value it wrapped before) whose token is held by a hung wrap in another thread."""
    rng = HangingRng()
    backend: Pkcs11KeyBackend = factory(rng=rng, **kwargs)
    wrapped = backend.wrap(b"before" * 6, aad=b"a")
    rng.arm()
    hung = threading.Thread(target=lambda: backend.wrap(b"s" * 32), daemon=True)
    hung.start()
    assert rng.entered.wait(GENEROUS)
    try:
        yield backend, wrapped
    finally:
        rng.release.set()
        hung.join(GENEROUS)
    assert not hung.is_alive()


def _in_thread(call: Any) -> list[Any]:
    """Run ``call`` in a thread; return [result] (or [exception]); fail if it does not return."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(call())
        except Exception as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(GENEROUS)
    assert not thread.is_alive(), "the call waited for the busy token"
    return box


def test_key_id_answers_while_the_token_is_busy(pkcs11_backend_factory: Any) -> None:
    with busy_token(pkcs11_backend_factory) as (backend, _):
        [key_id] = _in_thread(backend.key_id)
        assert isinstance(key_id, str) and key_id.startswith("pkcs11:")


def test_status_answers_from_cached_state_while_the_token_is_busy(pkcs11_backend_factory: Any) -> None:
    rng = HangingRng()
    backend = pkcs11_backend_factory(rng=rng, lock_timeout=0.2)
    service = KMSService(backend)
    assert service.check_health_now().ok  # the cached deep check, as the health loop makes it
    rng.arm()
    hung = threading.Thread(target=lambda: backend.wrap(b"s" * 32), daemon=True)
    hung.start()
    assert rng.entered.wait(GENEROUS)
    try:
        [reply] = _in_thread(service.status)
        assert not isinstance(reply, Exception), reply
        assert reply.healthz == "ok" and reply.key_id == backend.key_id()
    finally:
        rng.release.set()
        hung.join(GENEROUS)


def test_a_call_waits_a_bounded_time_for_a_busy_token(pkcs11_backend_factory: Any) -> None:
    with busy_token(pkcs11_backend_factory, lock_timeout=0.2) as (backend, wrapped):
        for call in (lambda: backend.wrap(b"t" * 32), lambda: backend.unwrap(wrapped, aad=b"a")):
            [error] = _in_thread(call)
            assert isinstance(error, BackendTimeout), error
            assert "did not become free within 0.2s" in str(error)
    assert backend.unwrap(wrapped, aad=b"a") == b"before" * 6  # and works again once the call returns


def test_the_queue_for_a_busy_token_is_capped(pkcs11_backend_factory: Any) -> None:
    from kubeshield.keys.pkcs11 import _MODULE_GATE

    with busy_token(pkcs11_backend_factory, lock_timeout=GENEROUS, max_waiting=1) as (backend, wrapped):
        queued: list[Any] = []
        first = threading.Thread(target=lambda: queued.append(backend.unwrap(wrapped, aad=b"a")), daemon=True)
        first.start()
        for _ in range(int(GENEROUS * 1000)):  # until the first caller is in the queue
            if _MODULE_GATE.waiting >= 1:
                break
            threading.Event().wait(0.001)
        [error] = _in_thread(lambda: backend.wrap(b"x" * 32))
        assert isinstance(error, BackendUnavailable), error
        assert "1 calls are already waiting" in str(error)
    first.join(GENEROUS)
    assert queued == [b"before" * 6]  # the queued call went through once the token was free


def test_a_token_created_by_another_process_later_is_found(softhsm: SoftHsm) -> None:
    """SoftHSM2 lists tokens at C_Initialize: the backend re-initialises the idle module to see a new one."""
    label = "ks-late-" + os.urandom(3).hex()
    pin = b"late-pin-1234"
    kwargs: dict[str, Any] = {
        "module": softhsm.module,
        "token": label,
        "pin": pin,
        "key_label": unique_label(),
    }
    with pytest.raises(BackendUnavailable, match="not available"):
        Pkcs11KeyBackend.init(**kwargs)
    softhsm.init_token(label, pin=pin)  # softhsm2-util, another process
    backend = Pkcs11KeyBackend.init(**kwargs)
    try:
        assert backend.unwrap(backend.wrap(b"v" * 32)) == b"v" * 32
    finally:
        backend.close()


def _swallow(call: Any) -> None:
    try:
        call()
    except Exception:
        pass
