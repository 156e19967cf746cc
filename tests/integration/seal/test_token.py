"""Sealing keys held by a real SoftHSM2 token (seal.privateKeys: token), driven through the CLI.

SoftHSM2 is initialised once per process and reads ``SOFTHSM2_CONF`` then, so these tests run the CLI
as child processes with a token directory of their own (other suites may already have loaded the
module with theirs).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from kubeshield.errors import InvalidCiphertext
from kubeshield.seal.token import oaep_decode
from tests.support.softhsm import INSTALL_HINT, SOFTHSM_MODULE, SoftHsm

KUBESHIELD = Path(sys.executable).with_name("kubeshield")


@pytest.fixture(scope="module")
def token_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if not Path(SOFTHSM_MODULE).is_file() or shutil.which("softhsm2-util") is None:
        pytest.fail(f"SoftHSM2 is not installed: {INSTALL_HINT}", pytrace=False)
    root = tmp_path_factory.mktemp("seal-softhsm")
    (root / "tokens").mkdir(mode=0o700)
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    SoftHsm(root=root, conf=conf).init_token("seal", pin=b"seal-pin-1")
    (root / "pin").write_text("seal-pin-1\n")
    (root / "kubeshield.yaml").write_text(
        yaml.safe_dump(
            {
                "keys": {
                    "backend": "pkcs11",
                    "pkcs11": {"module": SOFTHSM_MODULE, "token": "seal", "pinFile": str(root / "pin")},
                },
                "seal": {"registry": str(root / "seal-keys.json"), "privateKeys": "token", "keySize": 2048},
            }
        )
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(conf), "KUBESHIELD_TEST_ROOT": str(root)}
    return env


def _cli(env: dict[str, str], *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KUBESHIELD), *argv], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


def test_token_keys_seal_and_unseal_and_never_leave_the_token(token_env: dict[str, str]) -> None:
    root = Path(token_env["KUBESHIELD_TEST_ROOT"])
    cfg = str(root / "kubeshield.yaml")
    proc = _cli(token_env, "seal", "keys", "init", "--config", cfg)
    assert proc.returncode == 0, proc.stderr
    assert "custody:   token (seal)" in proc.stdout
    registry = json.loads((root / "seal-keys.json").read_text())
    (entry,) = registry["keys"]
    assert entry["custody"]["type"] == "token" and set(entry["custody"]) == {"type", "token", "id"}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "namespace": "prod"},
        "stringData": {"password": "hunter2", "empty": ""},
    }
    sealed = _cli(token_env, "seal", "--config", cfg, stdin=json.dumps(secret))
    assert sealed.returncode == 0, sealed.stderr
    (root / "sealed.json").write_text(sealed.stdout)
    out = _cli(token_env, "seal", "unseal", "--config", cfg, "-f", str(root / "sealed.json"), "-o", "json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)["data"]
    assert base64.b64decode(data["password"]) == b"hunter2" and data["empty"] == ""
    moved = json.loads(sealed.stdout)
    moved["metadata"]["namespace"] = "dev"
    (root / "moved.json").write_text(json.dumps(moved))
    bad = _cli(token_env, "seal", "unseal", "--config", cfg, "-f", str(root / "moved.json"))
    assert bad.returncode == 1 and "no key could decrypt" in bad.stderr
    # the token refuses to hand out the key, and reports what SoftHSM2 does with OAEP-SHA-256 + label
    code = textwrap.dedent(
        f"""
        import json, pkcs11
        from pkcs11 import Attribute, ObjectClass, Mechanism, MGF
        from pkcs11.exceptions import PKCS11Error
        from cryptography import x509
        from kubeshield.seal import _hybrid
        from kubeshield.seal.token import Pkcs11TokenStore
        reg = json.load(open({str(root / "seal-keys.json")!r}))
        key_id = bytes.fromhex(reg["keys"][0]["custody"]["id"])
        cert = x509.load_pem_x509_certificate(reg["keys"][0]["certificate"].encode())
        tok = pkcs11.lib({SOFTHSM_MODULE!r}).get_token(token_label="seal")
        out = {{}}
        with tok.open(user_pin="seal-pin-1") as s:
            priv = s.get_key(object_class=ObjectClass.PRIVATE_KEY, id=key_id)
            out["sensitive"] = priv[Attribute.SENSITIVE]
            out["extractable"] = priv[Attribute.EXTRACTABLE]
            try:
                priv[Attribute.PRIVATE_EXPONENT]
                out["exponent"] = "readable"
            except PKCS11Error as exc:
                out["exponent"] = type(exc).__name__
            ct = cert.public_key().encrypt(b"k" * 32, _hybrid.oaep(b"ns/name"))
            try:
                param = (Mechanism.SHA256, MGF.SHA256, b"ns/name")
                priv.decrypt(ct, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=param)
                out["oaep_sha256_label"] = "ok"
            except PKCS11Error as exc:
                out["oaep_sha256_label"] = type(exc).__name__
        store = Pkcs11TokenStore(module={SOFTHSM_MODULE!r}, token="seal", pin=b"seal-pin-1")
        store.decrypter(key_id.hex(), cert.public_key())
        out["probe"] = store.probe.mechanism
        out["probe_detail"] = store.probe.detail
        store.close()
        print(json.dumps(out))
        """
    )
    probe = subprocess.run(
        [sys.executable, "-c", code], env=token_env, capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 0, probe.stderr
    facts = json.loads(probe.stdout)
    assert facts["sensitive"] is True and facts["extractable"] is False
    assert facts["exponent"] in ("AttributeSensitive", "AttributeTypeInvalid")
    # SoftHSM2 2.6 has no OAEP-SHA-256-with-label: the probe must fall back to raw RSA + host OAEP
    assert facts["oaep_sha256_label"] != "ok"
    assert facts["probe"] == "rsa-x509" and "refused" in facts["probe_detail"]


def test_oaep_decode_against_pyca() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from kubeshield.seal import _hybrid

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = key.private_numbers()
    n, d = numbers.public_numbers.n, numbers.d
    for label in (b"", b"ns", b"ns/name"):
        ct = key.public_key().encrypt(b"s" * 32, _hybrid.oaep(label))
        em = pow(int.from_bytes(ct, "big"), d, n).to_bytes(256, "big")
        assert oaep_decode(em, label=label, k=256) == b"s" * 32
        with pytest.raises(InvalidCiphertext):
            oaep_decode(em, label=label + b"x", k=256)
        for i in (0, 1, 40, 200, 255):
            broken = bytearray(em)
            broken[i] ^= 0x80
            with pytest.raises(InvalidCiphertext):
                oaep_decode(bytes(broken), label=label, k=256)
