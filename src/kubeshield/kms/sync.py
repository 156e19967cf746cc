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

A version is never dropped by sync. Rotate on **one** replica at a time: two rotations racing on
different replicas create the same version number with different keys, which is detected as divergence
and left to the operator (both sides keep serving what they have; neither is overwritten).

:class:`SyncedBackend` wraps the local backend so that a replica whose last successful sync is older
than ``stale_after`` (partitioned from etcd), or whose keyring diverged, fails its health check. The
replica's Status then fails, and the relay leaves it out of the key_id agreement: a partitioned replica
never blocks a rotation, and never receives Encrypt under a key the others lack.
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
from typing import Protocol

from kubeshield.errors import ConfigError, KeyringError
from kubeshield.keys.base import Health, KeyBackend, KeyVersionInfo, Refreshable, Rotatable, Wrapped
from kubeshield.keys.files import exclusive_lock, fsync_directory
from kubeshield.keys.keyring import KeyringFile, KeyringInfo
from kubeshield.kms.logging import fields, get_logger

__all__ = [
    "DEFAULT_PREFIX",
    "KVStore",
    "KeyringSync",
    "SyncOutcome",
    "SyncedBackend",
    "Versioned",
]

DEFAULT_PREFIX = "/kubeshield/keyring/"
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
    ok: bool
    detail: str
    at: float | None  # clock time of the last successful round


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
        on_change: Callable[[], object] | None = None,
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
        self._on_change = on_change
        self._state = _SyncState(False, "not synchronised yet", None)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set_on_change(self, callback: Callable[[], object] | None) -> None:
        """Call ``callback`` after every adoption (e.g. ``KMSService.refresh_now`` to reload at once)."""
        self._on_change = callback

    # -- health ------------------------------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        """(ok, detail): the last round succeeded and is younger than ``stale_after``."""
        state = self._state
        if not state.ok:
            return False, f"keyring sync: {state.detail}"
        if state.at is None or self._clock() - state.at > self.stale_after:
            return False, f"keyring sync: no successful sync with etcd for over {self.stale_after:g}s"
        return True, "ok"

    # -- one round ---------------------------------------------------------------------------------

    def sync_once(self) -> SyncOutcome:
        """One round of the rule table. Raises KeyringError (divergence) or the store's error."""
        with self._lock:
            try:
                outcome = self._sync_locked()
            except Exception as exc:
                detail = str(exc) if isinstance(exc, (KeyringError, ConfigError)) else type(exc).__name__
                if self._state.ok:
                    _log.error("keyring sync failed", extra=fields(detail=detail))
                self._state = _SyncState(False, detail[:300], self._state.at)
                raise
            self._state = _SyncState(True, outcome.value, self._clock())
        if outcome is SyncOutcome.ADOPTED and self._on_change is not None:
            self._on_change()
        return outcome

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
                self._adopt(staged.path, expected=local_bytes)
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
            "replicas rotated at once?); refusing to overwrite either"
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

    def _adopt(self, staged: Path, *, expected: bytes) -> None:
        with exclusive_lock(self.path):
            if self.path.read_bytes() != expected:
                raise KeyringError(f"{self.path}: changed during sync; will retry")
            os.replace(staged, self.path)
            fsync_directory(self.path.parent)

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
