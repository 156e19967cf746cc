"""``custody serve`` option resolution: which real key store it opens, and the usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kubeshield.cli.custody import _keys_settings, group
from kubeshield.config.settings import KeysSettings
from kubeshield.custody.daemon import ServeOptions
from kubeshield.errors import ConfigError


def test_keyring_flag_selects_the_local_backend(tmp_path: Path) -> None:
    keys = _keys_settings(
        config=None, backend=None, keyring=tmp_path / "kr", passphrase_file=None, tcti=None, pcrs=None
    )
    assert keys.backend == "local" and keys.local.keyring == tmp_path / "kr"


def test_tpm_flags_lay_over_the_config(tmp_path: Path) -> None:
    config = tmp_path / "k.yaml"
    config.write_text("keys:\n  backend: tpm\n  tpm: {tcti: 'device:/dev/tpmrm0', keyring: /a, pcrs: [7]}\n")
    keys = _keys_settings(
        config=config,
        backend=None,
        keyring=tmp_path / "b",
        passphrase_file=None,
        tcti="swtpm:port=1",
        pcrs="16,7",
    )
    assert keys.backend == "tpm" and keys.tpm is not None
    assert (keys.tpm.keyring, keys.tpm.tcti, keys.tpm.pcrs) == (tmp_path / "b", "swtpm:port=1", (7, 16))
    empty = _keys_settings(
        config=config, backend=None, keyring=None, passphrase_file=None, tcti=None, pcrs=""
    )
    assert empty.tpm is not None and empty.tpm.pcrs == ()


def test_custody_backend_is_refused() -> None:
    with pytest.raises(ConfigError, match="not custody"):
        ServeOptions(socket="/s", policy="/p", keys=KeysSettings(backend="custody"))


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ([], "give --keyring PATH or --config FILE"),
        (
            ["--keyring", "/k", "--backend", "tpm", "--passphrase-file", __file__],
            "applies to the local backend",
        ),
    ],
)
def test_usage_errors(args: list[str], problem: str) -> None:
    result = CliRunner().invoke(
        group, ["serve", "--socket", "/tmp/x.sock", "--policy", "/nonexistent", *args]
    )
    assert result.exit_code == 2 and problem in result.output
