"""sealed-secrets controller key Secrets: read them (import, recovery) and write them (backup).

The controller (``pkg/controller/keys.go`` ``writeKey``) stores each key as a Secret in its namespace::

    apiVersion: v1
    kind: Secret
    type: kubernetes.io/tls
    metadata:
      generateName: sealed-secrets-key             # --key-prefix; names look like sealed-secrets-keyq8x2z
      namespace: <controller namespace>
      labels: {sealedsecrets.bitnami.com/sealed-secrets-key: active}
    data:
      tls.key: <base64 of PEM "RSA PRIVATE KEY" (PKCS#1)>
      tls.crt: <base64 of PEM "CERTIFICATE" block(s)>

It loads the Secrets whose label is ``active`` (``compromised`` ones are not loaded). kubeseal's
``--recovery-private-key`` reads a PEM private key, or such a Secret, or a ``v1 List`` of them, as YAML
or JSON. :func:`read_key_material` accepts all of those (and age-encrypted backups made by
:func:`backup_payload`, given an identity or passphrase).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kubeshield.seal.certs import fingerprint, load_certificates, pem_of
from kubeshield.seal.errors import SealError
from kubeshield.seal.objects import b64decode_std, b64encode_std, dump_objects, load_documents

__all__ = [
    "KEY_LABEL",
    "KEY_PREFIX",
    "KeyMaterial",
    "backup_payload",
    "controller_key_secret",
    "decrypt_age",
    "read_key_material",
]

KEY_LABEL = "sealedsecrets.bitnami.com/sealed-secrets-key"
KEY_PREFIX = "sealed-secrets-key"
_AGE_HEADER = b"age-encryption.org/v1\n"


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """A private key found in a file, with its certificate(s) when the file had them."""

    private_key: rsa.RSAPrivateKey = field(repr=False)
    certificates: tuple[x509.Certificate, ...]
    where: str
    state: str = "active"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.private_key.public_key())


def _private_key_from_pem(data: bytes, where: str) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise SealError(
            f"{where}: the private key is encrypted with a passphrase; decrypt it first"
        ) from None
    except ValueError:
        raise SealError(f"{where}: not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SealError(f"{where}: expected an RSA private key, found {type(key).__name__.lstrip('_')}")
    return key


def read_key_material(data: bytes, *, source: str) -> list[KeyMaterial]:
    """Every private key in ``data``: a PEM key, a controller key Secret, or a List of them. Each keeps
    its label's state (``active``, ``compromised``); callers decide what to do with inactive ones."""
    if data.startswith(_AGE_HEADER):
        raise SealError(
            f"{source}: an age-encrypted backup; give --identity-file or --backup-passphrase-file"
        )
    if data.lstrip().startswith(b"-----BEGIN"):
        key = _private_key_from_pem(data, source)
        certs: tuple[x509.Certificate, ...] = ()
        if b"-----BEGIN CERTIFICATE-----" in data:
            certs = tuple(load_certificates(data, where=source))
        return [KeyMaterial(private_key=key, certificates=certs, where=source)]
    out: list[KeyMaterial] = []
    for doc in load_documents(data, source=source):
        obj = doc.obj
        if obj.get("kind") != "Secret":
            raise SealError(f"{doc.where}: expected a key Secret (kind Secret), got kind {obj.get('kind')!r}")
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        assert isinstance(meta, dict)
        name = meta.get("name") or meta.get("generateName") or "?"
        where = f"{doc.where} (Secret {name})"
        labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
        assert isinstance(labels, dict)
        state = str(labels.get(KEY_LABEL, "active"))
        data_map = obj.get("data")
        if not isinstance(data_map, dict) or "tls.key" not in data_map:
            raise SealError(
                f"{where}: data.tls.key: required (a sealed-secrets key Secret holds tls.key and tls.crt)"
            )
        try:
            key_pem = b64decode_std(str(data_map["tls.key"]))
        except ValueError:
            raise SealError(f"{where}: data.tls.key: not standard base64") from None
        key = _private_key_from_pem(key_pem, f"{where}: data.tls.key")
        certs = ()
        if data_map.get("tls.crt"):
            try:
                crt_pem = b64decode_std(str(data_map["tls.crt"]))
            except ValueError:
                raise SealError(f"{where}: data.tls.crt: not standard base64") from None
            certs = tuple(load_certificates(crt_pem, where=f"{where}: data.tls.crt"))
            pub = certs[0].public_key()
            if (
                not isinstance(pub, rsa.RSAPublicKey)
                or pub.public_numbers() != key.public_key().public_numbers()
            ):
                raise SealError(f"{where}: data.tls.crt: the certificate is not for data.tls.key")
        out.append(KeyMaterial(private_key=key, certificates=certs, where=where, state=state))
    if not out:
        raise SealError(f"{source}: no key Secret found")
    return out


def controller_key_secret(
    private_key: rsa.RSAPrivateKey,
    certificates: Sequence[x509.Certificate],
    *,
    namespace: str,
    name: str | None = None,
    prefix: str = KEY_PREFIX,
    creation_timestamp: str | None = None,
) -> dict[str, Any]:
    """The key Secret exactly as the controller's ``writeKey`` builds it (``name`` set for backups)."""
    key_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    metadata: dict[str, Any] = {"namespace": namespace, "labels": {KEY_LABEL: "active"}}
    if name:
        metadata["name"] = name
    else:
        metadata["generateName"] = prefix
    if creation_timestamp:
        metadata["creationTimestamp"] = creation_timestamp
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": metadata,
        "data": {
            "tls.crt": b64encode_std(b"".join(pem_of(c) for c in certificates)),
            "tls.key": b64encode_std(key_pem),
        },
    }


def backup_payload(pairs: Sequence[tuple[rsa.RSAPrivateKey, x509.Certificate]], *, namespace: str) -> bytes:
    """A YAML ``v1 List`` of controller key Secrets (named ``sealed-secrets-key<fp>``): what goes inside
    an age-encrypted ``seal keys backup``. It restores with ``seal keys import``, ``kubectl apply`` into
    a bitnami controller's namespace, or ``kubeseal --recovery-private-key``."""
    items = []
    for key, cert in pairs:
        suffix = hashlib.sha256(fingerprint(key.public_key()).encode()).hexdigest()[:10]
        items.append(controller_key_secret(key, [cert], namespace=namespace, name=f"{KEY_PREFIX}{suffix}"))
    return dump_objects([{"apiVersion": "v1", "kind": "List", "items": items}], fmt="yaml").encode("utf-8")


def decrypt_age(data: bytes, *, identities: Sequence[str] = (), passphrase: bytes | None = None) -> bytes:
    """Open an age file (X25519 identities or a passphrase). ``SealError`` when it does not open."""
    if not data.startswith(_AGE_HEADER):
        raise SealError("not an age-encrypted file (no age v1 header)")
    if bool(identities) == (passphrase is not None):
        raise SealError("give an age identity or a passphrase (exactly one of the two)")
    try:
        import pyrage
    except ModuleNotFoundError:
        raise SealError("age backups need the pyrage package: pip install 'kubeshield[backup]'") from None
    try:
        if passphrase is not None:
            return bytes(pyrage.passphrase.decrypt(data, passphrase.decode("utf-8")))
        parsed = [pyrage.x25519.Identity.from_str(i) for i in identities]
        return bytes(pyrage.decrypt(data, parsed))
    except (pyrage.DecryptError, pyrage.IdentityError, UnicodeDecodeError):
        raise SealError(
            "cannot decrypt: wrong identity or passphrase, or the file is truncated or tampered"
        ) from None
