"""The node-local relay's policy: the replica pool, the agreed key_id, and where each call goes.

:class:`Relay` is served by :class:`~kubeshield.kms.relay_server.RelayServer` (grpc.aio, one event
loop); its calls are coroutines and its upstreams are :class:`~kubeshield.kms.relay_upstream.AioUpstream`
(or any :class:`Upstream`). Everything runs in that one loop; the read-only views (``agreed_key_id``,
``states``, ``is_healthy``, ``last_health``) may be called from other threads (the health HTTP server).

How it decides (kms-contract §2.4/§2.5: the apiserver's Status/Encrypt/Decrypt, each under a 3 s timeout):

* **Health.** A checker task calls Status on every replica every ``check_interval`` seconds (each call
  bounded by ``check_timeout``). A replica is *healthy* when its last Status succeeded. A call that fails
  with UNAVAILABLE or a deadline marks the replica unhealthy at once (passive check), so the next request
  skips it without waiting for the checker. Every change is logged once, with the reason in the
  operator's terms (:func:`~kubeshield.kms.relay_upstream.failure_reason`: ``dns``, ``refused``, ``tls``,
  ``closed``, ``timeout``, ``denied``, ``unhealthy``...): "replica down" (warning), "replica still down"
  when the reason changes, and "replica back" with how long it was down. Failures are counted in
  ``kubeshield_relay_upstream_failures_total{upstream,reason}``.
* **Client certificate reload.** With ``tls`` (a
  :class:`~kubeshield.kms.tls.ReloadingClientCredentials`), each check round first looks at the relay's
  certificate files; new material that checks out is handed to every upstream
  (``use_credentials``), whose next calls use a new channel.
* **The agreed key_id.** After every round, when *all* healthy replicas report the same key_id, that key_id
  becomes the agreed one; while they differ (a rotation is spreading) the previous agreed key_id is kept.
  Status reports only the agreed key_id, so the apiserver learns a new key_id only once every healthy
  replica can decrypt under it, and no apiserver writes data another replica cannot read.
* **Encrypt** goes only to healthy replicas that report the agreed key_id, and a reply whose key_id is
  not the agreed one (the replica rotated in between) is never returned: the next replica is tried, and
  once all were tried the relay re-checks every replica and tries again if the agreement moved.
* **Decrypt and Status fail over**: replicas are tried in round-robin order, healthy ones first, each
  try bounded by ``try_timeout`` and all of them by ``budget`` (default 2.5 s, inside the apiserver's
  3 s). Decrypt tries the next replica after any failure except a request the replicas call malformed;
  if every replica failed and one of them said "invalid ciphertext" the caller gets the opaque
  :class:`InvalidCiphertext`.
* **Decrypt is forwarded as bytes.** The relay validates the received DecryptRequest once, exactly as the
  plugin would (it parses; v2: ciphertext 1..1024 bytes, key_id non-empty and within the limits,
  annotations within the limits; v1: ciphertext 1..65535 bytes) and refuses a bad one with
  :class:`InvalidRequest` without calling any replica; a good one goes upstream as the very bytes the
  apiserver sent, and the replica's reply comes back as its bytes (checked to parse).

KMS v1 has no key_id on the wire: v1 Encrypt uses the same agreed-key rule, but a replica that rotates
between the check and the call cannot be detected from its reply (the window is one check interval).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from prometheus_client import Counter, Gauge

from kubeshield.envelope.limits import validate_annotations, validate_key_id
from kubeshield.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    ContractViolation,
    InvalidCiphertext,
    InvalidRequest,
    KubeshieldError,
)
from kubeshield.kms.api.v1beta1 import api_pb2 as v1_pb2
from kubeshield.kms.api.v2 import api_pb2 as v2_pb2
from kubeshield.kms.logging import fields, get_logger
from kubeshield.kms.metrics import KMSMetrics
from kubeshield.kms.relay_upstream import AioUpstream, failure_reason
from kubeshield.kms.service import (
    API_VERSION,
    MAX_V1_CIPHERTEXT,
    MAX_V2_CIPHERTEXT,
    EncryptReply,
    HealthState,
    StatusReply,
)

__all__ = [
    "DEFAULT_BUDGET",
    "AioUpstream",
    "CredentialSource",
    "KeyChange",
    "Relay",
    "Upstream",
    "UpstreamState",
    "check_v1_decrypt_request",
    "check_v2_decrypt_request",
    "parse_upstreams",
]

DEFAULT_BUDGET = 2.5
_log = get_logger("kms.relay")
_T = TypeVar("_T")


class Upstream(Protocol):
    """One service replica as the relay sees it. Failures raise the kubeshield error tree.

    ``decrypt`` and ``v1_decrypt`` take the serialized request and return the serialized reply.
    """

    name: str

    async def status(self, *, timeout: float) -> StatusReply: ...

    async def encrypt(self, plaintext: bytes, *, uid: str, timeout: float) -> EncryptReply: ...

    async def decrypt(self, request: bytes, *, timeout: float) -> bytes: ...

    async def v1_encrypt(self, plain: bytes, *, timeout: float) -> bytes: ...

    async def v1_decrypt(self, request: bytes, *, timeout: float) -> bytes: ...

    async def close(self) -> None: ...


class CredentialSource(Protocol):
    """Where renewed client credentials come from (:class:`kubeshield.kms.tls.ReloadingClientCredentials`)."""

    def poll(self) -> Any:
        """New credentials when the files changed and check out, else None."""
        ...


def parse_upstreams(text: str) -> list[str]:
    """``https://h1:9443,https://h2:9443`` -> ``["h1:9443", "h2:9443"]``. Raises ConfigError."""
    targets: list[str] = []
    for raw in text.split(","):
        url = raw.strip()
        if not url:
            continue
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.netloc or parts.path not in ("", "/"):
            raise ConfigError(f"upstream {url!r} must be https://HOST:PORT")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"upstream {url!r} has an invalid port") from None
        if port is None:
            raise ConfigError(f"upstream {url!r} has no port")
        targets.append(parts.netloc)
    if not targets:
        raise ConfigError("--upstream: at least one https://HOST:PORT is required")
    if len(set(targets)) != len(targets):
        raise ConfigError("--upstream lists the same replica twice")
    return targets


