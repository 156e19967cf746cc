"""``kubeshield seal`` end to end through ``main(argv)``: keys in a real local keyring, files on disk.

Covers: keys init/rotate/list/cert/backup/import, sealing (files, stdin, multi-document, --raw,
--merge-into, --scope), unseal with audit, --validate/--re-encrypt, --recovery-unseal, the import of a
sealed-secrets controller key Secret built exactly as the controller's ``writeKey`` builds it, and a
scan that no private key is ever on disk in the clear.
"""

from __future__ import annotations

import base64
import json
import os
import random
import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyrage
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kubesealpy import Sealer
from kubesealpy.scopes import SealingScope

from kubeshield.cli import main
from kubeshield.seal.certs import make_certificate, pem_of

PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KUBESHIELD_KEYRING_PASSPHRASE", PASSPHRASE)
    assert main(["keys", "init", "--keyring", str(tmp_path / "keyring")]) == 0
    (tmp_path / "kubeshield.yaml").write_text(
        yaml.safe_dump(
            {
                "keys": {"backend": "local", "local": {"keyring": str(tmp_path / "keyring")}},
                "seal": {"registry": str(tmp_path / "seal-keys.json"), "keySize": 2048},
            }
        )
    )
    return tmp_path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _secret(name: str = "db", namespace: str | None = "prod", **values: str) -> dict:
    meta = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "stringData": values or {"password": "hunter2"},
    }


def _private_blobs(key: rsa.RSAPrivateKey) -> list[bytes]:
    """Every encoding in which a private key could leak: PEM/DER (PKCS#1, PKCS#8), base64 of them, and
    the raw bytes of the private exponent and primes."""
    numbers = key.private_numbers()
    out = []
    for fmt in (serialization.PrivateFormat.TraditionalOpenSSL, serialization.PrivateFormat.PKCS8):
        der = key.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption())
        pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
        out += [der, pem, base64.b64encode(der), base64.b64encode(pem)]
    for n in (numbers.d, numbers.p, numbers.q):
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        out += [raw[:64], raw.hex().encode()[:64], base64.b64encode(raw)[:64]]
    return out


