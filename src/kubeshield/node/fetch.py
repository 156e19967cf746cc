"""``kubeshield node fetch``'s library half: read the pod's token and sealed texts, release, write the files.

The injected init container runs it once (``--once``); the native sidecar runs it every
``--refresh`` interval. Inputs are what the injector mounts (:mod:`.injector.mutate`): the projected
token (re-read each round: the kubelet rotates it) and one file per sealed value in ``--sealed-dir``
(annotations through the downward API, ConfigMap items; names starting with ``..`` are the kubelet's
own bookkeeping and are skipped). Outputs, in ``--out-dir`` (a memory-backed emptyDir):

* ``files``: one file per value (``--file name=path`` renames), the raw bytes;
* ``dotenv``: ``secrets.env`` (or ``--output-file``) with ``NAME='value'`` lines a POSIX shell can source
  (``'`` written as ``'\\''``; NAME is the upper-cased name with ``-``/``.`` as ``_``);
* ``json``: ``secrets.json``, an object name -> value (values must be UTF-8).

Every file is written 0400 by this process (which runs as the app's uid), through a temp file and a
rename, and only when its content changed. ``--env-file`` additionally writes the dotenv form under that
name for ``kubeshield.io/env`` command wrapping.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kubeshield.errors import InvalidRequest, KubeshieldError
from kubeshield.node.client import ReleaseClient

__all__ = ["FetchPlan", "fetch_once", "read_sealed_dir", "refresh_loop", "render", "write_outputs"]

log = logging.getLogger("kubeshield.node.fetch")

_MAX_SEALED_FILE = 2 << 20
_ENV_NAME = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True, slots=True)
class FetchPlan:
    token_file: Path
    sealed_dir: Path
    out_dir: Path
    format: Literal["files", "dotenv", "json"] = "files"
    files: Mapping[str, str] = field(default_factory=dict)
    output_file: str | None = None
    env_file: str | None = None
    mode: int = 0o400


def read_sealed_dir(directory: Path) -> list[tuple[str, str]]:
    """``(name, sealed text)`` for every regular file in ``directory`` (symlinks followed), sorted."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise InvalidRequest(f"--sealed-dir: cannot list {directory}: {exc.strerror}") from None
    out: list[tuple[str, str]] = []
    for name in names:
        if name.startswith("."):
            continue
        path = directory / name
        if not path.is_file():
            continue
        with path.open("rb") as fh:
            data = fh.read(_MAX_SEALED_FILE + 1)
        if len(data) > _MAX_SEALED_FILE:
            raise InvalidRequest(f"--sealed-dir: {name} is larger than {_MAX_SEALED_FILE} bytes")
        try:
            out.append((name, data.decode("ascii").strip()))
        except UnicodeDecodeError:
            raise InvalidRequest(f"--sealed-dir: {name} is not a sealed text (not ASCII)") from None
    if not out:
        raise InvalidRequest(f"--sealed-dir: no sealed values in {directory}")
    return out


def env_name(name: str) -> str:
    out = _ENV_NAME.sub("_", name).upper()
    return "_" + out if out[:1].isdigit() else out


def _dotenv(values: Mapping[str, bytes]) -> bytes:
    lines = []
    for name in sorted(values):
        try:
            text = values[name].decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(
                f"{name}: not UTF-8, cannot go into a dotenv file (use format files)"
            ) from None
        if "\x00" in text:
            raise InvalidRequest(f"{name}: holds a NUL byte, cannot be an environment variable")
        lines.append(f"{env_name(name)}='" + text.replace("'", "'\\''") + "'\n")
    return "".join(lines).encode("utf-8")


def render(values: Mapping[str, bytes], plan: FetchPlan) -> dict[str, bytes]:
    """The files to write (relative path -> content) for ``values`` under ``plan``."""
    out: dict[str, bytes] = {}
    if plan.format == "files":
        for name, value in values.items():
            out[plan.files.get(name, name)] = value
    elif plan.format == "dotenv":
        out[plan.output_file or "secrets.env"] = _dotenv(values)
    else:
        doc = {}
        for name in sorted(values):
            try:
                doc[name] = values[name].decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest(
                    f"{name}: not UTF-8, cannot go into a JSON file (use format files)"
                ) from None
        out[plan.output_file or "secrets.json"] = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    if plan.env_file:
        out[plan.env_file] = _dotenv(values)
    for rel in out:
        parts = rel.split("/")
        if rel.startswith("/") or ".." in parts or "" in parts:
            raise InvalidRequest(f"{rel!r}: output paths are relative, without '..'")
    return out


def write_outputs(out_dir: Path, files: Mapping[str, bytes], *, mode: int = 0o400) -> list[str]:
    """Write each file atomically with ``mode``, only when it changed; returns the paths written."""
    written = []
    for rel, content in sorted(files.items()):
        target = out_dir / rel
        try:
            if target.read_bytes() == content:
                continue
        except OSError:
            pass
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".kubeshield.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), 0o600)
                fh.write(content)
                fh.flush()
                os.fsync(fh.fileno())
                os.fchmod(fh.fileno(), mode)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        written.append(rel)
    return written


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"--token-file: cannot read {path}: {type(exc).__name__}") from None
    if not token:
        raise InvalidRequest(f"--token-file: {path} is empty")
    return token


def fetch_once(client: ReleaseClient, plan: FetchPlan) -> list[str]:
    """One round: release every sealed value with the pod's token and write the outputs."""
    objects = read_sealed_dir(plan.sealed_dir)
    released = client.release(_read_token(plan.token_file), objects)
    return write_outputs(plan.out_dir, render(released.values, plan), mode=plan.mode)


def refresh_loop(
    client: ReleaseClient,
    plan: FetchPlan,
    *,
    interval: float,
    stop: threading.Event,
    on_round: Callable[[Sequence[str] | None, KubeshieldError | None], None] | None = None,
) -> None:
    """Fetch every ``interval`` seconds until ``stop``; a failed round keeps the files and retries sooner."""
    delay = 0.0
    while not stop.wait(delay):
        try:
            written = fetch_once(client, plan)
        except KubeshieldError as exc:
            log.warning("fetch: %s: %s", type(exc).__name__, exc)
            if on_round:
                on_round(None, exc)
            delay = min(interval, 30.0)
            continue
        if written:
            log.info("fetch: updated %s", ", ".join(written))
        if on_round:
            on_round(written, None)
        delay = interval
