"""The sealing-key registry: certificates plus private halves that exist on disk only wrapped.

One JSON file (mode 0600, replaced atomically under an advisory lock, ``kubeshield.keys.files``)::

    {"kind": "KubeshieldSealingKeys", "formatVersion": 1,
     "keys": [{"fingerprint": "SHA256:...",            # OpenSSH fingerprint of the public key
               "certificate": "-----BEGIN CERTIFICATE-----...",
               "created": "<RFC3339>", "origin": "generated" | "imported" | "token",
               "custody": {"type": "wrapped", "backend": "<keys.backend>", "keyId": "<backend key_id>",
                           "wrappedKey": "<b64>", "annotations": {"<k>": "<b64>"},
                           "ciphertext": "<b64 nonce(12) || AES-256-GCM(PKCS#8 DER)>"}
                        | {"type": "token", "token": "<label>", "id": "<hex CKA_ID>"}},
              ...]}                                      # oldest NotBefore first

``wrapped``: a fresh 32-byte key encrypts the PKCS#8 DER of the RSA key with AES-256-GCM; that key is
wrapped by the configured :class:`~kubeshield.keys.base.KeyBackend`. Both layers bind
``kubeshield.io/sealing-key/v1 NUL <fingerprint>`` as AAD, so a wrapped key cannot be swapped for
another key's record, and the unwrapped key is checked against the certificate before use.
``token``: the RSA key was made on a PKCS#11 token and never leaves it (:mod:`kubeshield.seal.token`).

Keys are ordered by certificate NotBefore; the newest seals. Renewal adds a key when the newest is
older than the renew period (30 days by default); old keys are never removed, so everything sealed
before still unseals.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kubeshield.errors import InvalidCiphertext, KeyringError
from kubeshield.keys.base import KeyBackend, Wrapped
from kubeshield.keys.files import exclusive_lock, write_private_atomic
from kubeshield.seal.certs import fingerprint, load_certificates, make_certificate, pem_of
from kubeshield.seal.errors import SealError
from kubeshield.seal.keyset import KeySet, MemoryDecrypter, SealingKey, SessionKeyDecrypter

__all__ = [
    "FORMAT_VERSION",
    "REGISTRY_KIND",
    "KeyRecord",
    "Registry",
    "RegistryError",
    "TokenStore",
    "aad_for",
]

REGISTRY_KIND = "KubeshieldSealingKeys"
FORMAT_VERSION = 1
_AAD_PREFIX = b"kubeshield.io/sealing-key/v1\x00"
_MAX_REGISTRY_BYTES = 16 << 20
_NONCE = 12


def aad_for(fp: str) -> bytes:
    """The AAD both wrapping layers bind: the key's fingerprint under a fixed prefix."""
    return _AAD_PREFIX + fp.encode("ascii")


class RegistryError(KeyringError):
    """The registry file is missing, unreadable, corrupt, or does not match its keys."""


