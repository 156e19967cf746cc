"""`keys restore|backup|rotate|retire --config` with `keys.backend: tpm` against real swtpm instances
(issue 16 item 3: restore used to ignore keys.tpm and write an unprotected keyring to the default path)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyrage
import pytest

from kubeshield.config.settings import DEFAULT_KEYRING
from kubeshield.errors import KeyringError
from kubeshield.keys.keyring import KeyringFile
from kubeshield.keys.local import LocalKeyBackend
from kubeshield.keys.tpm import TpmKeyBackend, TpmSealer
from tests.support.swtpm import SwTpm, start_swtpm

KUBESHIELD = [str(Path(sys.executable).parent / "kubeshield")]
AAD = b"kubeshield/kms/v2"


@pytest.fixture(scope="module")
def tpms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SwTpm, SwTpm]]:
    a = start_swtpm(tmp_path_factory.mktemp("tpm-node-a"))
    b = start_swtpm(tmp_path_factory.mktemp("tpm-node-b"))
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBESHIELD_")}
    return subprocess.run([*KUBESHIELD, *args], capture_output=True, text=True, env=env, timeout=120)


def _tpm_config(path: Path, *, tcti: str, keyring: Path) -> Path:
    path.write_text(f"keys:\n  backend: tpm\n  tpm: {{tcti: '{tcti}', keyring: '{keyring}', pcrs: [16]}}\n")
    return path


def test_restore_into_a_tpm_config_seals_to_that_tpm(tpms: tuple[SwTpm, SwTpm], tmp_path: Path) -> None:
    a, b = tpms
    # node-a: a TPM-sealed keyring, rotated, backed up through its TPM
    kr_a = tmp_path / "a" / "keyring.tpm"
    config_a = _tpm_config(tmp_path / "a.yaml", tcti=a.tcti, keyring=kr_a)
    assert _run("keys", "init", "--config", str(config_a)).returncode == 0
    v1 = TpmKeyBackend(path=kr_a, tcti=a.tcti, pcrs=(16,)).wrap(b"s" * 32, aad=AAD)
    rotated = _run("keys", "rotate", "--config", str(config_a))
    assert rotated.returncode == 0 and "Back up the keyring now" in rotated.stderr
    identity = pyrage.x25519.Identity.generate()
    (tmp_path / "node-b.agekey").write_text(f"{identity}\n")
    (tmp_path / "node-b.agekey").chmod(0o600)
    backup = tmp_path / "kr.age"
    made = _run("keys", "backup", "--config", str(config_a), "--out", str(backup),
                "--recipient", str(identity.to_public()))  # fmt: skip
    assert made.returncode == 0, made.stderr

    # node-b: restore with its own TPM config: sealed to TPM b, at keys.tpm.keyring, nowhere else
    kr_b = tmp_path / "b" / "keyring.tpm"
    config_b = _tpm_config(tmp_path / "b.yaml", tcti=b.tcti, keyring=kr_b)
    default_existed = DEFAULT_KEYRING.exists()
    restored = _run(
        "keys", "restore", "--in", str(backup), "--identity-file", str(tmp_path / "node-b.agekey"),
        "--config", str(config_b),
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert "protection:      tpm" in restored.stdout and "WARNING" not in restored.stderr
    assert DEFAULT_KEYRING.exists() == default_existed
    doc = json.loads(kr_b.read_text())
    assert doc["protection"]["kdf"] == "tpm" and doc["protection"]["pcrs"] == [16]
    assert stat.S_IMODE(os.stat(kr_b).st_mode) == 0o600
    info_a, info_b = KeyringFile(kr_a).read_info(), KeyringFile(kr_b).read_info()
    assert (info_a.keyring_id, info_a.versions_digest) == (info_b.keyring_id, info_b.versions_digest)
    listed = _run("keys", "list", "--config", str(config_b), "-o", "json")
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert (doc["backend"], doc["protection"]) == ("tpm", "tpm")
    assert (doc["keyringId"], doc["versionsDigest"]) == (info_a.keyring_id, info_a.versions_digest)
    backend_b = TpmKeyBackend(path=kr_b, tcti=b.tcti, pcrs=(16,))
    assert backend_b.unwrap(v1, aad=AAD) == b"s" * 32
    with pytest.raises(KeyringError):  # sealed to TPM b: TPM a cannot open it, nor can a passphrase
        KeyringFile(kr_b, sealer=TpmSealer(tcti=a.tcti, pcrs=(16,))).load(None)
    with pytest.raises(KeyringError, match="sealed by a TPM"):
        LocalKeyBackend(path=kr_b)

    # retire v1 on node-b through its TPM (no etcd here: the explicit flag)
    retired = _run("keys", "retire", "--config", str(config_b), "--version", "1", "--no-etcd-check")
    assert retired.returncode == 0, retired.stderr
    assert [v.version for v in KeyringFile(kr_b).read_info().versions] == [2]
    assert KeyringFile(kr_b).read_info().kdf == "tpm"
