"""Key-version sync for the local backend: every replica serves the same KEK versions, through etcd.

Backends whose key lives in a shared service (transit, awskms, an HSM cluster) need no sync: the service
is the source of truth. The ``local`` backend keeps its KEK versions in a keyring file on each replica,
so the replicas exchange that file through one etcd key.

What is stored (etcd key ``<prefix>keyring``, default ``/kubeshield/keyring/keyring``): the keyring file's
bytes exactly as :mod:`kubeshield.keys.keyring` writes them. Its ``material`` is sealed with Argon2id +
AES-256-GCM under the keyring passphrase, so etcd only ever holds *wrapped* KEK versions; a keyring
without a passphrase (``kdf: none``) is refused, because its keys would sit in etcd in the clear.

The rule, run every ``interval`` seconds (etcd's Watch service is not in our generated stubs, so this polls
one Range, which is one small read per replica per interval) and once at startup:

=================================================  =================================================
etcd holds                                         this replica does
=================================================  =================================================
nothing                                            creates the key from its file (Txn: create only if
                                                   the key's mod_revision is still 0)
the same keyring and the same versions             nothing
the same keyring, a superset of our versions       checks it opens with our passphrase, then replaces
                                                   the local file atomically and reloads the backend
the same keyring, a subset of our versions         publishes its file (Txn compare-and-swap on the
(``kubeshield keys rotate`` ran here)              mod_revision it read; a lost race is retried next
                                                   round)
another keyring, or versions neither side has      refuses: the replica reports itself unhealthy
=================================================  =================================================

A version is never dropped by sync. Rotate through etcd (``kubeshield keys rotate --etcd-endpoints ...``:
the new version is written with a compare-and-swap on the etcd copy, so two rotations can never create
the same version twice; every replica then adopts it). Rotating one replica's keyring file still works
(that replica publishes it), but two such rotations racing on different replicas create the same version
number with different keys: that is *divergence*, and it is left to the operator (neither side is
overwritten; ``kubeshield keys sync --from etcd|local`` resolves it, see :mod:`kubeshield.kms.sync_ops`).

Health (:class:`SyncedBackend`, :meth:`KeyringSync.healthy`):

* A replica whose keyring **diverged** from etcd, or whose etcd copy is another keyring, an unprotected
  one, or one its passphrase does not open, is unhealthy, and becomes so *at once*: the round that finds
  it calls ``on_health_change`` (``KMSService.check_health_now``), so Status and ``/readyz`` fail before
  the relay can send it another Encrypt. It stays unhealthy until a round succeeds.
* An **etcd outage alone** does not make a replica unhealthy: it keeps serving the versions it has
  (etcd holds no key the replica needs to serve them). The relay's rule already covers a replica that
  missed a rotation while cut off: it keeps the agreed key_id until every healthy replica serves the new
  one, so no apiserver writes under a key that replica lacks. The outage is visible in the log ("keyring
  sync failed", "keyring sync restored" with its length) and in ``kubeshield_keyring_sync_ok`` /
  ``kubeshield_keyring_sync_last_success_timestamp_seconds``; ``stale()`` says for how long.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol, TypeVar

from prometheus_client import CollectorRegistry, Gauge

from kubeshield.errors import ConfigError, KeyringError
from kubeshield.keys.base import Health, KeyBackend, KeyVersionInfo, Refreshable, Rotatable, Wrapped
from kubeshield.keys.files import exclusive_lock, replace_private
from kubeshield.keys.keyring import KeyringFile, KeyringInfo
from kubeshield.kms.logging import fields, get_logger

__all__ = [
    "DEFAULT_PREFIX",
    "KVStore",
    "KeyringSync",
    "ReconnectingStore",
    "SyncOutcome",
    "SyncedBackend",
    "Versioned",
]

DEFAULT_PREFIX = "/kubeshield/keyring/"
_T = TypeVar("_T")
_log = get_logger("kms.sync")


class Versioned(Protocol):
    """A stored value and its etcd mod_revision."""

    @property
    def value(self) -> bytes: ...

    @property
    def mod_revision(self) -> int: ...


class KVStore(Protocol):
    """The two etcd calls sync needs (``kubeshield.etcd.client.EtcdClient`` has exactly these)."""

    def get(self, key: bytes) -> Versioned | None: ...

    def compare_and_put(self, key: bytes, value: bytes, *, mod_revision: int) -> tuple[bool, object]: ...


class _Closable(KVStore, Protocol):
    def close(self) -> None: ...


class ReconnectingStore:
    """A KVStore that opens its etcd client on first use and opens a new one after any failure.

    So a replica starts (and serves the keyring it has) while etcd is down, and finds etcd again within
    one sync round after it returns, instead of waiting out a long gRPC reconnect backoff.
    """

    def __init__(self, connect: Callable[[], _Closable]) -> None:
        self._connect = connect
        self._client: _Closable | None = None
        self._lock = threading.Lock()

    def _with_client(self, call: Callable[[_Closable], _T]) -> _T:
        with self._lock:
            if self._client is None:
                self._client = self._connect()  # raises EtcdError while etcd is down
            client = self._client
        try:
            return call(client)
        except Exception:
            with self._lock:
                if self._client is client:
                    self._client = None
            with contextlib.suppress(Exception):
                client.close()
            raise

    def get(self, key: bytes) -> Versioned | None:
        return self._with_client(lambda c: c.get(key))

    def compare_and_put(self, key: bytes, value: bytes, *, mod_revision: int) -> tuple[bool, object]:
        return self._with_client(lambda c: c.compare_and_put(key, value, mod_revision=mod_revision))

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


class SyncOutcome(Enum):
    """What one sync round did."""

    IN_SYNC = "in-sync"
    CREATED = "created"
    PUBLISHED = "published"
    ADOPTED = "adopted"
    LOST_RACE = "lost-race"


def _version_set(info: KeyringInfo) -> frozenset[tuple[int, str]]:
    return frozenset((v.version, v.key_id) for v in info.versions)


@dataclass(frozen=True, slots=True)
class _SyncState:
    ok: bool  # the last round succeeded
    detail: str  # what the last round did, or why it failed
    at: float | None  # clock time of the last successful round
    problem: str | None = None  # a divergence-type failure, kept until a round succeeds
    failing_since: float | None = None  # clock time of the first failed round of the current run


def _is_problem(exc: BaseException) -> bool:
    """Failures that make the replica unhealthy (divergence, another keyring, a bad passphrase...)."""
    return isinstance(exc, (KeyringError, ConfigError))


class KeyringSync:
    """Keeps one local keyring file and one etcd key holding the same KEK versions (module docstring)."""

    def __init__(
        self,
        *,
        store: KVStore,
        keyring: str | Path,
        passphrase: bytes | None,
        prefix: str = DEFAULT_PREFIX,
        interval: float = 1.0,
        stale_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_change: Callable[[], object] | None = None,
        on_health_change: Callable[[], object] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        if not prefix.startswith("/"):
            raise ConfigError(f"sync prefix {prefix!r} must start with '/'")
        self._store = store
        self._file = KeyringFile(keyring)
        self.path = self._file.path
        info = self._file.read_info()
        if not info.protected:
            raise ConfigError(
                f"{self.path}: key-version sync through etcd needs a passphrase-protected keyring "
                "(kdf argon2id); this one would put its keys into etcd unencrypted"
            )
        self._passphrase = passphrase
        self.key = (prefix.rstrip("/") + "/keyring").encode("utf-8")
        self.interval = interval
        self.stale_after = stale_after if stale_after is not None else max(5 * interval, 3.0)
        self._clock = clock
        self._wall_clock = wall_clock
        self._on_change = on_change
        self._on_health_change = on_health_change
        self._state = _SyncState(False, "not synchronised yet", None)
        self._last_success_wall: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set_on_change(self, callback: Callable[[], object] | None) -> None:
        """Call ``callback`` after every adoption (e.g. ``KMSService.refresh_now`` to reload at once)."""
        self._on_change = callback

    def set_on_health_change(self, callback: Callable[[], object] | None) -> None:
        """Call ``callback`` when :meth:`healthy` flips (e.g. ``KMSService.check_health_now``)."""
        self._on_health_change = callback

    # -- health ------------------------------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        """(ok, detail): False only for a divergence-type problem (module docstring), never for an outage."""
        state = self._state
        if state.problem is not None:
            return False, f"keyring sync: {state.problem}"
        return True, "ok"

    def stale(self) -> float | None:
        """Seconds since the last successful round when that is longer than ``stale_after``, else None."""
        state = self._state
        since = state.at if state.at is not None else state.failing_since
        if state.ok or since is None:
            return None
        age = self._clock() - since
        return age if age > self.stale_after else None

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """``kubeshield_keyring_sync_ok``, ``..._diverged`` and ``..._last_success_timestamp_seconds``."""
        Gauge(
            "kubeshield_keyring_sync_ok",
            "1 when the last keyring sync round with etcd succeeded, else 0.",
            registry=registry,
        ).set_function(lambda: float(self._state.ok))
        Gauge(
            "kubeshield_keyring_sync_diverged",
            "1 while the local keyring and the etcd copy cannot be reconciled (the replica is unhealthy).",
            registry=registry,
        ).set_function(lambda: float(self._state.problem is not None))
        Gauge(
            "kubeshield_keyring_sync_last_success_timestamp_seconds",
            "Unix time of the last successful keyring sync round with etcd (0 before the first).",
            registry=registry,
        ).set_function(lambda: self._last_success_wall or 0.0)

    # -- one round ---------------------------------------------------------------------------------

    def sync_once(self) -> SyncOutcome:
        """One round of the rule table. Raises KeyringError (divergence) or the store's error."""
        notify = False  # healthy() flipped: tell on_health_change, outside the lock
        try:
            with self._lock:
                before = self._state
                try:
                    outcome = self._sync_locked()
                except Exception as exc:
                    self._state = self._failed(before, exc)
                    notify = (self._state.problem is None) != (before.problem is None)
                    raise
                now = self._clock()
                if before.failing_since is not None:
                    _log.info(
                        "keyring sync restored",
                        extra=fields(
                            outcome=outcome.value, failed_seconds=round(now - before.failing_since, 3)
                        ),
                    )
                self._state = _SyncState(True, outcome.value, now)
                self._last_success_wall = self._wall_clock()
                notify = before.problem is not None
        finally:
            if notify:
                self._health_changed()
        if outcome is SyncOutcome.ADOPTED and self._on_change is not None:
            self._on_change()
        return outcome

    def _failed(self, before: _SyncState, exc: Exception) -> _SyncState:
        """The state after a failed round (logged once per outage, and once per new problem)."""
        detail = (str(exc) if isinstance(exc, (KeyringError, ConfigError)) else type(exc).__name__)[:300]
        problem = detail if _is_problem(exc) else before.problem
        first = before.failing_since is None  # the first failed round since the last success
        if first:
            _log.error("keyring sync failed", extra=fields(detail=detail, diverged=problem is not None))
        elif problem is not None and problem != before.problem:
            _log.error("keyring diverged from etcd", extra=fields(detail=detail))
        return _SyncState(False, detail, before.at, problem, self._clock() if first else before.failing_since)

    def _health_changed(self) -> None:
        if self._on_health_change is not None:
            try:
                self._on_health_change()
            except Exception:  # a callback must not break the sync loop
                _log.error("health-change callback failed", exc_info=True)

    def _sync_locked(self) -> SyncOutcome:
        local_bytes = self.path.read_bytes()
        local = self._file.read_info()
        remote = self._store.get(self.key)
        if remote is None:
            created, _ = self._store.compare_and_put(self.key, local_bytes, mod_revision=0)
            if created:
                _log.info("published keyring to etcd", extra=fields(versions=len(local.versions)))
                return SyncOutcome.CREATED
            return SyncOutcome.LOST_RACE
        if remote.value == local_bytes:
            return SyncOutcome.IN_SYNC
        with self._staged(remote.value) as staged:
            theirs = staged.read_info()
            if theirs.keyring_id != local.keyring_id:
                raise KeyringError(
                    f"{self.path}: etcd holds a different keyring ({theirs.keyring_id}, ours is "
                    f"{local.keyring_id}); refusing to synchronise"
                )
            ours_set, theirs_set = _version_set(local), _version_set(theirs)
            if ours_set == theirs_set:
                return SyncOutcome.IN_SYNC
            if ours_set < theirs_set:
                if not theirs.protected:
                    raise KeyringError(f"{self.path}: etcd holds an unprotected keyring; refusing it")
                staged.load(self._passphrase)  # must open with our passphrase (and verify every keyId)
                if not self._adopt(staged.path, expected=local_bytes):
                    return SyncOutcome.LOST_RACE  # rotated here meanwhile: the next round decides
                _log.info(
                    "adopted keyring from etcd",
                    extra=fields(versions=len(theirs.versions), primary=theirs.primary.key_id),
                )
                return SyncOutcome.ADOPTED
        if theirs_set < ours_set:
            ok, _ = self._store.compare_and_put(self.key, local_bytes, mod_revision=remote.mod_revision)
            if ok:
                _log.info(
                    "published new keyring versions to etcd",
                    extra=fields(versions=len(local.versions), primary=local.primary.key_id),
                )
                return SyncOutcome.PUBLISHED
            return SyncOutcome.LOST_RACE
        raise KeyringError(
            f"{self.path}: keyring diverged from etcd (each side has versions the other lacks; were two "
            "replicas rotated at once?); refusing to overwrite either. Resolve it with `kubeshield keys "
            "sync --from etcd` on this replica (see docs/service-mode.md)"
        )

    @contextlib.contextmanager
    def _staged(self, data: bytes) -> Iterator[KeyringFile]:
        """The remote bytes in a 0600 temp file beside the keyring (removed unless adopted)."""
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.etcd.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), 0o600)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            yield KeyringFile(name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def _adopt(self, staged: Path, *, expected: bytes) -> bool:
        """Replace the keyring with ``staged`` unless it changed since we read it (then: False, retry)."""
        with exclusive_lock(self.path):
            if self.path.read_bytes() != expected:
                return False
            replace_private(staged, self.path)  # keeps the keyring's owner, group and mode
            return True

    # -- background --------------------------------------------------------------------------------

    def start(self) -> None:
        """Run one round now (its failure is logged, not raised), then poll in a background thread."""
        if self._thread is not None:
            return
        with contextlib.suppress(Exception):
            self.sync_once()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="kubeshield-keyring-sync", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # recorded in the health state and logged
                self.sync_once()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 15.0)
            self._thread = None


