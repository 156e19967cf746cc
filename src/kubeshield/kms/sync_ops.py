"""One-shot operations on the cluster keyring in etcd (the copy :mod:`kubeshield.kms.sync` keeps in step).

* :func:`adopt_keyring` - a replica that starts with an empty keyring path (the Helm chart's emptyDir)
  fetches the cluster keyring from etcd, checks that it is passphrase-protected and opens with the
  replica's passphrase (every keyId is verified against its key), and installs it atomically (0600, in a
  0700 directory). It waits up to ``timeout`` for etcd to answer and hold a keyring, then fails with a
  message naming the command that publishes one. It never creates a keyring: a replica that made its own
  would serve a key no other replica has (and sync would refuse it).
* :func:`rotate_in_etcd` - ``kubeshield keys rotate --etcd-endpoints ...``: reads the etcd copy, adds a
  new primary version to it in a private temp directory, and writes it back with a compare-and-swap on
  the mod_revision it read. A concurrent writer makes the swap fail; the rotation is then redone on the
  new copy (up to ``attempts`` times). So two rotations never create the same version twice, and every
  replica adopts the result by the ordinary sync rule (etcd holds a superset of its versions).
* :func:`resolve` - ``kubeshield keys sync --from etcd|local``: makes one side equal to the other. It is
  the way to publish the cluster keyring the first time (``--from local`` while etcd holds nothing), to
  install it on a node (``--from etcd``), and to end a divergence. It refuses to drop any version the
  overwritten side holds unless ``allow_drop`` says so, and names those versions: data encrypted under a
  dropped version can no longer be decrypted by the replicas that adopt the result.

Why the first keyring is published explicitly and not by "the first replica with ``--create-keyring``":
a replica that finds no keyring in etcd cannot tell a new cluster from a wrong ``--sync-prefix``, a
wrong etcd, or an etcd restored without that key. Creating one there would silently start a second
keyring (its data unreadable by the real one) and, in the common case, a keyring nobody has backed up.
``keys init`` + ``keys backup`` + ``keys sync --from local`` is done once, by a person, on purpose; a
replica only ever adopts.

Every etcd value here is the keyring file itself (Argon2id + AES-GCM sealed material); an unprotected
keyring is refused on both sides, so no KEK ever reaches etcd in the clear.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kubeshield.errors import ConfigError, EtcdError, KeyringError, WrongPassphrase
from kubeshield.keys.files import exclusive_lock, fsync_directory, write_private_atomic
from kubeshield.keys.keyring import KeyringFile, KeyringInfo
from kubeshield.kms.logging import fields, get_logger
from kubeshield.kms.sync import DEFAULT_PREFIX, KVStore

__all__ = [
    "PUBLISH_HINT",
    "Resolution",
    "Rotation",
    "adopt_keyring",
    "etcd_key",
    "resolve",
    "rotate_in_etcd",
]

_log = get_logger("kms.sync")

#: How the cluster keyring first gets into etcd (quoted by every error that finds none).
PUBLISH_HINT = (
    "create the cluster keyring once with `kubeshield keys init --keyring FILE --passphrase-file P`, back "
    "it up, and publish it with `kubeshield keys sync --from local --keyring FILE --passphrase-file P "
    "--etcd-endpoints URLS [--cacert --cert --key] [--sync-prefix PREFIX]`"
)


def etcd_key(prefix: str = DEFAULT_PREFIX) -> bytes:
    """The etcd key that holds the keyring under ``prefix`` (``/kubeshield/keyring/keyring``)."""
    if not prefix.startswith("/"):
        raise ConfigError(f"sync prefix {prefix!r} must start with '/'")
    return (prefix.rstrip("/") + "/keyring").encode("utf-8")


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """A private (0700) temp directory, removed with everything in it."""
    with tempfile.TemporaryDirectory(prefix="kubeshield-keyring-") as name:
        os.chmod(name, 0o700)
        yield Path(name)


def _open_remote(data: bytes, passphrase: bytes | None, *, where: Path, key: bytes) -> KeyringInfo:
    """Check bytes from etcd: a protected keyring that opens with ``passphrase``. Raises KeyringError."""
    staged = where / "etcd-keyring"
    write_private_atomic(staged, data)
    keyring = KeyringFile(staged)
    try:
        info = keyring.read_info()
    except KeyringError as exc:
        raise KeyringError(
            f"etcd key {key.decode()!r} does not hold a valid keyring: {_strip(exc)}"
        ) from None
    if not info.protected:
        raise KeyringError(f"etcd key {key.decode()!r} holds an unprotected keyring; refusing it")
    if passphrase is None:
        raise ConfigError("the cluster keyring is passphrase-protected: give --passphrase-file")
    try:
        keyring.load(passphrase)  # every keyId is checked against its key here
    except WrongPassphrase:
        raise WrongPassphrase() from None  # (the etcd copy: "the passphrase does not open this keyring")
    except KeyringError as exc:
        raise KeyringError(f"etcd key {key.decode()!r}: {_strip(exc)}") from None
    return info


def _strip(exc: KeyringError) -> str:
    """A KeyringError's message without the temp path it names."""
    text = str(exc)
    head, sep, rest = text.partition(": ")
    return rest if sep and head.startswith(("/", ".")) else text or type(exc).__name__


