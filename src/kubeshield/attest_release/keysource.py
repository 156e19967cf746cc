"""An in-memory key backend built from KEK versions released by the release server.

The custody process uses it instead of unsealing a keyring file: it attests (a TPM quote), receives the
keyring's versions encrypted to its ephemeral key, and serves wrap/unwrap from memory. The wrap format
is exactly the ``local`` backend's (:mod:`kubeshield.keys.local`)::

    0x01 || fingerprint(8) || nonce(12) || AES-256-GCM ciphertext || tag(16)
    AAD = b"kubeshield/local/v1\\x00" + key_id + b"\\x00" + aad

and the key_ids are the keyring's own, so data wrapped here unwraps with the keyring on the server and
vice versa (a test checks both directions). Every unwrap failure is ``InvalidCiphertext``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kubeshield.attest_release.resources import RELEASED_KEYS_KIND
from kubeshield.errors import InvalidCiphertext, KeyNotFound, KeyringError
from kubeshield.keys.base import Health, KeyVersionInfo, Wrapped
from kubeshield.keys.health import round_trip
from kubeshield.keys.keyring import fingerprint, key_id_for
from kubeshield.keys.local import WRAP_FORMAT

__all__ = ["ReleasedKeyBackend"]

_AAD_LABEL = b"kubeshield/local/v1\x00"  # the local backend's label (kubeshield.keys.local)
_FP, _NONCE, _TAG = 8, 12, 16


class ReleasedKeyBackend:
    """KEK versions held in memory only. Implements KeyBackend (no rotation: rotate on the server)."""

    name = "released"

    def __init__(
        self,
        material: bytes,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._clock, self._rng = clock, rng
        try:
            doc = json.loads(material)
            if doc.get("kind") != RELEASED_KEYS_KIND:
                raise ValueError
            entries = doc["versions"]
            keys: dict[str, AESGCM] = {}
            by_fp: dict[bytes, str] = {}
            infos: list[KeyVersionInfo] = []
            primary = None
            for e in entries:
                key = base64.b64decode(e["key"], validate=True)
                version = int(e["version"])
                if len(key) != 32 or key_id_for(version, key) != e["keyId"]:
                    raise ValueError
                keys[e["keyId"]] = AESGCM(key)
                by_fp[fingerprint(key)] = e["keyId"]
                infos.append(KeyVersionInfo(version, e["keyId"], 0.0, str(e["state"])))
                if e["state"] == "primary":
                    primary = str(e["keyId"])
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise KeyringError("the released key material is not a kubeshield keyring release") from None
        if primary is None:
            raise KeyringError("the released key material has no primary KEK version")
        self._keys, self._by_fp, self._primary, self._infos = keys, by_fp, primary, tuple(infos)

    def key_id(self) -> str:
        return self._primary

    def wrap(self, plaintext: bytes, *, aad: bytes = b"") -> Wrapped:
        if not isinstance(plaintext, bytes) or not plaintext:
            raise ValueError("plaintext must be non-empty bytes")
        key_id = self._primary
        nonce = self._rng(_NONCE)
        fp = bytes.fromhex(key_id.rsplit(":", 1)[1])
        ct = self._keys[key_id].encrypt(nonce, plaintext, _AAD_LABEL + key_id.encode() + b"\x00" + aad)
        return Wrapped(ciphertext=bytes([WRAP_FORMAT]) + fp + nonce + ct, key_id=key_id)

    def unwrap(self, wrapped: Wrapped, *, aad: bytes = b"") -> bytes:
        blob = wrapped.ciphertext
        if len(blob) < 1 + _FP + _NONCE + _TAG or blob[0] != WRAP_FORMAT:
            raise InvalidCiphertext()
        key_id = wrapped.key_id or self._by_fp.get(blob[1 : 1 + _FP], "")
        if key_id not in self._keys:
            if wrapped.key_id:
                raise KeyNotFound(f"key_id {wrapped.key_id!r} is not among the released KEK versions")
            raise InvalidCiphertext()
        if bytes.fromhex(key_id.rsplit(":", 1)[1]) != blob[1 : 1 + _FP]:
            raise InvalidCiphertext()
        try:
            return self._keys[key_id].decrypt(
                blob[1 + _FP : 1 + _FP + _NONCE],
                blob[1 + _FP + _NONCE :],
                _AAD_LABEL + key_id.encode() + b"\x00" + aad,
            )
        except InvalidTag:
            raise InvalidCiphertext() from None

    def check_health(self) -> Health:
        return round_trip(self, clock=self._clock, rng=self._rng)

    def versions(self) -> list[KeyVersionInfo]:
        return list(self._infos)

    def close(self) -> None:
        self._keys = {}
        self._by_fp = {}
