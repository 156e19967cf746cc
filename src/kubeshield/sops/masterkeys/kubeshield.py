"""The ``kubeshield`` master key: the data key wrapped by any kubeshield :class:`KeyBackend`.

It is an **age plugin recipient**, so the real sops binary handles it natively: the key sits in the
ordinary ``age:`` list of the metadata, sops starts ``age-plugin-kubeshield`` (installed with
kubeshield) to wrap a new data key on ``sops -r`` / ``updatekeys`` and to unwrap it on ``sops -d``,
and a sops without the plugin on ``PATH`` refuses those operations instead of dropping the key.

Encodings (all public, none holds a secret)::

    recipient  Bech32, HRP "age1kubeshield", data = UTF-8 absolute path of a kubeshield.yaml
    identity   Bech32, HRP "AGE-PLUGIN-KUBESHIELD-" (upper case), the same data
    stanza     -> kubeshield v1
               body = 0x01 || u16 len || key_id || u8 n || n x (u16 len || name || u16 len || value)
                      || ciphertext                      (big-endian lengths; a ``Wrapped``)

The stanza wraps age's 16-byte file key with ``backend.wrap(file_key, aad=AAD)``; the age file around it
(:mod:`._age_format`) holds the sops data key. The backend is the config file's ``keys`` section opened
with :func:`kubeshield.keys.registry.open_primary` (no hierarchy cache, no break-glass): PKCS#11, TPM,
the custody process, the local keyring, Transit and AWS KMS all work.

``kubeshield.keys`` and ``kubeshield.config`` are imported only when a kubeshield key is used: every
``kubeshield sops`` command imports this module (age recipients are checked against it), and importing
the key registry costs ~0.2 s of start-up that a file encrypted for plain age keys does not need.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from kubeshield.errors import InvalidCiphertext, KeyNotFound, KubeshieldError
from kubeshield.sops.errors import ExitCode, SopsError
from kubeshield.sops.masterkeys import _age_format, _bech32

if TYPE_CHECKING:
    from kubeshield.keys.base import KeyBackend, Wrapped

__all__ = [
    "AAD",
    "IDENTITY_HRP",
    "RECIPIENT_HRP",
    "STANZA_TYPE",
    "BackendPool",
    "config_of_identity",
    "config_of_recipient",
    "decode_body",
    "encode_body",
    "identity_for",
    "is_kubeshield_recipient",
    "recipient_for",
    "unwrap_stanza",
    "wrap_file_key",
]

RECIPIENT_HRP: Final = "age1kubeshield"
IDENTITY_HRP: Final = "AGE-PLUGIN-KUBESHIELD-"
STANZA_TYPE: Final = "kubeshield"
AAD: Final = b"kubeshield-sops-age-v1\x00file-key"


def recipient_for(config: str | Path) -> str:
    """The recipient that wraps with the backend of the kubeshield.yaml at ``config``."""
    return _bech32.encode(RECIPIENT_HRP, str(Path(config).resolve()).encode("utf-8"))


def identity_for(config: str | Path) -> str:
    return _bech32.encode(IDENTITY_HRP, str(Path(config).resolve()).encode("utf-8")).upper()


def is_kubeshield_recipient(recipient: str) -> bool:
    return recipient.strip().lower().startswith(RECIPIENT_HRP + "1")


def _config_of(text: str, hrp: str) -> str:
    try:
        found, data = _bech32.decode(text.strip())
        path = data.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise SopsError(
            f"not a valid kubeshield age {'recipient' if hrp == RECIPIENT_HRP else 'identity'}"
        ) from None
    if found != hrp.lower() or not path.startswith("/"):
        raise SopsError("not a kubeshield age recipient or identity")
    return path


def config_of_recipient(recipient: str) -> str:
    return _config_of(recipient, RECIPIENT_HRP)


def config_of_identity(identity: str) -> str:
    return _config_of(identity, IDENTITY_HRP)


def encode_body(wrapped: Wrapped) -> bytes:
    key_id = wrapped.key_id.encode("utf-8")
    out = bytearray(struct.pack(">BH", 1, len(key_id)) + key_id)
    out.append(len(wrapped.annotations))
    for name, value in sorted(wrapped.annotations.items()):
        raw = name.encode("utf-8")
        out += struct.pack(">H", len(raw)) + raw + struct.pack(">H", len(value)) + value
    return bytes(out + wrapped.ciphertext)


def decode_body(body: bytes) -> Wrapped:
    from kubeshield.keys.base import Wrapped

    try:
        version, size = struct.unpack_from(">BH", body)
        if version != 1:
            raise InvalidCiphertext()
        pos = 3
        key_id = body[pos : pos + size].decode("utf-8")
        pos += size
        count = body[pos]
        pos += 1
        annotations: dict[str, bytes] = {}
        for _ in range(count):
            (n,) = struct.unpack_from(">H", body, pos)
            name = body[pos + 2 : pos + 2 + n].decode("utf-8")
            pos += 2 + n
            (m,) = struct.unpack_from(">H", body, pos)
            annotations[name] = bytes(body[pos + 2 : pos + 2 + m])
            pos += 2 + m
    except (struct.error, IndexError, UnicodeDecodeError):
        raise InvalidCiphertext() from None
    ciphertext = bytes(body[pos:])
    if not ciphertext:
        raise InvalidCiphertext()
    return Wrapped(ciphertext=ciphertext, key_id=key_id, annotations=annotations)


class BackendPool:
    """Opens each kubeshield.yaml's backend once per process; ``close()`` releases them all."""

    def __init__(self, *, opener: Callable[[str], KeyBackend] | None = None) -> None:
        self._opener = opener or _open_from_config
        self._open: dict[str, KeyBackend] = {}

    def get(self, config: str) -> KeyBackend:
        backend = self._open.get(config)
        if backend is None:
            try:
                backend = self._opener(config)
            except KubeshieldError as exc:
                raise SopsError(
                    f"kubeshield key {config}: cannot open its key backend: {exc}",
                    code=ExitCode.COULD_NOT_RETRIEVE_KEY,
                ) from exc
            self._open[config] = backend
        return backend

    def close(self) -> None:
        for backend in self._open.values():
            backend.close()
        self._open.clear()