def test_keys_lifecycle_and_sealing_round_trip(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(env / "kubeshield.yaml")
    code, out, _ = _run(capsys, "seal", "keys", "init", "--config", cfg)
    assert code == 0 and "SHA256:" in out
    registry = env / "seal-keys.json"
    assert stat.S_IMODE(registry.stat().st_mode) == 0o600
    assert _run(capsys, "seal", "keys", "init", "--config", cfg)[0] == 1  # refuses to replace it
    (env / "s.yaml").write_text(yaml.safe_dump_all([_secret(), _secret("api", password="tok", user="u")]))
    code, _, err = _run(
        capsys, "seal", "--config", cfg, "-f", str(env / "s.yaml"), "-w", str(env / "old.yaml")
    )
    assert code == 0, err
    assert _run(capsys, "seal", "keys", "rotate", "--config", cfg)[0] == 0
    code, out, _ = _run(capsys, "seal", "keys", "list", "--config", cfg, "-o", "json")
    listing = json.loads(out)
    assert [k["current"] for k in listing["keys"]] == [False, True]
    assert {k["custody"] for k in listing["keys"]} == {"wrapped"} and listing["keys"][0]["backend"] == "local"
    # old SealedSecrets still unseal after rotation; the audit record names objects and keys, no values
    code, out, err = _run(
        capsys,
        "seal",
        "unseal",
        "--config",
        cfg,
        "-f",
        str(env / "old.yaml"),
        "-o",
        "json",
        "--audit-log",
        str(env / "audit.log"),
    )
    assert code == 0, err
    secrets = [json.loads(chunk) for chunk in out.replace("}\n{", "}\n\x00{").split("\x00")]
    assert [s["metadata"]["name"] for s in secrets] == ["db", "api"]
    assert base64.b64decode(secrets[1]["data"]["password"]) == b"tok"
    audit = json.loads((env / "audit.log").read_text())
    assert audit["objects"] == ["prod/db", "prod/api"] and audit["keys"] == [
        listing["keys"][0]["fingerprint"]
    ]
    assert "hunter2" not in err and "hunter2" not in (env / "audit.log").read_text()
    assert stat.S_IMODE((env / "audit.log").stat().st_mode) == 0o600
    # the certificate printed by keys cert seals for the newest key
    code, cert_pem, _ = _run(capsys, "seal", "keys", "cert", "--config", cfg)
    (env / "cert.pem").write_text(cert_pem)
    sealer_fp = listing["keys"][1]["fingerprint"]
    code, out, _ = _run(
        capsys, "seal", "--cert", str(env / "cert.pem"), "-f", str(env / "s.yaml"), "-o", "yaml"
    )
    assert code == 0 and sealer_fp in out
    # --re-encrypt rewrites the input in place with the newest key; --validate accepts it
    assert _run(capsys, "seal", "--re-encrypt", "--config", cfg, "-f", str(env / "old.yaml"))[0] == 0
    assert sealer_fp in (env / "old.yaml").read_text()
    assert _run(capsys, "seal", "--validate", "--config", cfg, "-f", str(env / "old.yaml"))[0] == 0


def test_no_private_key_on_disk_in_the_clear(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(env / "kubeshield.yaml")
    assert _run(capsys, "seal", "keys", "init", "--config", cfg)[0] == 0
    assert _run(capsys, "seal", "keys", "rotate", "--config", cfg)[0] == 0
    from kubeshield.config import load_config
    from kubeshield.seal.setup import open_registry

    with open_registry(load_config(env / "kubeshield.yaml")) as opened:
        keys = [opened.registry.private_key(r) for r in opened.registry.load()]
    assert len(keys) == 2
    blobs = [b for k in keys for b in _private_blobs(k)]
    files = [p for p in env.rglob("*") if p.is_file()]
    assert env / "seal-keys.json" in files
    for path in files:
        data = path.read_bytes()
        for blob in blobs:
            assert blob not in data, f"{path.name} holds private key material in the clear"


def test_a_secret_without_a_namespace_is_sealed_for_the_kubeconfig_context_namespace(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """kubeseal's rule: the Secret's own namespace, else the kubeconfig context's, else ``default``."""
    cfg = str(env / "kubeshield.yaml")
    assert _run(capsys, "seal", "keys", "init", "--config", cfg)[0] == 0
    (env / "nons.yaml").write_text(yaml.safe_dump(_secret(namespace=None)))
    kubeconfig = env / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "work",
                "contexts": [
                    {"name": "other", "context": {"cluster": "c", "user": "u", "namespace": "wrong"}},
                    {"name": "work", "context": {"cluster": "c", "user": "u", "namespace": "team-a"}},
                ],
            }
        )
    )
    for env_value, expected in ((str(kubeconfig), "team-a"), (str(env / "missing"), "default")):
        monkeypatch.setenv("KUBECONFIG", env_value)
        code, out, err = _run(capsys, "seal", "--config", cfg, "-f", str(env / "nons.yaml"))
        assert code == 0, err
        assert f"sealing for namespace {expected!r}" in err
        sealed = json.loads(out)
        assert sealed["metadata"]["namespace"] == expected
        (env / "ss.json").write_text(out)
        code, out, err = _run(
            capsys, "seal", "unseal", "--config", cfg, "-f", str(env / "ss.json"), "-o", "json"
        )
        assert code == 0, err
        assert base64.b64decode(json.loads(out)["data"]["password"]) == b"hunter2"
        # the label binds the namespace: the same ciphertext moved to another namespace does not unseal
        moved = {**sealed, "metadata": {**sealed["metadata"], "namespace": "elsewhere"}}
        (env / "moved.json").write_text(json.dumps(moved))
        code, out, _ = _run(capsys, "seal", "unseal", "--config", cfg, "-f", str(env / "moved.json"))
        assert code == 1 and out == ""
    # a Secret that names its namespace keeps it, and no note is printed
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    (env / "s.yaml").write_text(yaml.safe_dump(_secret()))
    code, out, err = _run(capsys, "seal", "--config", cfg, "-f", str(env / "s.yaml"))
    assert code == 0 and json.loads(out)["metadata"]["namespace"] == "prod" and "sealing for" not in err


