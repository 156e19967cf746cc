"""The keyring's ``kdf: tpm`` protection: its byte layout and its parser (no TPM needed here).

``XorSealer`` is a test double for the sealing device (the real one, ``TpmSealer`` against swtpm, is
tested in tests/integration/custody/test_tpm_keyring.py); these tests pin the keyring side of the
format: where the sealed blob and PCRs go, and that the material is AES-GCM under the unsealed key
with the public part as AAD.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubeshield.errors import KeyringError
from kubeshield.keys.keyring import KeyringFile

_PAD = os.urandom(32)


class XorSealer:
    """Seals by XOR with a per-instance pad and a tag: a stand-in device with the KeySealer shape."""

    def __init__(self, pcrs: tuple[int, ...] = (7,), pad: bytes = _PAD) -> None:
        self._pcrs, self._pad = pcrs, pad
        self.unseals = 0

    @property
    def pcrs(self) -> tuple[int, ...]:
        return self._pcrs

    def seal(self, secret: bytes) -> bytes:
        return b"XS" + bytes(a ^ b for a, b in zip(secret, self._pad, strict=True))

    def unseal(self, blob: bytes) -> bytes:
        self.unseals += 1
        if not blob.startswith(b"XS") or len(blob) != 34:
            raise KeyringError("not sealed by this device")
        return bytes(a ^ b for a, b in zip(blob[2:], self._pad, strict=True))


def _canonical(public: dict[str, object]) -> bytes:
    return json.dumps(public, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def test_tpm_material_is_sealed_as_documented(tmp_path: Path) -> None:
    sealer = XorSealer(pcrs=(7, 16))
    opened = KeyringFile(tmp_path / "k", sealer=sealer).create(passphrase=None)
    doc = json.loads((tmp_path / "k").read_text())
    assert doc["protection"]["kdf"] == "tpm" and doc["protection"]["pcrs"] == [7, 16]
    wrapping = sealer.unseal(base64.b64decode(doc["protection"]["sealed"]))
    material = base64.b64decode(doc["material"])
    public = {k: v for k, v in doc.items() if k != "material"}
    table = json.loads(AESGCM(wrapping).decrypt(material[:12], material[12:], _canonical(public)))
    assert base64.b64decode(table["1"]) == opened.keys[1]
    assert opened.info.kdf == "tpm" and opened.info.pcrs == (7, 16) and opened.info.argon2 is None


def test_every_write_seals_a_fresh_wrapping_key(tmp_path: Path) -> None:
    sealer = XorSealer()
    keyring = KeyringFile(tmp_path / "k", sealer=sealer)
    keyring.create(passphrase=None)
    before = json.loads((tmp_path / "k").read_text())["protection"]["sealed"]
    rotated = keyring.rotate(passphrase=None)
    after = json.loads((tmp_path / "k").read_text())["protection"]["sealed"]
    assert before != after and rotated.info.kdf == "tpm"
    assert KeyringFile(tmp_path / "k", sealer=sealer).load(None).keys == rotated.keys


def test_a_device_error_names_the_keyring(tmp_path: Path) -> None:
    KeyringFile(tmp_path / "k", sealer=XorSealer()).create(passphrase=None)
    other = XorSealer(pad=os.urandom(32))  # "another TPM": unseals to a different key
    with pytest.raises(KeyringError, match="keyring was altered"):
        KeyringFile(tmp_path / "k", sealer=other).load(None)
    doc = json.loads((tmp_path / "k").read_text())
    doc["protection"]["sealed"] = base64.b64encode(b"junk").decode()
    (tmp_path / "k").write_text(json.dumps(doc))
    with pytest.raises(KeyringError, match=f"^{re.escape(str(tmp_path / 'k'))}: not sealed by this device$"):
        KeyringFile(tmp_path / "k", sealer=XorSealer()).load(None)


@pytest.mark.parametrize(
    ("protection", "problem"),
    [
        ({"kdf": "tpm", "sealed": "AAAA"}, "exactly the fields"),
        ({"kdf": "tpm", "sealed": "AAAA", "pcrs": [], "salt": "AA=="}, "exactly the fields"),
        ({"kdf": "tpm", "sealed": "!!", "pcrs": []}, "sealed is not base64"),
        ({"kdf": "tpm", "sealed": "", "pcrs": []}, "sealed must be 1..4096 bytes"),
        ({"kdf": "tpm", "sealed": "AAAA", "pcrs": [16, 7]}, "sorted list of distinct"),
        ({"kdf": "tpm", "sealed": "AAAA", "pcrs": [7, 7]}, "sorted list of distinct"),
        ({"kdf": "tpm", "sealed": "AAAA", "pcrs": [24]}, "sorted list of distinct"),
        ({"kdf": "tpm", "sealed": "AAAA", "pcrs": [True]}, "sorted list of distinct"),
        ({"kdf": "tpm", "sealed": "AAAA", "pcrs": "7"}, "sorted list of distinct"),
        ({"kdf": "scrypt"}, "must be none, argon2id or tpm"),
    ],
)
def test_bad_tpm_protection_is_named(tmp_path: Path, protection: dict[str, object], problem: str) -> None:
    KeyringFile(tmp_path / "k", sealer=XorSealer()).create(passphrase=None)
    doc = json.loads((tmp_path / "k").read_text())
    doc["protection"] = protection
    (tmp_path / "k").write_text(json.dumps(doc))
    with pytest.raises(KeyringError, match=problem):
        KeyringFile(tmp_path / "k").read_info()


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 30) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sealed=st.one_of(_json, st.binary(min_size=0, max_size=64).map(lambda b: base64.b64encode(b).decode())),
    pcrs=st.one_of(_json, st.lists(st.integers(-2, 26), max_size=5)),
    extra=st.dictionaries(st.sampled_from(["salt", "x", "kdf2"]), _json, max_size=1),
)
def test_any_tpm_protection_parses_or_raises_keyring_error(
    tmp_path: Path, sealed: object, pcrs: object, extra: dict[str, object]
) -> None:
    path = tmp_path / "k"
    if not path.exists():
        KeyringFile(path, sealer=XorSealer()).create(passphrase=None)
    doc = json.loads(path.read_text())
    doc["protection"] = {"kdf": "tpm", "sealed": sealed, "pcrs": pcrs, **extra}
    (tmp_path / "edited").write_text(json.dumps(doc))
    try:
        info = KeyringFile(tmp_path / "edited").read_info()
    except KeyringError as exc:
        assert str(exc).startswith(str(tmp_path / "edited"))
        return
    assert info.kdf == "tpm" and list(info.pcrs) == sorted(set(info.pcrs)) == pcrs
    assert all(0 <= p <= 23 for p in info.pcrs)
