"""Sealing keys that live on a PKCS#11 token and never leave it (``seal.privateKeys: token``).

The RSA key pair is generated on the token (``CKA_TOKEN``, ``CKA_PRIVATE``, ``CKA_SENSITIVE``, not
``CKA_EXTRACTABLE``), identified by a random 16-byte ``CKA_ID`` kept in the registry. Its certificate
(the controller's template, :func:`~kubeshield.seal.certs.make_certificate`) is self-signed **on the
token** (``CKM_SHA256_RSA_PKCS`` over the TBS part), so the private key is also ``CKA_SIGN``.

Unsealing needs RSA-OAEP with SHA-256, MGF1-SHA-256 and the scope's label. Tokens differ:

* ``oaep``: ``CKM_RSA_PKCS_OAEP`` with ``hashAlg=CKM_SHA256``, ``mgf=CKG_MGF1_SHA256`` and the label
  as ``pSourceData``: the whole OAEP decryption happens on the token.
* ``rsa-x509``: the token does the raw RSA private operation (``CKM_RSA_X_509``) and kubeshield decodes
  OAEP (RFC 8017 section 7.1.2) on the host, without early exits and with one opaque error for every
  failure. The private key still never leaves the token.
* ``auto`` (default): try ``oaep`` once at start on a probe the public key sealed; if the token refuses
  the parameters, use ``rsa-x509``. :attr:`Pkcs11TokenStore.probe` says what happened.

SoftHSM2 2.6.1 (Debian bookworm), as tested here: ``CKM_RSA_PKCS_OAEP`` works only with SHA-1 and no
label; SHA-256 gives ``CKR_ARGUMENTS_BAD`` and a label with SHA-1 ``CKR_GENERAL_ERROR``. So SoftHSM2 2.6
runs in ``rsa-x509`` mode. Tokens whose OAEP takes SHA-256 and a source label (most network HSMs
document it; check the vendor's mechanism list) run in ``oaep`` mode.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from kubeshield.config import Pkcs11Settings
from kubeshield.errors import BackendError, ConfigError, InvalidCiphertext, KeyNotFound
from kubeshield.keys.pkcs11 import read_pin
from kubeshield.seal import _hybrid
from kubeshield.seal.certs import make_certificate

__all__ = ["KEY_LABEL", "Pkcs11TokenStore", "TokenDecrypter", "oaep_decode"]

KEY_LABEL = "kubeshield-seal"
_SHA256_LEN = 32
# DER AlgorithmIdentifier for sha256WithRSAEncryption, NULL parameters
_SHA256_RSA = bytes.fromhex("300d06092a864886f70d01010b0500")


def _mgf1(seed: bytes, length: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(out[:length])


def oaep_decode(em: bytes, *, label: bytes, k: int) -> bytes:
    """EME-OAEP decoding with SHA-256 and MGF1-SHA-256 (RFC 8017 7.1.2 step 3). ``InvalidCiphertext``.

    Every check is computed before any is acted on, and the ``0x01`` separator is searched over the
    whole block, so the work done does not depend on where decoding fails.
    """
    h = _SHA256_LEN
    if k < 2 * h + 2:
        raise InvalidCiphertext()
    em = em.rjust(k, b"\x00")
    if len(em) != k:
        raise InvalidCiphertext()
    y = em[0]
    masked_seed, masked_db = em[1 : 1 + h], em[1 + h :]
    seed = bytes(a ^ b for a, b in zip(masked_seed, _mgf1(masked_db, h), strict=True))
    db = bytes(a ^ b for a, b in zip(masked_db, _mgf1(seed, k - h - 1), strict=True))
    good = hmac.compare_digest(db[:h], hashlib.sha256(label).digest()) & (y == 0)
    index = 0
    looking = 1
    invalid = 0
    for i in range(h, len(db)):
        byte = db[i]
        is_one = int(byte == 1)
        is_zero = int(byte == 0)
        index = index + (i * is_one * looking)
        invalid |= looking & (1 - is_one) & (1 - is_zero)
        looking &= 1 - is_one
    if not good or looking or invalid:
        raise InvalidCiphertext()
    return db[index + 1 :]


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(body)) + body


@dataclass(frozen=True, slots=True)
class Probe:
    """What the start-up probe found: the mechanism in use and why."""

    mechanism: str
    detail: str


class TokenDecrypter:
    """Decrypts session keys with one private key object on the token."""

    def __init__(self, store: Pkcs11TokenStore, key: Any, public_key: rsa.RSAPublicKey) -> None:
        self._store = store
        self._key = key
        self._k = (public_key.key_size + 7) // 8

    def decrypt_session_key(self, rsa_ciphertext: bytes, *, label: bytes) -> bytes:
        if len(rsa_ciphertext) != self._k:
            raise InvalidCiphertext()
        return self._store._decrypt(self._key, rsa_ciphertext, label=label, k=self._k)


class Pkcs11TokenStore:
    """RSA sealing keys on one PKCS#11 token (python-pkcs11; one session, calls serialised)."""

    def __init__(self, *, module: str, token: str, pin: bytes, mechanism: str = "auto") -> None:
        if mechanism not in ("auto", "oaep", "rsa-x509"):
            raise ConfigError(f"seal.pkcs11Mechanism: must be auto, oaep or rsa-x509; got {mechanism!r}")
        if not Path(module).is_file():
            raise ConfigError(f"keys.pkcs11.module: PKCS#11 module {module!r} does not exist")
        import pkcs11
        from pkcs11 import exceptions as p11e

        self._p11 = pkcs11
        self._p11e = p11e
        self.label = token
        self._wanted = mechanism
        self._lock = threading.Lock()
        self.probe: Probe | None = None
        try:
            lib = pkcs11.lib(module)
            self._token = lib.get_token(token_label=token)
            self._session: Any = self._token.open(user_pin=pin.decode("utf-8"), rw=True)
        except p11e.NoSuchToken:
            raise ConfigError(f"keys.pkcs11.token: no token labelled {token!r} in {module}") from None
        except p11e.PinIncorrect:
            raise BackendError("the PKCS#11 PIN was refused") from None
        except p11e.PKCS11Error as exc:
            raise BackendError(f"cannot open the PKCS#11 token ({type(exc).__name__})") from None

    @classmethod
    def from_settings(cls, settings: Pkcs11Settings, *, mechanism: str = "auto") -> Pkcs11TokenStore:
        pin = read_pin(pin_file=settings.pin_file)
        return cls(module=str(settings.module), token=settings.token, pin=pin, mechanism=mechanism)

    def close(self) -> None:
        with self._lock:
            session, self._session = self._session, None
            if session is not None:
                try:
                    session.close()
                except self._p11e.PKCS11Error:  # pragma: no cover - closing a dead session
                    pass

    # --- keys ---------------------------------------------------------------------------------------

    def generate(
        self,
        *,
        key_size: int,
        valid_for: timedelta,
        common_name: str,
        now: datetime,
        rng: Callable[[int], bytes],
    ) -> tuple[str, x509.Certificate]:
        p11 = self._p11
        attr = p11.Attribute
        key_id = rng(16)
        with self._lock:
            try:
                public, private_obj = self._session.generate_keypair(
                    p11.KeyType.RSA,
                    key_size,
                    id=key_id,
                    label=KEY_LABEL,
                    store=True,
                    public_template={attr.ENCRYPT: True, attr.VERIFY: True, attr.WRAP: False},
                    private_template={
                        attr.SENSITIVE: True,
                        attr.EXTRACTABLE: False,
                        attr.DECRYPT: True,
                        attr.SIGN: True,
                        attr.UNWRAP: False,
                        attr.PRIVATE: True,
                    },
                )
                private: Any = private_obj
                pub = self._public_key(public)
                # the TBS is built by pyca with a throwaway signer; the token signs it for real
                throwaway = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                draft = make_certificate(
                    throwaway, valid_for=valid_for, common_name=common_name, now=now, rng=rng, public_key=pub
                )
                tbs = draft.tbs_certificate_bytes
                signature = private.sign(tbs, mechanism=p11.Mechanism.SHA256_RSA_PKCS)
            except self._p11e.PKCS11Error as exc:
                raise BackendError(
                    f"the token could not make an RSA-{key_size} key ({type(exc).__name__})"
                ) from None
        der = _der(0x30, tbs + _SHA256_RSA + _der(0x03, b"\x00" + bytes(signature)))
        cert = x509.load_der_x509_certificate(der)
        pub.verify(bytes(signature), tbs, padding.PKCS1v15(), hashes.SHA256())
        return key_id.hex(), cert

    def _public_key(self, obj: Any) -> rsa.RSAPublicKey:
        attr = self._p11.Attribute
        n = int.from_bytes(obj[attr.MODULUS], "big")
        e = int.from_bytes(obj[attr.PUBLIC_EXPONENT], "big")
        return rsa.RSAPublicNumbers(e, n).public_key()

    def decrypter(self, key_id: str, public_key: rsa.RSAPublicKey) -> TokenDecrypter:
        p11 = self._p11
        with self._lock:
            try:
                private = self._session.get_key(
                    object_class=p11.ObjectClass.PRIVATE_KEY,
                    key_type=p11.KeyType.RSA,
                    id=bytes.fromhex(key_id),
                )
                modulus = int.from_bytes(private[p11.Attribute.MODULUS], "big")
            except (p11.NoSuchKey, p11.MultipleObjectsReturned):
                raise KeyNotFound(f"no single RSA key with CKA_ID {key_id} on token {self.label!r}") from None
            except self._p11e.PKCS11Error as exc:
                raise BackendError(f"cannot read the token key ({type(exc).__name__})") from None
        if modulus != public_key.public_numbers().n:
            raise KeyNotFound(f"the token key with CKA_ID {key_id} is not the registry's key")
        decrypter = TokenDecrypter(self, private, public_key)
        if self.probe is None:
            self.probe = self._choose(private, public_key)
        return decrypter

    # --- decrypting ---------------------------------------------------------------------------------

    def _choose(self, private: Any, public_key: rsa.RSAPublicKey) -> Probe:
        if self._wanted == "rsa-x509":
            return Probe("rsa-x509", "configured")
        probe_key = os.urandom(32)
        label = b"kubeshield-probe/oaep"
        ct = public_key.encrypt(probe_key, _hybrid.oaep(label))
        p11 = self._p11
        with self._lock:
            try:
                out = private.decrypt(
                    ct,
                    mechanism=p11.Mechanism.RSA_PKCS_OAEP,
                    mechanism_param=(p11.Mechanism.SHA256, p11.MGF.SHA256, label),
                )
                ok = bytes(out) == probe_key
                detail = "CKM_RSA_PKCS_OAEP(SHA-256, MGF1-SHA-256, label) accepted"
            except self._p11e.PKCS11Error as exc:
                ok = False
                detail = f"CKM_RSA_PKCS_OAEP(SHA-256, label) refused by the token ({type(exc).__name__})"
        if ok:
            return Probe("oaep", detail)
        if self._wanted == "oaep":
            raise BackendError(f"seal.pkcs11Mechanism is oaep but {detail}")
        return Probe("rsa-x509", detail + "; using CKM_RSA_X_509 with OAEP decoded by kubeshield")

    def _decrypt(self, private: Any, ct: bytes, *, label: bytes, k: int) -> bytes:
        p11 = self._p11
        assert self.probe is not None
        with self._lock:
            if self._session is None:
                raise BackendError("the PKCS#11 token session is closed")
            try:
                if self.probe.mechanism == "oaep":
                    return bytes(
                        private.decrypt(
                            ct,
                            mechanism=p11.Mechanism.RSA_PKCS_OAEP,
                            mechanism_param=(p11.Mechanism.SHA256, p11.MGF.SHA256, label or None),
                        )
                    )
                em = bytes(private.decrypt(ct, mechanism=p11.Mechanism.RSA_X_509))
            except (
                self._p11e.EncryptedDataInvalid,
                self._p11e.EncryptedDataLenRange,
                self._p11e.DataInvalid,
                self._p11e.DataLenRange,
            ):
                raise InvalidCiphertext() from None
            except self._p11e.PKCS11Error as exc:
                raise BackendError(f"the PKCS#11 decrypt call failed ({type(exc).__name__})") from None
        return oaep_decode(em, label=label, k=k)