class SyncedBackend:
    """A local backend whose health also requires a recent, non-diverged keyring sync."""

    def __init__(self, backend: KeyBackend, sync: KeyringSync) -> None:
        self._backend = backend
        self.sync = sync
        self.name = backend.name

    def wrap(self, plaintext: bytes, *, aad: bytes = b"") -> Wrapped:
        return self._backend.wrap(plaintext, aad=aad)

    def unwrap(self, wrapped: Wrapped, *, aad: bytes = b"") -> bytes:
        return self._backend.unwrap(wrapped, aad=aad)

    def key_id(self) -> str:
        return self._backend.key_id()

    def check_health(self) -> Health:
        """The backend's own round trip, failed while the keyring diverged (never for an etcd outage)."""
        ok, detail = self.sync.healthy()
        if not ok:
            return Health(False, None, detail, time.time(), 0.0)
        return self._backend.check_health()

    def refresh(self) -> bool:
        if isinstance(self._backend, Refreshable):
            return self._backend.refresh()
        return False

    def rotate(self) -> str:
        if not isinstance(self._backend, Rotatable):
            raise ConfigError(f"the {self.name} backend cannot rotate")
        key_id = self._backend.rotate()
        with contextlib.suppress(Exception):
            self.sync.sync_once()  # publish at once; the poller retries on failure
        return key_id

    def versions(self) -> list[KeyVersionInfo]:
        versions = getattr(self._backend, "versions", None)
        return list(versions()) if callable(versions) else []

    def close(self) -> None:
        self.sync.stop()
        self._backend.close()