def _parse_request(message_type: Any, request: bytes) -> Any:
    try:
        return message_type.FromString(request)
    except Exception:  # google.protobuf.message.DecodeError and friends
        raise InvalidRequest("malformed request: not a valid protobuf message") from None


def _check_ciphertext(ciphertext: bytes, *, limit: int) -> None:
    if not ciphertext:
        raise InvalidRequest("ciphertext is empty")
    if len(ciphertext) > limit:
        raise InvalidRequest(f"ciphertext is larger than {limit} bytes")


def check_v2_decrypt_request(request: bytes) -> None:
    """Refuse a serialized v2 DecryptRequest the plugin would refuse (InvalidRequest naming why)."""
    message = _parse_request(v2_pb2.DecryptRequest, request)
    _check_ciphertext(message.ciphertext, limit=MAX_V2_CIPHERTEXT)
    if not message.key_id:
        raise InvalidRequest("key_id is empty")
    try:
        validate_key_id(message.key_id)
        validate_annotations(dict(message.annotations))
    except ContractViolation as exc:  # the caller's input, not a reply
        raise InvalidRequest(str(exc)) from None


def check_v1_decrypt_request(request: bytes) -> None:
    """Refuse a serialized v1beta1 DecryptRequest the plugin would refuse (InvalidRequest naming why)."""
    _check_ciphertext(_parse_request(v1_pb2.DecryptRequest, request).cipher, limit=MAX_V1_CIPHERTEXT)