class TokenStore(Protocol):
    """Where ``token`` keys live (a PKCS#11 token): make a key pair, sign, and decrypt on it."""

    label: str

    def generate(
        self,
        *,
        key_size: int,
        valid_for: timedelta,
        common_name: str,
        now: datetime,
        rng: Callable[[int], bytes],
    ) -> tuple[str, x509.Certificate]:
        """Make a key pair on the token and its self-signed certificate; returns (hex CKA_ID, certificate)."""
        ...

    def decrypter(self, key_id: str, public_key: rsa.RSAPublicKey) -> SessionKeyDecrypter:
        """A decrypter that uses the token key ``key_id`` (checked against ``public_key``)."""
        ...


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One entry of the registry (public parts and the custody description)."""

    certificate: x509.Certificate
    fingerprint: str
    created: str
    origin: Literal["generated", "imported", "token"]
    custody: Mapping[str, Any] = field(repr=False)

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def custody_type(self) -> str:
        return str(self.custody["type"])

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "certificate": pem_of(self.certificate).decode("ascii"),
            "created": self.created,
            "origin": self.origin,
            "custody": dict(self.custody),
        }


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, where: str) -> bytes:
    if not isinstance(text, str):
        raise RegistryError(f"{where}: expected a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise RegistryError(f"{where}: not base64") from None


class Registry:
    """The registry file at ``path``. ``backend`` wraps private halves; ``token`` holds token keys."""

    def __init__(
        self,
        path: Path,
        *,
        backend: KeyBackend | None = None,
        token: TokenStore | None = None,
        private_keys: Literal["wrapped", "token"] = "wrapped",
        key_size: int = 4096,
        key_ttl: float = 10 * 365 * 24 * 3600.0,
        common_name: str = "",
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.path = Path(path)
        self._backend = backend
        self._token = token
        self._private_keys = private_keys
        self._key_size = key_size
        self._key_ttl = key_ttl
        self._common_name = common_name
        self._clock = clock
        self._rng = rng

    @property
    def private_keys(self) -> str:
        """``wrapped`` or ``token``: where new private halves go."""
        return self._private_keys

    # --- reading ---------------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> list[KeyRecord]:
        """Every key, oldest NotBefore first. ``RegistryError`` names the file and the entry."""
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read(_MAX_REGISTRY_BYTES + 1)
        except FileNotFoundError:
            raise RegistryError(
                f"{self.path}: no sealing-key registry here (create one with `kubeshield seal keys init`)"
            ) from None
        except OSError as exc:
            raise RegistryError(
                f"{self.path}: cannot read the sealing-key registry: {exc.strerror}"
            ) from None
        if len(raw) > _MAX_REGISTRY_BYTES:
            raise RegistryError(f"{self.path}: larger than {_MAX_REGISTRY_BYTES} bytes; not a registry")
        return self._parse(raw)

    def _parse(self, raw: bytes) -> list[KeyRecord]:
        where = str(self.path)
        try:
            doc = json.loads(raw)
        except ValueError:
            raise RegistryError(f"{where}: not JSON; not a kubeshield sealing-key registry") from None
        if not isinstance(doc, dict) or doc.get("kind") != REGISTRY_KIND:
            raise RegistryError(f"{where}: kind: expected {REGISTRY_KIND}")
        if doc.get("formatVersion") != FORMAT_VERSION:
            raise RegistryError(
                f"{where}: formatVersion: expected {FORMAT_VERSION}, got {doc.get('formatVersion')!r}"
            )
        keys = doc.get("keys")
        if not isinstance(keys, list):
            raise RegistryError(f"{where}: keys: expected a list")
        out: list[KeyRecord] = []
        for i, entry in enumerate(keys):
            at = f"{where}: keys[{i}]"
            if not isinstance(entry, dict):
                raise RegistryError(f"{at}: expected an object")
            pem = entry.get("certificate")
            if not isinstance(pem, str):
                raise RegistryError(f"{at}.certificate: expected a PEM string")
            try:
                cert = load_certificates(pem.encode("ascii"), where=f"{at}.certificate")[0]
            except UnicodeEncodeError:
                raise RegistryError(f"{at}.certificate: not a PEM certificate") from None
            except SealError as exc:
                raise RegistryError(str(exc)) from None
            key = cert.public_key()
            if not isinstance(key, rsa.RSAPublicKey):
                raise RegistryError(f"{at}.certificate: not an RSA key")
            fp = fingerprint(key)
            if entry.get("fingerprint") != fp:
                raise RegistryError(f"{at}.fingerprint: does not match the certificate's key")
            custody = entry.get("custody")
            if not isinstance(custody, dict) or custody.get("type") not in ("wrapped", "token"):
                raise RegistryError(f"{at}.custody.type: expected wrapped or token")
            origin = entry.get("origin")
            if origin not in ("generated", "imported", "token"):
                raise RegistryError(f"{at}.origin: expected generated, imported or token")
            created = entry.get("created")
            if not isinstance(created, str):
                raise RegistryError(f"{at}.created: expected an RFC 3339 time")
            out.append(
                KeyRecord(certificate=cert, fingerprint=fp, created=created, origin=origin, custody=custody)
            )
        out.sort(key=lambda r: r.not_before)
        return out

    def records(self) -> list[KeyRecord]:
        """Like :meth:`load`, but an absent registry is an empty list."""
        return self.load() if self.exists() else []

    # --- writing ---------------------------------------------------------------------------------------

    def _write(self, records: Sequence[KeyRecord]) -> None:
        doc = {
            "kind": REGISTRY_KIND,
            "formatVersion": FORMAT_VERSION,
            "keys": [r.to_json() for r in sorted(records, key=lambda r: r.not_before)],
        }
        data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8")
        if not self.path.parent.is_dir():
            raise RegistryError(f"{self.path.parent}: the registry's directory does not exist")
        try:
            write_private_atomic(self.path, data)
        except OSError as exc:
            raise RegistryError(f"{self.path}: cannot write the registry: {exc.strerror}") from None

    def init(self, *, force: bool = False) -> KeyRecord:
        """Create the registry with one new key. Refuses to replace an existing one unless ``force``."""
        with exclusive_lock(self.path):
            if self.exists() and not force:
                raise RegistryError(
                    f"{self.path}: a registry already exists; refusing to replace it (--force)"
                )
            record = self._new_record()
            self._write([record])
            return record

    def rotate(self) -> KeyRecord:
        """Add a new key; it becomes the sealing key. Old keys stay for unsealing."""
        with exclusive_lock(self.path):
            records = self.load()
            record = self._new_record(after=records[-1].not_before if records else None)
            self._write([*records, record])
            return record

    def renew_if_due(self, *, period: float) -> KeyRecord | None:
        """Add a key when the newest is at least ``period`` seconds old (0 = never). Returns it or None."""
        if period <= 0:
            return None
        with exclusive_lock(self.path):
            records = self.load()
            now = self._clock()
            if records and now - records[-1].not_before.timestamp() < period:
                return None
            record = self._new_record(after=records[-1].not_before if records else None)
            self._write([*records, record])
            return record

    def add_private_key(
        self, private_key: rsa.RSAPrivateKey, certificate: x509.Certificate
    ) -> KeyRecord | None:
        """Import an existing key pair (wrapped by the backend). Returns None when it is already here."""
        pub = certificate.public_key()
        if (
            not isinstance(pub, rsa.RSAPublicKey)
            or pub.public_numbers() != private_key.public_key().public_numbers()
        ):
            raise RegistryError("the private key does not match its certificate")
        with exclusive_lock(self.path):
            records = self.records()
            fp = fingerprint(pub)
            if any(r.fingerprint == fp for r in records):
                return None
            record = KeyRecord(
                certificate=certificate,
                fingerprint=fp,
                created=_rfc3339(self._clock()),
                origin="imported",
                custody=self._wrap(private_key, fp),
            )
            self._write([*records, record])
            return record

    def _new_record(self, *, after: datetime | None = None) -> KeyRecord:
        now = datetime.fromtimestamp(self._clock(), tz=UTC).replace(microsecond=0)
        if after is not None and now <= after:
            now = after + timedelta(seconds=1)  # keep NotBefore strictly increasing
        valid_for = timedelta(seconds=self._key_ttl)

        def make_cert(private_key: rsa.RSAPrivateKey) -> x509.Certificate:
            return make_certificate(
                private_key, valid_for=valid_for, common_name=self._common_name, now=now, rng=self._rng
            )

        if self._private_keys == "token":
            if self._token is None:
                raise RegistryError("seal.privateKeys is token but no PKCS#11 token is configured")
            key_id, cert = self._token.generate(
                key_size=self._key_size,
                valid_for=valid_for,
                common_name=self._common_name,
                now=now,
                rng=self._rng,
            )
            pub = cert.public_key()
            assert isinstance(pub, rsa.RSAPublicKey)
            return KeyRecord(
                certificate=cert,
                fingerprint=fingerprint(pub),
                created=_rfc3339(self._clock()),
                origin="token",
                custody={"type": "token", "token": self._token.label, "id": key_id},
            )
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=self._key_size)
        cert = make_cert(private_key)
        fp = fingerprint(private_key.public_key())
        return KeyRecord(
            certificate=cert,
            fingerprint=fp,
            created=_rfc3339(self._clock()),
            origin="generated",
            custody=self._wrap(private_key, fp),
        )

    def _wrap(self, private_key: rsa.RSAPrivateKey, fp: str) -> dict[str, Any]:
        if self._backend is None:
            raise RegistryError("no key backend configured to wrap the private key (keys: section)")
        der = private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        aad = aad_for(fp)
        dek = self._rng(32)
        nonce = self._rng(_NONCE)
        ciphertext = nonce + AESGCM(dek).encrypt(nonce, der, aad)
        wrapped = self._backend.wrap(dek, aad=aad)
        return {
            "type": "wrapped",
            "backend": self._backend.name,
            "keyId": wrapped.key_id,
            "wrappedKey": _b64(wrapped.ciphertext),
            "annotations": {k: _b64(v) for k, v in sorted(wrapped.annotations.items())},
            "ciphertext": _b64(ciphertext),
        }

    # --- using -----------------------------------------------------------------------------------------

    def private_key(self, record: KeyRecord) -> rsa.RSAPrivateKey:
        """Unwrap one ``wrapped`` key and check it against its certificate. ``InvalidCiphertext`` if the
        backend or the bytes refuse; ``RegistryError`` if the result is not the certificate's key."""
        custody = record.custody
        if custody.get("type") != "wrapped":
            raise RegistryError(
                f"{self.path}: key {record.fingerprint} is held by a token; it cannot leave it"
            )
        if self._backend is None:
            raise RegistryError("no key backend configured to unwrap the private key (keys: section)")
        at = f"{self.path}: key {record.fingerprint}: custody"
        annotations = custody.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise RegistryError(f"{at}.annotations: expected an object")
        key_id = custody.get("keyId")
        if not isinstance(key_id, str):
            raise RegistryError(f"{at}.keyId: expected a string")
        wrapped = Wrapped(
            ciphertext=_unb64(custody.get("wrappedKey"), f"{at}.wrappedKey"),
            key_id=key_id,
            annotations={k: _unb64(v, f"{at}.annotations.{k}") for k, v in annotations.items()},
        )
        blob = _unb64(custody.get("ciphertext"), f"{at}.ciphertext")
        aad = aad_for(record.fingerprint)
        dek = self._backend.unwrap(wrapped, aad=aad)
        if len(dek) != 32 or len(blob) < _NONCE + 16:
            raise InvalidCiphertext()
        try:
            der = AESGCM(dek).decrypt(blob[:_NONCE], blob[_NONCE:], aad)
        except InvalidTag:
            raise InvalidCiphertext() from None
        try:
            key = serialization.load_der_private_key(der, password=None)
        except ValueError:
            raise InvalidCiphertext() from None
        if not isinstance(key, rsa.RSAPrivateKey) or fingerprint(key.public_key()) != record.fingerprint:
            raise RegistryError(
                f"{self.path}: key {record.fingerprint}: the unwrapped key is not the certificate's"
            )
        return key

    def keyset(self, *, unseal: bool = True, records: Sequence[KeyRecord] | None = None) -> KeySet:
        """The keys as a :class:`KeySet`; with ``unseal`` every private half is unwrapped (or opened on
        the token) and held by this process."""
        records = self.load() if records is None else list(records)
        keys: list[SealingKey] = []
        for record in records:
            decrypter: SessionKeyDecrypter | None = None
            if unseal:
                if record.custody_type == "wrapped":
                    decrypter = MemoryDecrypter(self.private_key(record))
                else:
                    if self._token is None:
                        raise RegistryError(
                            f"{self.path}: key {record.fingerprint} is on PKCS#11 token "
                            f"{record.custody.get('token')!r}, but keys.backend is not pkcs11"
                        )
                    pub = record.certificate.public_key()
                    assert isinstance(pub, rsa.RSAPublicKey)
                    decrypter = self._token.decrypter(str(record.custody["id"]), pub)
            keys.append(SealingKey(certificate=record.certificate, decrypter=decrypter))
        return KeySet(keys)