def test_bad_input_is_named(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(env / "kubeshield.yaml")
    assert _run(capsys, "seal", "keys", "init", "--config", cfg)[0] == 0
    cases = {
        "empty.yaml": (_secret() | {"stringData": {}}, "no data or stringData"),
        "b64.yaml": ({**_secret(), "stringData": None, "data": {"k": "a_b-"}}, "data.k: not standard base64"),
        "kind.yaml": ({**_secret(), "kind": "ConfigMap"}, "expected apiVersion v1, kind Secret"),
    }
    for name, (obj, message) in cases.items():
        (env / name).write_text(yaml.safe_dump(obj))
        code, out, err = _run(capsys, "seal", "--config", cfg, "-f", str(env / name))
        assert code == 1 and message in err and name in err, (name, err)
        assert out == ""
    expired_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    long_ago = datetime.now(UTC) - timedelta(days=30)
    expired = make_certificate(expired_key, valid_for=timedelta(days=1), now=long_ago)
    (env / "expired.pem").write_bytes(pem_of(expired))
    (env / "s.yaml").write_text(yaml.safe_dump(_secret()))
    code, _, err = _run(capsys, "seal", "--cert", str(env / "expired.pem"), "-f", str(env / "s.yaml"))
    assert code == 1 and "expired" in err
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_key = ec.generate_private_key(ec.SECP256R1())
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    ec_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec")])
    now = datetime.now(UTC)
    ec_cert = (
        x509.CertificateBuilder()
        .subject_name(ec_name)
        .issuer_name(ec_name)
        .public_key(ec_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(ec_key, hashes.SHA256())
    )
    (env / "ec.pem").write_bytes(ec_cert.public_bytes(serialization.Encoding.PEM))
    code, _, err = _run(capsys, "seal", "--cert", str(env / "ec.pem"), "-f", str(env / "s.yaml"))
    assert code == 1 and "expected an RSA public key" in err


def test_raw_merge_into_and_scope(env: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    cfg = str(env / "kubeshield.yaml")
    assert _run(capsys, "seal", "keys", "init", "--config", cfg)[0] == 0
    (env / "s.yaml").write_text(yaml.safe_dump(_secret(password="one")))
    assert (
        _run(capsys, "seal", "--config", cfg, "-f", str(env / "s.yaml"), "-w", str(env / "ss.yaml"))[0] == 0
    )
    (env / "more.json").write_text(json.dumps(_secret(name="ignored", namespace=None, token="two")))
    code, _, err = _run(
        capsys, "seal", "--config", cfg, "--merge-into", str(env / "ss.yaml"), "-f", str(env / "more.json")
    )
    assert code == 0, err
    merged = yaml.safe_load((env / "ss.yaml").read_text())
    assert set(merged["spec"]["encryptedData"]) == {"password", "token"}
    code, out, _ = _run(capsys, "seal", "unseal", "--config", cfg, "-f", str(env / "ss.yaml"), "-o", "json")
    data = json.loads(out)["data"]
    assert {k: base64.b64decode(v) for k, v in data.items()} == {"password": b"one", "token": b"two"}
    # --raw: bare base64, no newline; strict needs --name
    (env / "value").write_bytes(b"\x00raw\xff")
    code, _, err = _run(
        capsys, "seal", "--config", cfg, "--raw", "--namespace", "prod", "--from-file", str(env / "value")
    )
    assert code == 1 and "--name is required" in err
    code, raw, _ = _run(
        capsys,
        "seal",
        "--config",
        cfg,
        "--raw",
        "--namespace",
        "prod",
        "--scope",
        "namespace-wide",
        "--from-file",
        f"k={env / 'value'}",
    )
    assert code == 0 and not raw.endswith("\n")
    obj = {
        "apiVersion": "bitnami.com/v1alpha1",
        "kind": "SealedSecret",
        "metadata": {
            "name": "any",
            "namespace": "prod",
            "annotations": {"sealedsecrets.bitnami.com/namespace-wide": "true"},
        },
        "spec": {"encryptedData": {"k": raw}},
    }
    (env / "raw.json").write_text(json.dumps(obj))
    code, out, _ = _run(capsys, "seal", "unseal", "--config", cfg, "-f", str(env / "raw.json"), "-o", "json")
    assert code == 0 and base64.b64decode(json.loads(out)["data"]["k"]) == b"\x00raw\xff"
    # env vars work for flags
    monkeypatch.setenv("KUBESHIELD_SCOPE", "cluster-wide")
    code, out, _ = _run(capsys, "seal", "--config", cfg, "-f", str(env / "s.yaml"), "-o", "json")
    assert json.loads(out)["metadata"]["annotations"]["sealedsecrets.bitnami.com/cluster-wide"] == "true"


def _controller_key_secret_list(key: rsa.RSAPrivateKey, *, stale: rsa.RSAPrivateKey) -> str:
    """What `kubectl -n kube-system get secret -l sealedsecrets.bitnami.com/sealed-secrets-key -o yaml`
    prints for keys written by the controller's writeKey (pkg/controller/keys.go), built here from that
    code independently of kubeshield.seal.migrate: PKCS#1 "RSA PRIVATE KEY" PEM in tls.key, the cert
    from crypto.SignKey in tls.crt, type kubernetes.io/tls, generateName sealed-secrets-key (the
    apiserver appends 5 characters of its random alphabet), label ...=active; plus one key labelled
    compromised, which the controller does not load."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    items = []
    for k, label in ((key, "active"), (stale, "compromised")):
        cert = make_certificate(k, valid_for=timedelta(days=3650), common_name="")
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": {
                    "name": "sealed-secrets-key" + "".join(random.choice(alphabet) for _ in range(5)),
                    "generateName": "sealed-secrets-key",
                    "namespace": "kube-system",
                    "labels": {"sealedsecrets.bitnami.com/sealed-secrets-key": label},
                    "uid": str(uuid.uuid4()),
                    "resourceVersion": "4711",
                    "creationTimestamp": "2024-03-01T10:00:00Z",
                },
                "data": {
                    "tls.crt": base64.b64encode(pem_of(cert)).decode(),
                    "tls.key": base64.b64encode(
                        k.private_bytes(
                            serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption(),
                        )
                    ).decode(),
                },
            }
        )
    return yaml.safe_dump(
        {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}
    )


def test_import_controller_keys_backup_and_recovery(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(env / "kubeshield.yaml")
    assert _run(capsys, "seal", "keys", "init", "--config", cfg)[0] == 0
    bitnami = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    stale = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (env / "keys.yaml").write_text(_controller_key_secret_list(bitnami, stale=stale))
    # a value sealed (by kubesealpy) for the controller's certificate, before the migration
    listing = yaml.safe_load((env / "keys.yaml").read_text())
    cert_pem = base64.b64decode(listing["items"][0]["data"]["tls.crt"])
    sealed = Sealer.from_certificate_pem(cert_pem).seal(
        name="legacy", namespace="apps", data={"password": b"from-bitnami"}, scope=SealingScope.STRICT
    )
    (env / "legacy.json").write_text(json.dumps(sealed.model_dump(by_alias=True, exclude_none=True)))
    code, _, err = _run(capsys, "seal", "unseal", "--config", cfg, "-f", str(env / "legacy.json"))
    assert code == 1 and "no key could decrypt" in err
    code, out, err = _run(capsys, "seal", "keys", "import", "--config", cfg, "-f", str(env / "keys.yaml"))
    assert code == 0, err
    assert "Imported 1 key(s); 1 skipped" in out and "compromised" in err
    assert (
        _run(capsys, "seal", "keys", "import", "--config", cfg, "-f", str(env / "keys.yaml"))[1].count(
            "already present"
        )
        == 1
    )
    code, out, _ = _run(
        capsys, "seal", "unseal", "--config", cfg, "-f", str(env / "legacy.json"), "-o", "json"
    )
    assert code == 0 and base64.b64decode(json.loads(out)["data"]["password"]) == b"from-bitnami"
    # the imported key is wrapped like the others: not on disk in the clear
    data = (env / "seal-keys.json").read_bytes()
    assert not any(blob in data for blob in _private_blobs(bitnami))
    # backup: an age file holding a List of controller key Secrets, which recovery-unseal reads
    identity = pyrage.x25519.Identity.generate()
    (env / "id.txt").write_text(str(identity) + "\n")
    code, _, err = _run(
        capsys,
        "seal",
        "keys",
        "backup",
        "--config",
        cfg,
        "--out",
        str(env / "keys.age"),
        "--recipient",
        str(identity.to_public()),
    )
    assert code == 0, err
    assert stat.S_IMODE((env / "keys.age").stat().st_mode) == 0o600
    inner = yaml.safe_load(pyrage.decrypt((env / "keys.age").read_bytes(), [identity]))
    assert inner["kind"] == "List" and len(inner["items"]) == 2
    assert {i["type"] for i in inner["items"]} == {"kubernetes.io/tls"}
    code, out, err = _run(
        capsys,
        "seal",
        "--recovery-unseal",
        "--recovery-private-key",
        str(env / "keys.age"),
        "--identity-file",
        str(env / "id.txt"),
        "-f",
        str(env / "legacy.json"),
        "-o",
        "json",
    )
    assert code == 0, err
    assert base64.b64decode(json.loads(out)["data"]["password"]) == b"from-bitnami"
    # a bare PEM private key works for recovery too (kubeseal accepts both)
    (env / "bitnami.pem").write_bytes(
        bitnami.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    os.chmod(env / "bitnami.pem", 0o600)
    code, out, _ = _run(
        capsys,
        "seal",
        "--recovery-unseal",
        "--recovery-private-key",
        str(env / "bitnami.pem"),
        "-f",
        str(env / "legacy.json"),
        "-o",
        "json",
    )
    assert code == 0 and json.loads(out)["metadata"]["name"] == "legacy"
    # restore the backup into a fresh registry: everything unseals there
    (env / "kubeshield.yaml").write_text(
        (env / "kubeshield.yaml").read_text().replace("seal-keys.json", "restored.json")
    )
    code, out, err = _run(
        capsys,
        "seal",
        "keys",
        "import",
        "--config",
        cfg,
        "-f",
        str(env / "keys.age"),
        "--identity-file",
        str(env / "id.txt"),
    )
    assert code == 0 and "Imported 2 key(s)" in out, err
    assert _run(capsys, "seal", "unseal", "--config", cfg, "-f", str(env / "legacy.json"))[0] == 0


def test_env_flags_for_sealing_do_not_break_subcommands(env: Path, capsys, monkeypatch) -> None:
    cfg = str(env / "kubeshield.yaml")
    monkeypatch.setenv("KUBESHIELD_CONFIG", cfg)  # read by `seal` and by every subcommand's --config
    monkeypatch.setenv("KUBESHIELD_SCOPE", "namespace-wide")
    assert _run(capsys, "seal", "keys", "init")[0] == 0
    code, out, err = _run(capsys, "seal", "keys", "list", "-o", "json")
    assert code == 0, err
    assert len(json.loads(out)["keys"]) == 1
    code, _, err = _run(capsys, "seal", "--scope", "strict", "keys", "list")
    assert code == 2 and "go after the subcommand" in err


def test_raw_from_file_key_ends_at_the_first_equals_sign(env: Path, capsys) -> None:
    cfg = str(env / "kubeshield.yaml")
    assert _run(capsys, "seal", "keys", "init", "--config", cfg)[0] == 0
    (env / "odd=name").write_bytes(b"value-with-odd-path")
    code, raw, err = _run(capsys, "seal", "--config", cfg, "--raw", "--scope", "cluster-wide",
                          "--from-file", f"key={env / 'odd=name'}")  # fmt: skip
    assert code == 0, err
    wide = {"sealedsecrets.bitnami.com/cluster-wide": "true"}
    obj = {"apiVersion": "bitnami.com/v1alpha1", "kind": "SealedSecret",
           "metadata": {"name": "x", "namespace": "y", "annotations": wide},
           "spec": {"encryptedData": {"k": raw}}}  # fmt: skip
    (env / "raw.json").write_text(json.dumps(obj))
    code, out, _ = _run(capsys, "seal", "unseal", "--config", cfg, "-f", str(env / "raw.json"), "-o", "json")
    assert code == 0 and base64.b64decode(json.loads(out)["data"]["k"]) == b"value-with-odd-path"