@dataclass(frozen=True, slots=True)
class UpstreamState:
    """What the relay last learned about one replica (``checked_at`` on the relay's clock)."""

    name: str
    healthy: bool = False
    key_id: str | None = None
    detail: str = "not checked yet"
    checked_at: float = 0.0
    reason: str = "unchecked"  # "ok" when healthy, else failure_reason's reason
    since: float | None = None  # when it last turned healthy or unhealthy


@dataclass(slots=True)
class KeyChange:
    """A key_id the relay agreed on: when a replica first reported it and when all healthy ones did."""

    key_id: str
    first_seen: float
    agreed_at: float | None = None

    @property
    def convergence_seconds(self) -> float | None:
        return None if self.agreed_at is None else self.agreed_at - self.first_seen


class _RelayMetrics:
    def __init__(self, metrics: KMSMetrics) -> None:
        self.upstream_healthy = Gauge(
            "kubeshield_relay_upstream_healthy",
            "1 when the replica's last Status succeeded, else 0.",
            ["upstream"],
            registry=metrics.registry,
        )
        self.failovers = Counter(
            "kubeshield_relay_failovers",
            "Calls that a replica failed and the relay retried on another one.",
            ["operation"],
            registry=metrics.registry,
        )
        self.failures = Counter(
            "kubeshield_relay_upstream_failures",
            "Failed calls to a replica by reason (dns, refused, tls, closed, timeout, denied, unhealthy...).",
            ["upstream", "reason"],
            registry=metrics.registry,
        )


_RETRY_ANY = (BackendError, ContractViolation, InvalidCiphertext)  # InvalidRequest is never retried
_MARK_DOWN = (BackendUnavailable, BackendTimeout)


@dataclass
class _Attempt:
    errors: list[KubeshieldError] = field(default_factory=list)


