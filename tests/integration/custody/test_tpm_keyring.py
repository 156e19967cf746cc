"""The TPM-sealed keyring (``keys.backend: tpm``) against real swtpm instances (one pair per module).

Covers the keyring's ``kdf: tpm`` protection, :class:`TpmKeyBackend` (the backend contract included),
``kubeshield keys init|rotate|list --config`` with ``backend: tpm``, and ``kubeshield custody serve``
holding a TPM-sealed keyring (``--backend tpm`` and ``--config``).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeshield.config.settings import TpmSettings
from kubeshield.errors import BackendUnavailable, KeyringError
from kubeshield.keys.base import Wrapped
from kubeshield.keys.enclave import EnclaveKeyBackend
from kubeshield.keys.keyring import KeyringFile
from kubeshield.keys.local import LocalKeyBackend
from kubeshield.keys.registry import open_primary
from kubeshield.keys.tpm import TpmKeyBackend, TpmSealer, TpmUnsealError
from tests.contract.backend_contract import AAD, BackendContractTests
from tests.support.swtpm import SwTpm, start_swtpm

from ._support import CUSTODY_CLI, KUBESHIELD, REPO, allow_policy, env, start_custody


@pytest.fixture(scope="module")
def tpms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SwTpm, SwTpm]]:
    a = start_swtpm(tmp_path_factory.mktemp("tpm-a"))
    b = start_swtpm(tmp_path_factory.mktemp("tpm-b"))
    yield a, b
    a.stop()
    b.stop()


def _keys_env() -> dict[str, str]:
    return {k: v for k, v in env().items() if not k.startswith("KUBESHIELD_")}


def _kubeshield(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KUBESHIELD, *args], capture_output=True, text=True, cwd=str(REPO), env=_keys_env(), timeout=120
    )


def _config(path: Path, *, tcti: str, keyring: Path, pcrs: tuple[int, ...]) -> Path:
    path.write_text(
        "keys:\n  backend: tpm\n"
        f"  tpm: {{tcti: '{tcti}', keyring: '{keyring}', pcrs: [{', '.join(map(str, pcrs))}]}}\n"
    )
    return path


# ---- the keyring file --------------------------------------------------------------------------------


def test_tpm_keyring_layout_and_round_trip(tpms, tmp_path: Path) -> None:
    a, _ = tpms
    path = tmp_path / "keyring"
    backend = TpmKeyBackend.create(path=path, tcti=a.tcti, pcrs=(16,))
    doc = json.loads(path.read_text())
    assert doc["protection"]["kdf"] == "tpm" and doc["protection"]["pcrs"] == [16]
    assert set(doc["protection"]) == {"kdf", "sealed", "pcrs"}
    kek = KeyringFile(path, sealer=TpmSealer(tcti=a.tcti)).load(None).keys[1]
    raw = path.read_bytes()
    assert kek not in raw and base64.b64encode(kek) not in raw  # no KEK in the clear in the file
    info = KeyringFile(path).read_info()  # the public part needs no TPM
    assert info.kdf == "tpm" and info.pcrs == (16,) and info.protected
    seed = os.urandom(32)
    wrapped = backend.wrap(seed, aad=AAD)
    assert wrapped.key_id == info.primary.key_id
    assert backend.unwrap(wrapped, aad=AAD) == seed
    backend.close()


def test_rotate_then_reopen_keeps_old_data_readable(tpms, tmp_path: Path) -> None:
    a, _ = tpms
    path = tmp_path / "keyring"
    backend = TpmKeyBackend.create(path=path, tcti=a.tcti, pcrs=(16,))
    old_id = backend.key_id()
    old = backend.wrap(b"o" * 32, aad=AAD)
    sealed_before = json.loads(path.read_text())["protection"]["sealed"]
    new_id = backend.rotate()
    assert new_id != old_id
    assert json.loads(path.read_text())["protection"]["sealed"] != sealed_before  # a fresh wrapping key
    new = backend.wrap(b"n" * 32, aad=AAD)
    backend.close()
    reopened = open_primary_tpm(a.tcti, path, (16,))
    assert isinstance(reopened, TpmKeyBackend)
    assert reopened.key_id() == new_id
    assert [v.state for v in reopened.versions()] == ["decrypt-only", "primary"]
    assert reopened.unwrap(old, aad=AAD) == b"o" * 32
    assert reopened.unwrap(Wrapped(old.ciphertext, ""), aad=AAD) == b"o" * 32
    assert reopened.unwrap(new, aad=AAD) == b"n" * 32
    reopened.close()


def open_primary_tpm(tcti: str, path: Path, pcrs: tuple[int, ...]) -> TpmKeyBackend:
    from kubeshield.config.settings import KeysSettings

    backend = open_primary(KeysSettings(backend="tpm", tpm=TpmSettings(tcti=tcti, keyring=path, pcrs=pcrs)))
    assert isinstance(backend, TpmKeyBackend)
    return backend


def test_keyring_copied_to_another_tpm_does_not_open(tpms, tmp_path: Path) -> None:
    a, b = tpms
    path = tmp_path / "keyring"
    TpmKeyBackend.create(path=path, tcti=a.tcti, pcrs=()).close()
    copy = tmp_path / "copied" / "keyring"
    copy.parent.mkdir()
    shutil.copy2(path, copy)
    with pytest.raises(TpmUnsealError, match="sealed by another TPM") as info:
        TpmKeyBackend(path=copy, tcti=b.tcti)
    assert str(copy) in str(info.value)
    TpmKeyBackend(path=copy, tcti=a.tcti).close()  # the same file on its own TPM opens


def test_changed_pcr_fails_with_a_clear_error(tpms, tmp_path: Path) -> None:
    a, _ = tpms
    path = tmp_path / "keyring"
    running = TpmKeyBackend.create(path=path, tcti=a.tcti, pcrs=(23,))
    wrapped = running.wrap(b"p" * 32, aad=AAD)
    TpmKeyBackend(path=path, tcti=a.tcti, pcrs=(23,)).close()  # opens while PCR 23 is unchanged
    TpmSealer(tcti=a.tcti).extend(23, b"an unexpected boot component")
    with pytest.raises(TpmUnsealError, match="PCR 23 changed since sealing") as info:
        TpmKeyBackend(path=path, tcti=a.tcti, pcrs=(23,))
    assert str(path) in str(info.value)
    with pytest.raises(TpmUnsealError, match="PCR 23 changed"):
        running.rotate()  # rotation re-opens the file: refused, nothing written
    assert KeyringFile(path).read_info().primary.key_id == running.key_id()
    assert running.unwrap(wrapped, aad=AAD) == b"p" * 32  # keys already in memory keep working
    running.close()


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda d: d["versions"][0].update(created="2000-01-01T00:00:00Z"), id="created"),
        pytest.param(lambda d: d["protection"].update(pcrs=[]), id="pcrs"),
        pytest.param(lambda d: d.update(keyringId="00000000-0000-4000-8000-000000000000"), id="keyring-id"),
    ],
)
def test_an_edited_public_part_is_reported_as_altered(tpms, tmp_path: Path, edit) -> None:
    a, _ = tpms
    path = tmp_path / "keyring"
    TpmKeyBackend.create(path=path, tcti=a.tcti, pcrs=(16,)).close()
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyringError, match="keyring was altered"):
        TpmKeyBackend(path=path, tcti=a.tcti, pcrs=(16,))


def test_sealed_key_of_another_keyring_does_not_open_this_one(tpms, tmp_path: Path) -> None:
    a, _ = tpms
    one, two = tmp_path / "one", tmp_path / "two"
    TpmKeyBackend.create(path=one, tcti=a.tcti).close()
    TpmKeyBackend.create(path=two, tcti=a.tcti).close()
    doc = json.loads(one.read_text())
    doc["protection"]["sealed"] = json.loads(two.read_text())["protection"]["sealed"]
    one.write_text(json.dumps(doc))
    with pytest.raises(KeyringError, match="keyring was altered"):
        TpmKeyBackend(path=one, tcti=a.tcti)


def test_backends_refuse_the_other_protection(tpms, tmp_path: Path) -> None:
    a, _ = tpms
    sealed, plain = tmp_path / "sealed", tmp_path / "plain"
    TpmKeyBackend.create(path=sealed, tcti=a.tcti).close()
    KeyringFile(plain).create(passphrase=None)
    with pytest.raises(KeyringError, match=r"sealed by a TPM: open it with keys\.backend: tpm"):
        LocalKeyBackend(path=sealed)
    with pytest.raises(KeyringError, match="not TPM-sealed"):
        TpmKeyBackend(path=plain, tcti=a.tcti)
    with pytest.raises(ValueError, match="not both"):
        KeyringFile(tmp_path / "both", sealer=TpmSealer(tcti=a.tcti)).create(passphrase=b"pw")
    assert not (tmp_path / "both").exists()


def test_absent_tpm_is_unavailable(tpms, tmp_path: Path) -> None:
    a, _ = tpms
    path = tmp_path / "keyring"
    TpmKeyBackend.create(path=path, tcti=a.tcti).close()
    with pytest.raises(BackendUnavailable, match="cannot open the TPM"):
        TpmKeyBackend(path=path, tcti="swtpm:host=127.0.0.1,port=1")


# ---- the backend contract ------------------------------------------------------------------------------


class TestTpmKeyringContract(BackendContractTests):
    @pytest.fixture
    def backend(self, tpms, tmp_path: Path) -> Iterator[TpmKeyBackend]:
        a, _ = tpms
        backend = TpmKeyBackend.create(path=tmp_path / "keyring", tcti=a.tcti, pcrs=(16,))
        self._tcti = a.tcti
        yield backend
        backend.close()

    def key_material(self, backend: TpmKeyBackend) -> list[bytes]:  # type: ignore[override]
        return list(KeyringFile(backend.path, sealer=TpmSealer(tcti=self._tcti)).load(None).keys.values())


# ---- kubeshield keys init|rotate|list --config with backend: tpm ----------------------------------------


def test_keys_cli_with_a_tpm_config(tpms, tmp_path: Path) -> None:
    a, _ = tpms
    keyring = tmp_path / "keyring.tpm"
    config = _config(tmp_path / "kubeshield.yaml", tcti=a.tcti, keyring=keyring, pcrs=(16,))

    init = _kubeshield("keys", "init", "--config", str(config))
    assert init.returncode == 0, init.stderr
    assert "protection:     tpm" in init.stdout and "PCRs 16" in init.stdout
    assert "WARNING" not in init.stderr
    assert KeyringFile(keyring).read_info().kdf == "tpm"
    again = _kubeshield("keys", "init", "--config", str(config))
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr

    listed = _kubeshield("keys", "list", "--config", str(config), "-o", "json")
    assert listed.returncode == 0, listed.stderr
    first = json.loads(listed.stdout)
    assert first["backend"] == "tpm" and len(first["versions"]) == 1

    rotated = _kubeshield("keys", "rotate", "--config", str(config))
    assert rotated.returncode == 0, rotated.stderr
    info = KeyringFile(keyring).read_info()
    assert info.primary.key_id in rotated.stdout and info.primary.version == 2

    listed = json.loads(_kubeshield("keys", "list", "--config", str(config), "-o", "json").stdout)
    assert [(v["keyId"], v["state"]) for v in listed["versions"]] == [
        (first["versions"][0]["keyId"], "decrypt-only"),
        (info.primary.key_id, "primary"),
    ]
    # the public part is readable from the file alone; opening it without the TPM is refused clearly
    public = json.loads(_kubeshield("keys", "list", "--keyring", str(keyring), "-o", "json").stdout)
    assert public["protection"] == "tpm" and len(public["versions"]) == 2
    plain = _kubeshield("keys", "rotate", "--keyring", str(keyring))
    assert plain.returncode == 1 and "sealed by a TPM" in plain.stderr
    assert KeyringFile(keyring).read_info().primary.version == 2


def test_keys_init_with_a_tpm_config_refuses_a_passphrase(tpms, tmp_path: Path) -> None:
    a, _ = tpms
    config = _config(tmp_path / "k.yaml", tcti=a.tcti, keyring=tmp_path / "kr", pcrs=())
    (tmp_path / "pass").write_text("secret\n")
    out = _kubeshield("keys", "init", "--config", str(config), "--passphrase-file", str(tmp_path / "pass"))
    assert out.returncode == 2 and "has no passphrase" in out.stderr
    assert not (tmp_path / "kr").exists()


def test_keys_init_on_another_tpm_config_cannot_be_opened_here(tpms, tmp_path: Path) -> None:
    a, b = tpms
    keyring = tmp_path / "kr"
    assert _kubeshield(
        "keys", "init", "--config", str(_config(tmp_path / "a.yaml", tcti=a.tcti, keyring=keyring, pcrs=()))
    ).returncode == 0  # fmt: skip
    other = _config(tmp_path / "b.yaml", tcti=b.tcti, keyring=keyring, pcrs=())
    out = _kubeshield("keys", "list", "--config", str(other))
    assert out.returncode == 1 and "sealed by another TPM" in out.stderr and str(keyring) in out.stderr


# ---- custody serve holding a TPM-sealed keyring ----------------------------------------------------------


def test_custody_serves_a_tpm_sealed_keyring(tpms, tmp_path: Path) -> None:
    a, _ = tpms
    keyring = tmp_path / "keyring.tpm"
    primary = TpmKeyBackend.create(path=keyring, tcti=a.tcti, pcrs=(16,))
    wrapped = primary.wrap(b"s" * 32, aad=AAD)
    primary.close()
    policy = allow_policy(tmp_path / "p.yaml")
    for n, extra in enumerate(
        [
            ["--backend", "tpm", "--tcti", a.tcti, "--pcrs", "16"],
            ["--config", str(_config(tmp_path / "c.yaml", tcti=a.tcti, keyring=keyring, pcrs=(16,)))],
        ]
    ):
        sock = tmp_path / f"c{n}.sock"
        custody = start_custody(
            keyring=keyring if "--backend" in extra else None, socket=sock, policy=policy, extra=extra
        )
        try:
            enclave = EnclaveKeyBackend(socket=str(sock))
            assert enclave.key_id() == KeyringFile(keyring).read_info().primary.key_id
            assert enclave.unwrap(wrapped, aad=AAD) == b"s" * 32  # data wrapped outside the custody process
            rewrapped = enclave.wrap(b"t" * 32, aad=AAD)
            assert enclave.unwrap(rewrapped, aad=AAD) == b"t" * 32
            assert "tpm backend" in custody.log
            enclave.close()
        finally:
            custody.stop()


def test_custody_refuses_to_start_with_a_keyring_from_another_tpm(tpms, tmp_path: Path) -> None:
    a, b = tpms
    keyring = tmp_path / "keyring.tpm"
    TpmKeyBackend.create(path=keyring, tcti=a.tcti).close()
    result = subprocess.run(
        [*CUSTODY_CLI, "serve", "--backend", "tpm", "--keyring", str(keyring), "--tcti", b.tcti,
         "--socket", str(tmp_path / "s.sock"), "--policy", str(allow_policy(tmp_path / "p.yaml"))],
        capture_output=True, text=True, cwd=str(REPO), env=env(), timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "sealed by another TPM" in result.stderr and "ready" not in result.stdout
