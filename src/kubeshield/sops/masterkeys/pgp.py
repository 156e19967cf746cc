"""The ``pgp`` master key through the ``gpg`` binary, as sops does (``SOPS_GPG_EXEC`` overrides it).

* encrypt: ``gpg --no-default-recipient --yes --encrypt -a -r <fp> --trusted-key <fp>
  --no-encrypt-to``; ``enc`` = the ASCII-armoured OpenPGP message of the data key;
* decrypt: ``gpg --use-agent -d`` with the message on stdin (``GNUPGHOME`` selects the keyring).

What is supported: any key your gpg (and its agent) can use, including smartcards, since gpg does the
work. Not supported: sops' built-in Go OpenPGP fallback for machines without gpg (kubeshield then
fails with a message naming the missing binary), and fetching keys from a key server.
"""

from __future__ import annotations

import subprocess
from typing import Any

from kubeshield.sops.errors import ExitCode, SopsError
from kubeshield.sops.masterkeys.base import KeyEnv, MasterKey, format_created_at

__all__ = ["PgpKey"]


class PgpKey(MasterKey):
    kind = "pgp"

    def __init__(self, fp: str, *, created_at: str = "", enc: str = "") -> None:
        self.fp = fp.replace(" ", "").strip()
        self.created_at = created_at
        self.enc = enc

    @classmethod
    def from_fields(cls, values: dict[str, Any]) -> PgpKey:
        return cls(
            str(values.get("fp", "")),
            created_at=str(values.get("created_at", "")),
            enc=str(values.get("enc", "")),
        )

    def fields(self) -> list[tuple[str, Any]]:
        return [("created_at", self.created_at), ("enc", self.enc), ("fp", self.fp)]

    def describe(self) -> str:
        return self.fp

    def _gpg(self, args: list[str], data: bytes, env: KeyEnv) -> bytes:
        binary = env.get("SOPS_GPG_EXEC") or "gpg"
        try:
            result = subprocess.run(
                [binary, *args],
                input=data,
                capture_output=True,
                check=False,
                timeout=120,
                env=dict(env.environ),
            )
        except FileNotFoundError:
            raise SopsError(
                f"pgp {self.fp}: the gpg binary {binary!r} was not found "
                "(install gnupg or set SOPS_GPG_EXEC)",
                code=ExitCode.COULD_NOT_RETRIEVE_KEY,
            ) from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SopsError(
                f"pgp {self.fp}: gpg failed to run ({type(exc).__name__})",
                code=ExitCode.COULD_NOT_RETRIEVE_KEY,
            ) from None
        if result.returncode != 0:
            raise SopsError(
                f"pgp {self.fp}: gpg exited with {result.returncode}", code=ExitCode.COULD_NOT_RETRIEVE_KEY
            )
        return result.stdout

    def encrypt(self, data_key: bytes, *, env: KeyEnv) -> None:
        out = self._gpg(
            [
                "--batch",
                "--no-default-recipient",
                "--yes",
                "--encrypt",
                "-a",
                "-r",
                self.fp,
                "--trusted-key",
                self.fp[-16:],
                "--no-encrypt-to",
            ],
            data_key,
            env,
        )
        self.enc = out.decode("ascii")
        self.created_at = format_created_at(env.clock())

    def decrypt(self, *, env: KeyEnv) -> bytes:
        return self._gpg(["--batch", "--use-agent", "-d"], self.enc.encode("ascii"), env)