class Relay:
    """Forwards the KMS API to a pool of replicas (see the module docstring).

    The coroutines (``start``, ``check_now``, the five calls, ``close``) run in one event loop; the
    read-only views are safe from any thread.
    """

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        *,
        check_interval: float = 1.0,
        check_timeout: float = 1.0,
        try_timeout: float = 1.0,
        budget: float = DEFAULT_BUDGET,
        clock: Callable[[], float] = time.monotonic,
        metrics: KMSMetrics | None = None,
        tls: CredentialSource | None = None,
    ) -> None:
        if not upstreams:
            raise ConfigError("the relay needs at least one upstream replica")
        if min(check_interval, check_timeout, try_timeout, budget) <= 0:
            raise ValueError("check_interval, check_timeout, try_timeout and budget must be > 0")
        self._upstreams = list(upstreams)
        self.check_interval = check_interval
        self.check_timeout = check_timeout
        self.try_timeout = try_timeout
        self.budget = budget
        self._clock = clock
        self._lock = threading.Lock()  # guards the views read by other threads; never held across await
        self._states = {u.name: UpstreamState(u.name) for u in self._upstreams}
        self._agreed: str | None = None
        self._changes: dict[str, KeyChange] = {}
        self._rr = itertools.count()
        self._check_lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_round: float | None = None
        self._metrics = metrics
        self._relay_metrics = _RelayMetrics(metrics) if metrics is not None else None
        self._tls = tls

    # -- health and agreement --------------------------------------------------------------------

    @property
    def agreed_key_id(self) -> str | None:
        """The key_id every healthy replica served at the last agreement (None before the first)."""
        return self._agreed

    def states(self) -> list[UpstreamState]:
        """The current view of every replica, in upstream order."""
        with self._lock:
            return [self._states[u.name] for u in self._upstreams]

    def key_changes(self) -> list[KeyChange]:
        """Every key_id seen, with its first sighting and agreement times."""
        with self._lock:
            return list(self._changes.values())

    async def _check_one(self, upstream: Upstream) -> UpstreamState:
        try:
            reply = await upstream.status(timeout=self.check_timeout)
        except Exception as exc:
            reason, detail = self._failed(upstream, exc)
            return UpstreamState(upstream.name, False, None, detail, self._clock(), reason)
        return UpstreamState(upstream.name, True, reply.key_id, "ok", self._clock(), "ok")

    def _failed(self, upstream: Upstream, exc: BaseException) -> tuple[str, str]:
        """Classify and count one failed call to ``upstream``."""
        if isinstance(exc, KubeshieldError):
            reason, detail = failure_reason(exc)
        else:  # a bug below us; its text is not ours to vouch for
            reason, detail = "error", type(exc).__name__
        if self._relay_metrics is not None:
            self._relay_metrics.failures.labels(upstream=upstream.name, reason=reason).inc()
        return reason, detail

    def _set_state_locked(self, state: UpstreamState) -> None:
        """Store ``state`` and log a change of health (or of the reason it is down) once."""
        previous = self._states[state.name]
        now = state.checked_at or self._clock()
        if previous.healthy != state.healthy or previous.since is None:
            state = replace(state, since=now)
            if state.healthy:
                down_for = None if previous.since is None else round(now - previous.since, 3)
                _log.info(
                    "replica back" if previous.since is not None else "replica up",
                    extra=fields(upstream=state.name, key_id=state.key_id, down_seconds=down_for),
                )
            else:
                _log.warning(
                    "replica down",
                    extra=fields(upstream=state.name, reason=state.reason, detail=state.detail),
                )
        else:
            state = replace(state, since=previous.since)
            if not state.healthy and state.reason != previous.reason:
                _log.warning(
                    "replica still down",
                    extra=fields(upstream=state.name, reason=state.reason, detail=state.detail),
                )
        self._states[state.name] = state

    async def _reload_credentials(self) -> None:
        if self._tls is None:
            return
        try:
            credentials = self._tls.poll()
        except Exception:  # never let a reload problem stop the checks
            _log.error("relay TLS reload failed", exc_info=True)
            return
        if credentials is None:
            return
        for upstream in self._upstreams:
            use = getattr(upstream, "use_credentials", None)
            if use is not None:
                await use(credentials)

    async def check_now(self) -> None:
        """One round: reload renewed client credentials, Status on every replica concurrently, then
        recompute the agreed key_id."""
        if self._check_lock is None:
            self._check_lock = asyncio.Lock()
        async with self._check_lock:
            await self._reload_credentials()
            results = await asyncio.gather(*(self._check_one(u) for u in self._upstreams))
            with self._lock:
                for state in results:
                    self._set_state_locked(state)
                    if state.key_id is not None and state.key_id not in self._changes:
                        self._changes[state.key_id] = KeyChange(state.key_id, state.checked_at)
                self._agree_locked()
                self._last_round = self._clock()
            if self._relay_metrics is not None:
                for state in results:
                    self._relay_metrics.upstream_healthy.labels(upstream=state.name).set(int(state.healthy))

    def _agree_locked(self) -> None:
        key_ids = {s.key_id for s in self._states.values() if s.healthy}
        if len(key_ids) != 1:
            return
        (key_id,) = key_ids
        if key_id is None or key_id == self._agreed:
            return
        change = self._changes.setdefault(key_id, KeyChange(key_id, self._clock()))
        change.agreed_at = self._clock()
        _log.info(
            "replicas agree on a new key_id",
            extra=fields(key_id=key_id, previous=self._agreed, seconds=change.convergence_seconds),
        )
        self._agreed = key_id
        if self._metrics is not None:
            self._metrics.set_current_key_id(key_id)

    def _mark(self, upstream: Upstream, **changes: Any) -> None:
        with self._lock:
            self._states[upstream.name] = replace(self._states[upstream.name], **changes)

    def _mark_down(self, upstream: Upstream, *, operation: str, reason: str, detail: str) -> None:
        """A call just failed in a way that means the replica is unreachable: skip it until it answers."""
        with self._lock:
            previous = self._states[upstream.name]
            self._set_state_locked(
                replace(previous, healthy=False, reason=reason, detail=f"{operation}: {detail}",
                        checked_at=self._clock())
            )  # fmt: skip
        if self._relay_metrics is not None:
            self._relay_metrics.upstream_healthy.labels(upstream=upstream.name).set(0)

    async def start(self) -> None:
        """Check every replica once now, then keep checking in a background task of the running loop."""
        if self._task is not None:
            return
        await self.check_now()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="kubeshield-relay-health")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                await self.check_now()
            except Exception:  # never let the checker die
                _log.error("replica check failed", exc_info=True)

    async def stop(self) -> None:
        """Stop the checker task."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():  # we were cancelled ourselves, not only the checker
                    raise

    async def close(self) -> None:
        """Stop checking and close every channel."""
        await self.stop()
        for upstream in self._upstreams:
            await upstream.close()

    def is_healthy(self) -> bool:
        """True when a replica is healthy and an agreed key_id exists (relay /healthz and /readyz)."""
        with self._lock:
            healthy = any(s.healthy for s in self._states.values())
            stale = self._last_round is None or self._clock() - self._last_round > 3 * self.check_interval + (
                2 * self.check_timeout
            )
        return healthy and self._agreed is not None and not stale

    def last_health(self) -> HealthState:
        """A summary in the shape the health HTTP server shows."""
        states = self.states()
        healthy = sum(s.healthy for s in states)
        detail = (
            f"{healthy}/{len(states)} replicas healthy; agreed key_id {'set' if self._agreed else 'none'}"
        )
        return HealthState(self.is_healthy(), detail, self._last_round or 0.0, 0.0)

    # -- routing -----------------------------------------------------------------------------------

    def _ordered(self, *, key_id: str | None = None, with_unhealthy: bool = False) -> list[Upstream]:
        """Healthy replicas (optionally only those reporting ``key_id``) in round-robin order."""
        start = next(self._rr)
        n = len(self._upstreams)
        rotated = [self._upstreams[(start + i) % n] for i in range(n)]
        with self._lock:
            states = dict(self._states)
        healthy = [u for u in rotated if states[u.name].healthy]
        if key_id is not None:
            healthy = [u for u in healthy if states[u.name].key_id == key_id]
        if not with_unhealthy:
            return healthy
        return healthy + [u for u in rotated if not states[u.name].healthy]

    async def _try(
        self,
        operation: str,
        candidates: Sequence[Upstream],
        call: Callable[[Upstream, float], Awaitable[_T]],
        *,
        deadline: float,
        attempt: _Attempt,
        accept: Callable[[Upstream, _T], bool] = lambda _u, _r: True,
    ) -> list[_T]:
        """Try ``candidates`` in order; ``[result]`` from the first accepted reply, ``[]`` if none."""
        for upstream in candidates:
            remaining = deadline - self._clock()
            if remaining <= 0.01:
                break
            try:
                result = await call(upstream, min(remaining, self.try_timeout))
            except InvalidRequest:
                raise
            except _RETRY_ANY as exc:
                attempt.errors.append(exc)
                if isinstance(exc, _MARK_DOWN):
                    reason, detail = self._failed(upstream, exc)
                    self._mark_down(upstream, operation=operation, reason=reason, detail=detail)
                if self._relay_metrics is not None:
                    self._relay_metrics.failovers.labels(operation=operation).inc()
                continue
            if accept(upstream, result):
                return [result]
        return []

    @staticmethod
    def _give_up(operation: str, attempt: _Attempt) -> KubeshieldError:
        if any(isinstance(e, InvalidCiphertext) for e in attempt.errors):
            return InvalidCiphertext()
        if attempt.errors and all(isinstance(e, type(attempt.errors[0])) for e in attempt.errors):
            first = attempt.errors[0]
            if not isinstance(first, (BackendUnavailable, InvalidCiphertext)):
                return type(first)(f"every replica failed {operation}: {first}")
        return BackendUnavailable(
            f"no replica could serve {operation} ({len(attempt.errors)} attempts failed)"
        )

    async def status(self) -> StatusReply:
        """Status with the agreed key_id, answered live by the first healthy replica that responds."""
        agreed = self._agreed
        if agreed is None:
            raise BackendUnavailable("the replicas do not agree on a key_id yet")
        answered = await self._try(
            "Status",
            self._ordered(with_unhealthy=True),
            lambda u, t: u.status(timeout=t),
            deadline=self._clock() + self.budget,
            attempt=_Attempt(),
        )
        if not answered:
            raise BackendUnavailable("no replica answered Status")
        metadata = getattr(answered[0], "metadata", ())  # the answering replica's keyring identity
        return StatusReply(version=API_VERSION, healthz="ok", key_id=agreed, metadata=metadata)

    async def encrypt(self, plaintext: bytes, *, uid: str) -> EncryptReply:
        """Encrypt on a healthy replica that serves the agreed key_id; never returns another key_id."""
        deadline = self._clock() + self.budget
        attempt = _Attempt()

        def accept(upstream: Upstream, reply: EncryptReply) -> bool:
            if reply.key_id == self._agreed:
                return True
            self._mark(upstream, key_id=reply.key_id)  # it rotated since the last check
            _log.info("replica encrypted under a key_id not agreed yet", extra=fields(upstream=upstream.name))
            return False

        for round_ in range(2):
            agreed = self._agreed
            if agreed is None:
                raise BackendUnavailable("the replicas do not agree on a key_id yet")
            reply = await self._try(
                "Encrypt",
                self._ordered(key_id=agreed),
                lambda u, t: u.encrypt(plaintext, uid=uid, timeout=t),
                deadline=deadline,
                attempt=attempt,
                accept=accept,
            )
            if reply:
                return reply[0]
            if round_ == 0 and deadline - self._clock() > self.check_timeout:
                await self.check_now()  # the agreement may have moved (a rotation finished)
        raise (
            self._give_up("Encrypt", attempt)
            if attempt.errors
            else BackendUnavailable("no healthy replica serves the agreed key_id")
        )

    async def _failover(
        self,
        operation: str,
        candidates: Sequence[Upstream],
        call: Callable[[Upstream, float], Awaitable[_T]],
    ) -> _T:
        """The first answer of ``candidates`` in order within the call budget, or the combined failure."""
        attempt = _Attempt()
        answer = await self._try(
            operation, candidates, call, deadline=self._clock() + self.budget, attempt=attempt
        )
        if answer:
            return answer[0]
        raise self._give_up(operation, attempt)

    async def decrypt(self, request: bytes) -> bytes:
        """Serialized v2 DecryptRequest -> serialized DecryptResponse of the first replica that can.

        The request is checked once here (InvalidRequest, no replica called) and forwarded unchanged;
        fails over on any replica failure.
        """
        check_v2_decrypt_request(request)
        return await self._failover(
            "Decrypt", self._ordered(with_unhealthy=True), lambda u, t: u.decrypt(request, timeout=t)
        )

    async def v1_encrypt(self, plain: bytes) -> bytes:
        """KMS v1 Encrypt on a healthy replica that serves the agreed key."""
        agreed = self._agreed
        if agreed is None:
            raise BackendUnavailable("the replicas do not agree on a key_id yet")
        return await self._failover(
            "v1.Encrypt", self._ordered(key_id=agreed), lambda u, t: u.v1_encrypt(plain, timeout=t)
        )

    async def v1_decrypt(self, request: bytes) -> bytes:
        """Serialized v1beta1 DecryptRequest -> serialized DecryptResponse, checked once, with failover."""
        check_v1_decrypt_request(request)
        return await self._failover(
            "v1.Decrypt", self._ordered(with_unhealthy=True), lambda u, t: u.v1_decrypt(request, timeout=t)
        )
