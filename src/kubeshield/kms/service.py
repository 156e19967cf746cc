"""The transport-free KMS service: what the v2 and v1 plugin APIs do, on plain Python types.

The gRPC servicers (``server.py``) only translate protobuf <-> these calls and map errors to status codes.

What this layer guarantees (kms-contract §2.4, §2.5, §2.9):

* **Status is cheap and never waits for the key backend.** It returns ``backend.key_id()`` (by the
  KeyBackend contract an answer from memory: no remote call, no wait for a device lock) plus the *cached*
  result of a periodic deep health round trip (``backend.check_health()`` every ``health_interval``
  seconds, every ``unhealthy_interval`` seconds while the last one failed, each bounded by
  ``health_timeout``, in a background thread). When the last deep check failed or is too old, Status
  raises :class:`BackendUnavailable`: a gRPC error is the only thing that makes kube-apiserver stop
  extending its write DEK (contract §2.4 quirk, kubernetes#138950), a ``healthz`` text does not. (Only
  before :meth:`KMSService.start` does the first Status run the first deep check itself.)
* **A backend that was down at start heals without a restart.** The quicker re-checks while unhealthy
  are what drive a :class:`~kubeshield.keys.lazy.LazyBackend`'s connection attempts (its backoff spaces
  them), so Status turns healthy within about ``unhealthy_interval`` of the backend connecting.
* **Encrypt's key_id is the one Status reports.** We wrap, then compare with ``backend.key_id()``; if the
  keyring rotated in between we report the key_id the wrap really used (Status follows at once, and the
  apiserver re-primes on its next Status).
* **Our own replies obey the limits** (``kubeshield.envelope.limits``): a reply that would break the
  contract raises :class:`ContractViolation` and is never sent (fail closed).
* **The APIs are domain-separated**: v2 wraps under backend aad ``b"kubeshield/kms/v2"``, v1 under
  ``b"kubeshield/kms/v1"``, so a v1 ciphertext can never be replayed into v2 Decrypt or the reverse.
* **A rotated keyring appears within ``refresh_interval``** (default 5 s): a background refresher calls
  ``backend.refresh()`` for backends that are :class:`~kubeshield.keys.base.Refreshable`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kubeshield.envelope.limits import validate_annotations, validate_encrypted_dek_source, validate_key_id
from kubeshield.errors import BackendUnavailable, ContractViolation, InvalidRequest
from kubeshield.keys.base import Health, KeyBackend, Refreshable, Wrapped
from kubeshield.kms.logging import fields, get_logger
from kubeshield.kms.metrics import KMSMetrics

__all__ = [
    "AAD_V1",
    "AAD_V2",
    "API_VERSION",
    "MAX_PLAINTEXT",
    "MAX_V1_CIPHERTEXT",
    "MAX_V2_CIPHERTEXT",
    "EncryptReply",
    "HealthState",
    "KMSService",
    "StatusReply",
]

API_VERSION = "v2"
AAD_V2 = b"kubeshield/kms/v2"
AAD_V1 = b"kubeshield/kms/v1"
#: Largest plaintext we wrap. The apiserver sends a 32-byte seed (v2) or DEK (v1), or "ping" (v1 health).
MAX_PLAINTEXT = 4096
#: The apiserver never stores or sends a v2 ciphertext above 1024 bytes (contract §1.1).
MAX_V2_CIPHERTEXT = 1024
#: KMS v1 stores the encrypted DEK behind a uint16 length (contract §3.4).
MAX_V1_CIPHERTEXT = 65535

_log = get_logger("kms.service")


@dataclass(frozen=True, slots=True)
class StatusReply:
    """What Status answers. ``metadata``: the ``kubeshield-*`` trailing metadata a replica sent with
    it (its keyring's identity), which the relay passes on; empty from the service itself."""

    version: str
    healthz: str
    key_id: str
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class EncryptReply:
    """What Encrypt answers."""

    ciphertext: bytes
    key_id: str
    annotations: Mapping[str, bytes] = field(default_factory=dict)

    def __repr__(self) -> str:  # never print ciphertext
        return f"EncryptReply(key_id={self.key_id!r}, ciphertext=<{len(self.ciphertext)} bytes>)"


@dataclass(frozen=True, slots=True)
class HealthState:
    """The cached result of the last deep health check (``at`` is on the service's clock)."""

    ok: bool
    detail: str
    at: float
    latency_seconds: float


class KMSService:
    """The KMS plugin logic on top of one :class:`KeyBackend`. Thread-safe."""

    def __init__(
        self,
        backend: KeyBackend,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        health_interval: float = 10.0,
        health_timeout: float = 2.0,
        refresh_interval: float = 5.0,
        unhealthy_interval: float = 1.0,
        metrics: KMSMetrics | None = None,
        v1_backend: KeyBackend | None = None,
    ) -> None:
        if min(health_interval, health_timeout, refresh_interval, unhealthy_interval) <= 0:
            raise ValueError(
                "health_interval, health_timeout, refresh_interval and unhealthy_interval must be > 0"
            )
        self._backend = backend
        # KMS v1 has no annotations, so it must not go through layers that need them (the local-KEK
        # hierarchy, break-glass escrow): the caller passes the bare backend for v1.
        self._v1_backend = v1_backend if v1_backend is not None else backend
        self._clock = clock
        self._wall_clock = wall_clock
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.refresh_interval = refresh_interval
        self.unhealthy_interval = min(unhealthy_interval, health_interval)
        self.metrics = metrics
        self._health: HealthState | None = None
        self._health_lock = threading.Lock()
        self._inflight: threading.Thread | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- health ------------------------------------------------------------------------------------

    @property
    def max_health_age(self) -> float:
        """A deep check older than this no longer counts (the checker thread must be stuck or dead)."""
        return 3 * self.health_interval + self.health_timeout

    def last_health(self) -> HealthState | None:
        """The cached result of the last deep health check, if any."""
        return self._health

    def is_healthy(self) -> bool:
        """True when the last deep check succeeded and is recent."""
        state = self._health
        return state is not None and state.ok and self._clock() - state.at <= self.max_health_age

    def check_health_now(self) -> HealthState:
        """Run one deep round trip under ``health_timeout`` and cache its result. Never raises."""
        start = self._clock()
        if self._inflight is not None and self._inflight.is_alive():
            state = HealthState(False, "previous health check still running", start, 0.0)
            return self._record_health(state)
        box: list[Health] = []

        def probe() -> None:
            try:
                box.append(self._backend.check_health())
            except Exception as exc:  # check_health must not raise; treat it as a failure
                box.append(Health(False, None, type(exc).__name__, self._wall_clock(), 0.0))

        worker = threading.Thread(target=probe, name="kubeshield-health-probe", daemon=True)
        self._inflight = worker
        worker.start()
        worker.join(self.health_timeout)
        elapsed = self._clock() - start
        if worker.is_alive():
            state = HealthState(
                False, f"health check timed out after {self.health_timeout:g}s", start, elapsed
            )
        elif not box:
            state = HealthState(False, "health check returned nothing", start, elapsed)
        else:
            state = HealthState(box[0].ok, box[0].detail, start, elapsed)
        return self._record_health(state)

    def _record_health(self, state: HealthState) -> HealthState:
        with self._health_lock:
            previous = self._health
            self._health = state
        if self.metrics is not None:
            self.metrics.observe_health(
                ok=state.ok, seconds=state.latency_seconds, wall_time=self._wall_clock()
            )
        if previous is None or previous.ok != state.ok:
            level = logging.INFO if state.ok else logging.ERROR
            _log.log(level, "backend health changed", extra=fields(ok=state.ok, detail=state.detail))
        return state

    # -- background threads ------------------------------------------------------------------------

    def start(self) -> None:
        """Run one deep health check now, then start the health and refresh threads."""
        if self._threads:
            return
        self._stop.clear()
        self.check_health_now()
        self._update_key_metric()
        self._threads = [threading.Thread(target=self._health_loop, name="kubeshield-health", daemon=True)]
        if isinstance(self._backend, Refreshable):
            self._threads.append(
                threading.Thread(target=self._refresh_loop, name="kubeshield-refresh", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop the background threads (waits for them, at most ``health_timeout`` each)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.health_timeout + 1.0)
        self._threads = []

    def next_health_check_in(self) -> float:
        """Seconds the health loop waits before the next deep check: sooner while unhealthy."""
        state = self._health
        return self.health_interval if state is not None and state.ok else self.unhealthy_interval

    def _health_loop(self) -> None:
        while not self._stop.wait(self.next_health_check_in()):
            self.check_health_now()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            self.refresh_now()

    def refresh_now(self) -> bool:
        """Reload a Refreshable backend's key set; True when the current key_id changed. Never raises."""
        backend = self._backend
        if not isinstance(backend, Refreshable):
            return False
        try:
            changed = backend.refresh()
        except Exception as exc:
            _log.warning("keyring refresh failed", extra=fields(error=type(exc).__name__, detail=str(exc)))
            return False
        if changed:
            _log.info("current key_id changed", extra=fields(key_id=self._backend.key_id()))
            self._update_key_metric()
        return changed

    def _update_key_metric(self) -> None:
        if self.metrics is None:
            return
        try:
            self.metrics.set_current_key_id(self._backend.key_id())
        except Exception as exc:
            _log.warning("cannot read the current key_id", extra=fields(error=type(exc).__name__))

    # -- KMS v2 ------------------------------------------------------------------------------------

    def status(self) -> StatusReply:
        """Version, healthz and the current key_id. Raises BackendUnavailable when unhealthy."""
        if self._health is None:
            self.check_health_now()
        state = self._health
        if state is None or not state.ok:
            raise BackendUnavailable("key backend unhealthy: " + (state.detail if state else "not checked"))
        if self._clock() - state.at > self.max_health_age:
            raise BackendUnavailable("key backend health is stale: the health checker is not running")
        key_id = self._backend.key_id()
        validate_key_id(key_id)
        if self.metrics is not None:
            self.metrics.set_current_key_id(key_id)
        return StatusReply(version=API_VERSION, healthz="ok", key_id=key_id)

    def encrypt(self, plaintext: bytes, *, uid: str) -> EncryptReply:
        """Wrap ``plaintext`` (a 32-byte seed in practice) under the current KEK."""
        _check_plaintext(plaintext)
        wrapped = self._backend.wrap(plaintext, aad=AAD_V2)
        validate_key_id(wrapped.key_id)
        validate_encrypted_dek_source(wrapped.ciphertext)
        annotations = dict(wrapped.annotations)
        validate_annotations(annotations)
        current = self._backend.key_id()
        if current != wrapped.key_id:
            # The keyring rotated between wrap and now; the wrap's key_id is the truth. Status reports
            # the new key_id from now on, and the apiserver re-primes on its next Status.
            _log.info(
                "key rotated during encrypt", extra=fields(uid=uid, key_id=wrapped.key_id, current=current)
            )
        _log.debug("encrypt", extra=fields(uid=uid, key_id=wrapped.key_id, size=len(plaintext)))
        return EncryptReply(ciphertext=wrapped.ciphertext, key_id=wrapped.key_id, annotations=annotations)

    def decrypt(self, ciphertext: bytes, *, key_id: str, annotations: Mapping[str, bytes], uid: str) -> bytes:
        """Unwrap a ciphertext an earlier Encrypt returned; the backend picks the KEK by ``key_id``."""
        _check_ciphertext(ciphertext, limit=MAX_V2_CIPHERTEXT)
        if not key_id:
            raise InvalidRequest("key_id is empty")
        try:
            validate_key_id(key_id)
            validate_annotations(annotations)
        except ContractViolation as exc:  # the caller's input, not our reply
            raise InvalidRequest(str(exc)) from None
        wrapped = Wrapped(ciphertext=ciphertext, key_id=key_id, annotations=dict(annotations))
        plaintext = self._backend.unwrap(wrapped, aad=AAD_V2)
        _log.debug("decrypt", extra=fields(uid=uid, key_id=key_id, size=len(ciphertext)))
        return plaintext

    # -- KMS v1 ------------------------------------------------------------------------------------

    def v1_encrypt(self, plain: bytes) -> bytes:
        """KMS v1 Encrypt: wrap under the current KEK. v1 has no key_id: the blob must identify it."""
        _check_plaintext(plain)
        wrapped = self._v1_backend.wrap(plain, aad=AAD_V1)
        if not 1 <= len(wrapped.ciphertext) <= MAX_V1_CIPHERTEXT:
            raise ContractViolation("v1 ciphertext length is outside 1..65535 bytes")
        return wrapped.ciphertext

    def v1_decrypt(self, cipher: bytes) -> bytes:
        """KMS v1 Decrypt: the backend finds the KEK from the ciphertext (``key_id=""``)."""
        _check_ciphertext(cipher, limit=MAX_V1_CIPHERTEXT)
        return self._v1_backend.unwrap(Wrapped(ciphertext=cipher, key_id=""), aad=AAD_V1)

    def close(self) -> None:
        """Stop the threads and close the backend."""
        self.stop()
        self._backend.close()  # a v1 backend is a view of the same stack; closing v2 closes its primary


def _check_plaintext(plaintext: bytes) -> None:
    if not isinstance(plaintext, bytes):
        raise TypeError("plaintext must be bytes")
    if not plaintext:
        raise InvalidRequest("plaintext is empty")
    if len(plaintext) > MAX_PLAINTEXT:
        raise InvalidRequest(f"plaintext is larger than {MAX_PLAINTEXT} bytes")


def _check_ciphertext(ciphertext: bytes, *, limit: int) -> None:
    if not isinstance(ciphertext, bytes):
        raise TypeError("ciphertext must be bytes")
    if not ciphertext:
        raise InvalidRequest("ciphertext is empty")
    if len(ciphertext) > limit:
        raise InvalidRequest(f"ciphertext is larger than {limit} bytes")
