"""Files written by ``etcd decrypt --out-dir``: 0600 files in 0700 directories, nothing planted followed."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeshield.etcd.keys import KeyPath
from kubeshield.etcd.output import OutputError, manifest_path, write_private_file


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_every_created_directory_is_0700(tmp_path: Path, umask_022: None) -> None:
    """Issue 15 item 9: mkdir(parents=True) gave the parents the umask's 0755."""
    out = tmp_path / "a" / "b" / "out"
    target = manifest_path(out, KeyPath("secrets", "payments", "db"), fmt="yaml")
    write_private_file(target, b"kind: Secret\n", root=out)
    assert target.read_bytes() == b"kind: Secret\n"
    assert _mode(target) == 0o600
    for directory in (
        tmp_path / "a",
        tmp_path / "a" / "b",
        out,
        out / "secrets",
        out / "secrets" / "payments",
    ):
        assert _mode(directory) == 0o700, directory


def test_an_existing_output_directory_keeps_its_mode(tmp_path: Path, umask_022: None) -> None:
    out = tmp_path / "out"
    out.mkdir(mode=0o750)
    os.chmod(out, 0o750)
    write_private_file(manifest_path(out, KeyPath("secrets", "ns", "s"), fmt="yaml"), b"x", root=out)
    assert _mode(out) == 0o750
    assert _mode(out / "secrets") == 0o700


def test_a_symlink_planted_in_the_tree_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "secrets").symlink_to(elsewhere)
    with pytest.raises(OutputError, match="symlink or file"):
        write_private_file(manifest_path(out, KeyPath("secrets", "ns", "s"), fmt="yaml"), b"x", root=out)
    assert list(elsewhere.iterdir()) == []
