"""``edit``: decrypt into a private temp file, run the editor, re-encrypt only what changed.

* the temp file is created 0600 inside a fresh 0700 directory on a memory-backed file system
  (``/dev/shm`` when it exists and is writable), so plaintext never touches a disk there;
* it is removed on every exit path (editor failure, parse error, Ctrl-C, success);
* the editor is ``$SOPS_EDITOR``, else ``$EDITOR``, else the first of ``vim``, ``nano``, ``vi`` found;
* unchanged values keep their IVs (the decrypting cipher remembers them), so the diff shows only what
  was edited; the data key and master keys stay the same; a new MAC is sealed;
* an unchanged file exits 200 (sops' ``FileHasNotBeenModified``) and writes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kubeshield.sops.document import decrypt_document, encrypt_document, parse_encrypted, recover_data_key
from kubeshield.sops.errors import ExitCode, SopsError
from kubeshield.sops.masterkeys.base import KeyEnv
from kubeshield.sops.stores import store_for

__all__ = ["edit_bytes", "editor_command", "private_tempdir"]


def editor_command(environ: dict[str, str]) -> list[str]:
    for name in ("SOPS_EDITOR", "EDITOR"):
        value = environ.get(name)
        if value:
            return shlex.split(value)
    for candidate in ("vim", "nano", "vi"):
        found = shutil.which(candidate)
        if found:
            return [found]
    raise SopsError("no editor found: set SOPS_EDITOR or EDITOR", code=ExitCode.NO_EDITOR_FOUND)


@contextlib.contextmanager
def private_tempdir(*, base: str | None = None) -> Iterator[Path]:
    """A 0700 directory on /dev/shm when possible, removed with everything in it afterwards."""
    if base is None and os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        base = "/dev/shm"
    directory = Path(tempfile.mkdtemp(prefix="kubeshield-sops-", dir=base))
    try:
        os.chmod(directory, 0o700)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def edit_bytes(
    data: bytes,
    *,
    where: str,
    in_format: str,
    env: KeyEnv,
    run_editor: Callable[[Path], int],
    clock: Callable[[], float] = time.time,
    tmp_base: str | None = None,
) -> bytes:
    """The re-encrypted file after ``run_editor(path)`` edited its plaintext. Raises ``SopsError``."""
    store = store_for(in_format)
    doc = parse_encrypted(data, store=store, where=where)
    key = recover_data_key(doc.metadata, env=env)
    plain = decrypt_document(doc, data_key=key, where=where)
    text = store.emit_plain(plain.branches)
    suffix = Path(where).suffix or ".txt"
    with private_tempdir(base=tmp_base) as directory:
        path = directory / f"edit{suffix}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(text)
        before = hashlib.sha256(text).digest()
        status = run_editor(path)
        if status != 0:
            raise SopsError(
                f"the editor exited with status {status}; {where} is unchanged", code=ExitCode.ERROR_GENERIC
            )
        edited = path.read_bytes()
    if hashlib.sha256(edited).digest() == before:
        raise SopsError("File has not changed, exiting.", code=ExitCode.FILE_HAS_NOT_BEEN_MODIFIED)
    branches = store.load_plain(edited, where=f"{where} (edited)")
    if any(store.has_sops_key(b) for b in branches):
        raise SopsError(
            f"{where}: the edited file must not hold a top-level 'sops' key", code=ExitCode.ERROR_GENERIC
        )
    new = encrypt_document(branches, metadata=plain.metadata, data_key=key, cipher=plain.cipher, clock=clock)
    return store.emit_encrypted(new.branches, new.metadata)


def run_editor_process(command: list[str]) -> Callable[[Path], int]:
    def run(path: Path) -> int:
        try:
            return subprocess.call([*command, str(path)])
        except OSError:
            raise SopsError(f"cannot run the editor {command[0]!r}", code=ExitCode.NO_EDITOR_FOUND) from None

    return run
