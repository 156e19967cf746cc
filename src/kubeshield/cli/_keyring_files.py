"""The library half of ``keys rotate|list|retire|backup|restore`` for keyring files (local and tpm).

:func:`keyring_target` turns the resolved ``keys:`` settings into the keyring file a command works on,
sealed the way the configuration says: ``local`` -> ``keys.local.keyring`` with the passphrase of
``keys.local.passphraseFile`` (or ``--passphrase-file``, or ``$KUBESHIELD_KEYRING_PASSPHRASE``);
``tpm`` -> ``keys.tpm.keyring`` sealed by the TPM at ``keys.tpm.tcti`` to ``keys.tpm.pcrs``. Any other
backend has no keyring file and gets ``None``.

:func:`find_values_under` is the etcd check of ``keys retire``: it walks every resource under the
apiserver's etcd prefix with the audit library (:class:`kubeshield.etcd.audit.Auditor`) and reports
each value that still needs the key being retired: KMS v2 values whose stored key_id is that
version's, and KMS v1 values whose encrypted DEK is a ``local`` wrap naming that version's
fingerprint (v1 stores no key_id). Values it cannot parse are reported too (fail closed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kubeshield.config import KeysSettings
from kubeshield.errors import ConfigError, InvalidCiphertext
from kubeshield.keys.keyring import KeyringFile, KeyringVersion, KeySealer

if TYPE_CHECKING:
    from kubeshield.etcd.store import KVSource

__all__ = ["KeyringTarget", "ValuesUnder", "find_values_under", "keyring_target", "parse_versions"]


@dataclass(frozen=True, slots=True)
class KeyringTarget:
    """A keyring file and how it is sealed. ``describe`` is for messages (no secret)."""

    backend: str
    path: Path
    passphrase: bytes | None = field(repr=False)
    sealer: KeySealer | None
    describe: str

    def file(self) -> KeyringFile:
        return KeyringFile(self.path, sealer=self.sealer)


def keyring_target(keys: KeysSettings, *, passphrase_flag: bool) -> KeyringTarget | None:
    """The keyring file the ``keys`` settings name, or None for a backend without one.

    ``passphrase_flag`` says ``--passphrase-file`` was given: a TPM-sealed keyring has no passphrase.
    """
    from kubeshield.keys.passphrase import read_passphrase

    if keys.backend == "local":
        passphrase = read_passphrase(passphrase_file=keys.local.passphrase_file)
        how = "argon2id passphrase" if passphrase is not None else "none (unprotected)"
        return KeyringTarget("local", keys.local.keyring, passphrase, None, how)
    if keys.backend == "tpm":
        from kubeshield.config.settings import TpmSettings
        from kubeshield.keys.tpm import TpmSealer

        if passphrase_flag:
            raise ConfigError("--passphrase-file: a TPM-sealed keyring (keys.backend: tpm) has no passphrase")
        tpm = keys.tpm if keys.tpm is not None else TpmSettings()
        try:
            sealer = TpmSealer(tcti=tpm.tcti, pcrs=tpm.pcrs)
        except ValueError as exc:
            raise ConfigError(f"keys.tpm: {exc}") from None
        pcrs = ",".join(map(str, sealer.pcrs)) or "none"
        return KeyringTarget("tpm", tpm.keyring, None, sealer, f"tpm ({tpm.tcti}; PCRs {pcrs})")
    return None


def parse_versions(text: str, *, flag: str) -> tuple[int, ...]:
    """``"3,4"`` -> ``(3, 4)``; a clear ConfigError naming ``flag`` otherwise."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise ConfigError(f"{flag}: {part!r} is not a version number (e.g. {flag} 3,4)")
        out.append(int(part))
    if not out:
        raise ConfigError(f"{flag}: give at least one version number")
    return tuple(sorted(set(out)))


@dataclass
class ValuesUnder:
    """What the etcd check found: how many keys were read, and the ones that block the retirement."""

    scanned: int = 0
    under: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def _v1_names(config_path: Path | None) -> dict[str, list[str]] | None:
    if config_path is None:
        return None
    from kubeshield.config.encryption import load_encryption_config

    config = load_encryption_config(config_path)
    names = [
        p.name for rule in config.rules for p in rule.providers if p.kind == "kms" and p.api_version == "v1"
    ]
    return {"kms-v1": names}


def _v1_fingerprint(value: bytes, known: dict[str, list[str]] | None) -> bytes | None:
    """The KEK fingerprint a KMS v1 value's encrypted DEK names, if it is a ``local`` wrap."""
    from kubeshield.envelope.kmsv1 import decode_kmsv1_payload
    from kubeshield.envelope.prefixes import classify
    from kubeshield.keys.local import WRAP_FORMAT

    stored = classify(value, known_names=known)
    try:
        encrypted_dek, _ = decode_kmsv1_payload(stored.payload)
    except InvalidCiphertext:
        return None
    if len(encrypted_dek) < 9 or encrypted_dek[0] != WRAP_FORMAT:
        return b""
    return encrypted_dek[1:9]


def find_values_under(
    source: KVSource,
    version: KeyringVersion,
    *,
    prefix: str,
    encryption_config: Path | None,
    resources: Sequence[str] | None = None,
) -> ValuesUnder:
    """Every stored value that still needs ``version`` (module docstring). ``source`` is a KVSource."""
    from kubeshield.etcd.audit import Auditor
    from kubeshield.etcd.walk import iter_resources

    known = _v1_names(encryption_config)
    fp = bytes.fromhex(version.key_id.rsplit(":", 1)[1])
    auditor = Auditor(prefix=prefix, config=None, chains=None)
    found = ValuesUnder()
    for kv in iter_resources(source, prefix=prefix, resources=resources):
        record = auditor.classify(kv)
        if record is None:
            continue
        found.scanned += 1
        if record.format == "kms-v2":
            if record.key_id is None:
                found.unreadable.append(record.key)
            elif record.key_id == version.key_id:
                found.under.append(record.key)
        elif record.format == "kms-v1":
            named = _v1_fingerprint(kv.value, known)
            if named is None:
                found.unreadable.append(record.key)
            elif named == fp:
                found.under.append(record.key)
    return found
