"""The ``age`` master key: X25519 and SSH recipients (pyrage), and kubeshield's own plugin recipient.

``enc`` is an ASCII-armoured age file whose payload is the data key, one file per recipient.

Identities are looked up where sops looks, in this order, and all found are tried:
``SOPS_AGE_KEY`` (inline), ``SOPS_AGE_KEY_FILE``, the output of ``SOPS_AGE_KEY_CMD``, the default
``$XDG_CONFIG_HOME/sops/age/keys.txt`` (``~/.config/...``), then SSH private keys:
``SOPS_AGE_SSH_PRIVATE_KEY_FILE`` or else ``~/.ssh/id_ed25519`` and ``~/.ssh/id_rsa``.
Identity lines ``AGE-PLUGIN-KUBESHIELD-1...`` name a kubeshield.yaml (see :mod:`.kubeshield`); a
kubeshield recipient in the file is also tried with the config path it names, so kubeshield itself needs
no identity line for it. Other age plugins are not run by kubeshield (use the sops binary for them).
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubeshield.errors import InvalidCiphertext
from kubeshield.sops.errors import ExitCode, SopsError
from kubeshield.sops.masterkeys import kubeshield as ks
from kubeshield.sops.masterkeys.base import KeyEnv, MasterKey

__all__ = ["AgeIdentities", "AgeKey", "load_identities", "parse_recipient"]

_MAX_KEY_FILE = 1 << 24


def _pyrage() -> Any:
    try:
        import pyrage
    except ModuleNotFoundError:
        raise SopsError("age keys need the pyrage package: pip install 'kubeshield[sops]'") from None
    return pyrage


def parse_recipient(recipient: str) -> Any:
    """A pyrage recipient, or the string itself for a kubeshield recipient. ``SopsError`` otherwise."""
    text = recipient.strip()
    if ks.is_kubeshield_recipient(text):
        ks.config_of_recipient(text)
        return text
    try:
        if text.startswith("ssh-"):
            return _pyrage().ssh.Recipient.from_str(text)
        return _pyrage().x25519.Recipient.from_str(text)
    except Exception:  # pyrage raises its own RecipientError / ValueError
        raise SopsError(
            f"not a valid age recipient: {text[:80]!r} (expected age1..., ssh-ed25519 or ssh-rsa)",
            code=ExitCode.ERROR_GENERIC,
        ) from None


@dataclass
class AgeIdentities:
    native: list[Any] = field(default_factory=list)
    kubeshield_configs: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


def _parse_identity_text(text: str, out: AgeIdentities, source: str) -> None:
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(ks.IDENTITY_HRP + "1"):
            try:
                out.kubeshield_configs.append(ks.config_of_identity(line))
            except SopsError:
                raise SopsError(f"{source}: a kubeshield age identity line is not valid") from None
            continue
        if line.startswith("AGE-PLUGIN-"):
            continue  # other plugins: the sops binary runs them, kubeshield does not
        try:
            out.native.append(_pyrage().x25519.Identity.from_str(line))
        except Exception:
            raise SopsError(
                f"{source}: a line is not an age identity (an X25519 secret key line, as age-keygen writes)",
                code=ExitCode.COULD_NOT_RETRIEVE_KEY,
            ) from None
    out.sources.append(source)


def _read_file(path: Path) -> bytes | None:
    try:
        with path.open("rb") as fh:
            return fh.read(_MAX_KEY_FILE)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SopsError(
            f"{path}: cannot read age key file: {exc.strerror}", code=ExitCode.COULD_NOT_RETRIEVE_KEY
        ) from None


def _run_cmd(cmd: str, name: str) -> str:
    try:
        result = subprocess.run(shlex.split(cmd), capture_output=True, check=False, timeout=60)
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise SopsError(
            f"{name}: the command failed to run ({type(exc).__name__})", code=ExitCode.COULD_NOT_RETRIEVE_KEY
        ) from None
    if result.returncode != 0:
        raise SopsError(
            f"{name}: the command exited with {result.returncode}", code=ExitCode.COULD_NOT_RETRIEVE_KEY
        )
    return result.stdout.decode("utf-8", "replace")


def load_identities(env: KeyEnv) -> AgeIdentities:
    out = AgeIdentities()
    inline = env.get("SOPS_AGE_KEY")
    if inline:
        _parse_identity_text(inline, out, "SOPS_AGE_KEY")
    key_file = env.get("SOPS_AGE_KEY_FILE")
    if key_file:
        data = _read_file(Path(key_file))
        if data is None:
            raise SopsError(
                f"SOPS_AGE_KEY_FILE names {key_file}, which does not exist",
                code=ExitCode.COULD_NOT_RETRIEVE_KEY,
            )
        _parse_identity_text(data.decode("utf-8", "replace"), out, key_file)
    cmd = env.get("SOPS_AGE_KEY_CMD")
    if cmd:
        _parse_identity_text(_run_cmd(cmd, "SOPS_AGE_KEY_CMD"), out, "SOPS_AGE_KEY_CMD")
    default = env.config_dir() / "sops" / "age" / "keys.txt"
    data = _read_file(default)
    if data is not None:
        _parse_identity_text(data.decode("utf-8", "replace"), out, str(default))
    ssh_file = env.get("SOPS_AGE_SSH_PRIVATE_KEY_FILE")
    ssh_paths = (
        [Path(ssh_file)] if ssh_file else [env.home / ".ssh" / "id_ed25519", env.home / ".ssh" / "id_rsa"]
    )
    for path in ssh_paths:
        blob = _read_file(path)
        if blob is None:
            continue
        try:
            out.native.append(_pyrage().ssh.Identity.from_buffer(blob))
            out.sources.append(str(path))
        except Exception:
            continue  # passphrase-protected or not an SSH key: sops skips it too
    return out


class AgeKey(MasterKey):
    kind = "age"

    def __init__(self, recipient: str, enc: str = "") -> None:
        self.recipient = recipient.strip()
        self.enc = enc

    @classmethod
    def from_fields(cls, values: dict[str, Any]) -> AgeKey:
        return cls(str(values.get("recipient", "")), str(values.get("enc", "")))

    def fields(self) -> list[tuple[str, Any]]:
        return [("recipient", self.recipient), ("enc", self.enc)]

    def describe(self) -> str:
        return self.recipient

    def encrypt(self, data_key: bytes, *, env: KeyEnv) -> None:
        parsed = parse_recipient(self.recipient)
        if isinstance(parsed, str):
            self.enc = ks.encrypt_data_key(data_key, recipient=parsed, pool=_pool(env), rng=env.rng)
            return
        try:
            self.enc = _pyrage().encrypt(data_key, [parsed], armored=True).decode("ascii")
        except Exception as exc:
            raise SopsError(f"age: encrypting to {self.recipient} failed ({type(exc).__name__})") from None

    def decrypt(self, *, env: KeyEnv) -> bytes:
        identities = _identities(env)
        if ks.is_kubeshield_recipient(self.recipient) or "-> kubeshield" in _peek_header(self.enc):
            configs = list(identities.kubeshield_configs)
            if ks.is_kubeshield_recipient(self.recipient):
                configs.append(ks.config_of_recipient(self.recipient))
            result = ks.decrypt_data_key(self.enc, configs=list(dict.fromkeys(configs)), pool=_pool(env))
            if result is not None:
                return result
            raise SopsError(f"age: the kubeshield key {self.recipient[:40]}... did not unwrap the data key")
        if not identities.native:
            raise SopsError(
                "age: no age identity found (set SOPS_AGE_KEY_FILE or create ~/.config/sops/age/keys.txt)"
            )
        try:
            return bytes(_pyrage().decrypt(self.enc.encode("ascii"), identities.native))
        except Exception:
            raise SopsError(
                f"age: no identity in {', '.join(identities.sources) or 'the key sources'} decrypts the data "
                f"key for {self.recipient}"
            ) from None


def _peek_header(enc: str) -> str:
    from kubeshield.sops.masterkeys import _age_format

    try:
        return _age_format.dearmor(enc)[:512].decode("ascii", "replace")
    except InvalidCiphertext:
        return ""


def _identities(env: KeyEnv) -> AgeIdentities:
    cache = _cache(env)
    found = cache.get("age-identities")
    if found is None:
        found = load_identities(env)
        cache["age-identities"] = found
    assert isinstance(found, AgeIdentities)
    return found


def _cache(env: KeyEnv) -> dict[str, Any]:
    return env.cache


def _pool(env: KeyEnv) -> ks.BackendPool:
    cache = _cache(env)
    pool = cache.get("kubeshield-pool")
    if pool is None:
        pool = ks.BackendPool()
        cache["kubeshield-pool"] = pool
    assert isinstance(pool, ks.BackendPool)
    return pool