def adopt_keyring(
    *,
    store: KVStore,
    keyring: str | Path,
    passphrase: bytes | None,
    prefix: str = DEFAULT_PREFIX,
    timeout: float = 20.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> KeyringInfo:
    """Install the cluster keyring from etcd at ``keyring`` (which must not exist yet). See the module doc.

    Raises ConfigError when etcd holds no keyring (or cannot be reached) within ``timeout``, KeyringError
    when what it holds is not a protected keyring that opens with ``passphrase``.
    """
    path = Path(keyring)
    key = etcd_key(prefix)
    if os.path.lexists(path):
        raise ConfigError(f"{path}: a keyring is already there; adoption only fills an empty keyring path")
    deadline = clock() + timeout
    delay = 0.2
    while True:
        try:
            remote = store.get(key)
            problem = None if remote is not None else f"etcd holds no keyring under {key.decode()!r}"
        except EtcdError as exc:
            remote, problem = None, f"etcd is not reachable ({exc})"
        if remote is not None:
            break
        if clock() + delay > deadline:
            raise ConfigError(f"{path}: no keyring file and {problem}; {PUBLISH_HINT}")
        _log.warning(
            "waiting for the cluster keyring in etcd", extra=fields(detail=problem, key=key.decode())
        )
        sleep(delay)
        delay = min(delay * 2, 2.0)
    with _scratch() as scratch:
        info = _open_remote(remote.value, passphrase, where=scratch, key=key)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with exclusive_lock(path):
            if os.path.lexists(path):
                raise ConfigError(f"{path}: a keyring appeared while adopting; refusing to replace it")
            write_private_atomic(path, remote.value)
            fsync_directory(path.parent)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the adopted keyring: {exc.strerror}") from None
    _log.info(
        "adopted the cluster keyring from etcd",
        extra=fields(keyring_id=info.keyring_id, versions=len(info.versions), primary=info.primary.key_id),
    )
    return KeyringFile(path).read_info()


@dataclass(frozen=True, slots=True)
class Rotation:
    """What :func:`rotate_in_etcd` wrote: the new primary and how many swaps it took."""

    keyring_id: str
    key_id: str
    versions: int
    attempts: int


def rotate_in_etcd(
    *,
    store: KVStore,
    passphrase: bytes | None,
    prefix: str = DEFAULT_PREFIX,
    attempts: int = 5,
) -> Rotation:
    """Add a new primary version to the etcd copy with a compare-and-swap (module docstring).

    Raises ConfigError when etcd holds no keyring, KeyringError when it is not a protected keyring that
    opens with ``passphrase`` or the swap kept losing to other writers.
    """
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    key = etcd_key(prefix)
    for attempt in range(1, attempts + 1):
        remote = store.get(key)
        if remote is None:
            raise ConfigError(f"etcd holds no keyring under {key.decode()!r}; {PUBLISH_HINT}")
        with _scratch() as scratch:
            _open_remote(remote.value, passphrase, where=scratch, key=key)
            rotated = KeyringFile(scratch / "etcd-keyring").rotate(passphrase=passphrase)
            data = rotated.info.path.read_bytes()
        ok, _ = store.compare_and_put(key, data, mod_revision=remote.mod_revision)
        if ok:
            info = rotated.info
            _log.info(
                "rotated the cluster keyring in etcd",
                extra=fields(primary=info.primary.key_id, versions=len(info.versions), attempts=attempt),
            )
            return Rotation(info.keyring_id, info.primary.key_id, len(info.versions), attempt)
        _log.info(
            "etcd keyring changed during rotation; rotating the new copy", extra=fields(attempt=attempt)
        )
    raise KeyringError(
        f"etcd key {key.decode()!r} kept changing during rotation ({attempts} attempts); nothing was written "
        "by this rotation: run it again"
    )


@dataclass(frozen=True, slots=True)
class Resolution:
    """What :func:`resolve` did (or, with ``dry_run``, would do)."""

    action: Literal["in-sync", "published", "installed"]
    keyring_id: str
    versions: int
    dropped: tuple[str, ...]  # key_ids the overwritten side held and the result does not


def _ids(info: KeyringInfo | None) -> list[str]:
    return [] if info is None else [v.key_id for v in info.versions]


def resolve(
    *,
    store: KVStore,
    keyring: str | Path,
    passphrase: bytes | None,
    source: Literal["etcd", "local"],
    prefix: str = DEFAULT_PREFIX,
    allow_drop: bool = False,
    dry_run: bool = False,
) -> Resolution:
    """Make the etcd copy equal to the local keyring (``source="local"``) or the reverse (module doc).

    Refuses (KeyringError naming the key_ids) to drop versions the overwritten side holds unless
    ``allow_drop``. Raises ConfigError when the source side has no keyring.
    """
    path = Path(keyring)
    key = etcd_key(prefix)
    local_file = KeyringFile(path)
    local_bytes = path.read_bytes() if local_file.exists() else None
    with _scratch() as scratch:
        remote = store.get(key)
        theirs = (
            _open_remote(remote.value, passphrase, where=scratch, key=key) if remote is not None else None
        )
    ours: KeyringInfo | None = None
    if local_bytes is not None:
        ours = local_file.read_info()
        if source == "local":
            if not ours.protected:
                raise KeyringError(
                    f"{path}: an unprotected keyring is never published to etcd; seal it first"
                )
            local_file.load(passphrase)  # opens with the passphrase the replicas use
    if source == "local":
        if ours is None or local_bytes is None:
            raise ConfigError(f"{path}: no keyring file to publish")
        result, target, dropped_from = ours, theirs, "etcd"
    else:
        if theirs is None or remote is None:
            raise ConfigError(f"etcd holds no keyring under {key.decode()!r}; {PUBLISH_HINT}")
        result, target, dropped_from = theirs, ours, str(path)
    kept = set(_ids(result))
    dropped = tuple(k for k in _ids(target) if k not in kept)
    if target is not None and target.keyring_id != result.keyring_id:
        dropped = tuple(_ids(target))  # another keyring: every one of its versions goes
    same = remote is not None and local_bytes is not None and remote.value == local_bytes
    if same or (target is not None and not dropped and set(_ids(target)) == kept):
        return Resolution("in-sync", result.keyring_id, len(result.versions), ())
    if dropped and not allow_drop:
        raise KeyringError(
            f"this would drop {len(dropped)} version(s) that {dropped_from} holds: {', '.join(dropped)}. "
            "Data encrypted under them becomes unreadable for every replica that adopts the result (check "
            "with `kubeshield etcd audit` first); give --allow-drop to do it anyway"
        )
    action: Literal["published", "installed"] = "published" if source == "local" else "installed"
    if dry_run:
        return Resolution(action, result.keyring_id, len(result.versions), dropped)
    if source == "local":
        assert local_bytes is not None
        ok, _ = store.compare_and_put(key, local_bytes, mod_revision=remote.mod_revision if remote else 0)
        if not ok:
            raise KeyringError(
                f"etcd key {key.decode()!r} changed while resolving; nothing was written: run again"
            )
    else:
        assert remote is not None
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with exclusive_lock(path):
                now = path.read_bytes() if local_file.exists() else None
                if now != local_bytes:
                    raise KeyringError(f"{path}: changed while resolving; nothing was written: run again")
                write_private_atomic(path, remote.value)
                fsync_directory(path.parent)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot write the keyring: {exc.strerror}") from None
    _log.info(
        "keyring sync resolved",
        extra=fields(action=action, keyring_id=result.keyring_id, dropped=",".join(dropped) or None),
    )
    return Resolution(action, result.keyring_id, len(result.versions), dropped)
