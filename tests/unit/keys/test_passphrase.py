"""Where the keyring passphrase comes from."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeshield.errors import ConfigError
from kubeshield.keys.passphrase import PASSPHRASE_ENV, read_passphrase


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"s3cret\n", b"s3cret"), (b"s3cret\r\n", b"s3cret"), (b"s3cret", b"s3cret"), (b" two\n\n", b" two\n")],
)
def test_file_strips_one_trailing_newline(tmp_path: Path, content: bytes, expected: bytes) -> None:
    (tmp_path / "p").write_bytes(content)
    assert read_passphrase(passphrase_file=tmp_path / "p", environ={}) == expected


def test_file_wins_over_environment(tmp_path: Path) -> None:
    (tmp_path / "p").write_bytes(b"from-file")
    assert read_passphrase(passphrase_file=tmp_path / "p", environ={PASSPHRASE_ENV: "env"}) == b"from-file"


def test_environment_and_none() -> None:
    assert read_passphrase(environ={PASSPHRASE_ENV: "pässword"}) == "pässword".encode()
    assert read_passphrase(environ={}) is None


@pytest.mark.parametrize("content", [b"", b"\n"])
def test_empty_file_is_refused(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "p").write_bytes(content)
    with pytest.raises(ConfigError, match="passphrase file is empty"):
        read_passphrase(passphrase_file=tmp_path / "p", environ={})


def test_empty_environment_is_refused() -> None:
    with pytest.raises(ConfigError, match=PASSPHRASE_ENV):
        read_passphrase(environ={PASSPHRASE_ENV: ""})


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path / "absent")):
        read_passphrase(passphrase_file=tmp_path / "absent", environ={})