def _open_from_config(config: str) -> KeyBackend:
    from kubeshield.config.loader import load_config
    from kubeshield.keys.registry import open_primary

    return open_primary(load_config(config).keys)


def wrap_file_key(file_key: bytes, *, config: str, pool: BackendPool) -> _age_format.Stanza:
    wrapped = pool.get(config).wrap(file_key, aad=AAD)
    return _age_format.Stanza(STANZA_TYPE, ("v1",), encode_body(wrapped))


def unwrap_stanza(stanza: _age_format.Stanza, *, config: str, pool: BackendPool) -> bytes | None:
    """The file key, or ``None`` when the stanza is not ours or not for this backend."""
    if stanza.type != STANZA_TYPE or stanza.args != ("v1",):
        return None
    try:
        wrapped = decode_body(stanza.body)
        file_key = pool.get(config).unwrap(wrapped, aad=AAD)
    except (InvalidCiphertext, KubeshieldError) as exc:
        if isinstance(exc, SopsError):
            raise
        if isinstance(exc, InvalidCiphertext | KeyNotFound):
            return None  # wrapped by another backend or KEK: not ours
        raise SopsError(
            f"kubeshield key {config}: the key backend failed: {exc}", code=ExitCode.COULD_NOT_RETRIEVE_KEY
        ) from exc
    return file_key if len(file_key) == 16 else None


def encrypt_data_key(
    data_key: bytes, *, recipient: str, pool: BackendPool, rng: Callable[[int], bytes] = os.urandom
) -> str:
    """The armoured age file that sops stores in ``enc`` for a kubeshield recipient."""
    config = config_of_recipient(recipient)
    file_key = rng(16)
    stanza = wrap_file_key(file_key, config=config, pool=pool)
    return _age_format.armor(_age_format.encrypt(data_key, file_key=file_key, stanzas=[stanza], rng=rng))


def decrypt_data_key(enc: str, *, configs: list[str], pool: BackendPool) -> bytes | None:
    """Try each kubeshield.yaml in ``configs`` on the kubeshield stanzas of ``enc``."""
    data = _age_format.dearmor(enc)
    for config in configs:

        def unwrap(stanza: _age_format.Stanza, config: str = config) -> bytes | None:
            return unwrap_stanza(stanza, config=config, pool=pool)

        try:
            return _age_format.decrypt(data, unwrap=unwrap)
        except InvalidCiphertext:
            continue
    return None
