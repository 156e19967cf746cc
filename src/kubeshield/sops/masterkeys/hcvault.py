"""The ``hc_vault`` master key: HashiCorp Vault / OpenBao Transit, exactly as sops calls it.

* encrypt: ``POST <vault_address>/v1/<engine_path>/encrypt/<key_name>`` with
  ``{"plaintext": base64(data key)}``; ``enc`` = the ``vault:v<N>:...`` ciphertext;
* decrypt: ``POST .../decrypt/<key_name>`` with ``{"ciphertext": enc}``; the reply's base64 plaintext;
* no associated data (sops sends none), so files move freely between sops and kubeshield;
* the token is ``VAULT_TOKEN``, else ``~/.vault-token`` (as the Vault client library sops uses);
  ``VAULT_NAMESPACE`` and ``VAULT_CACERT`` are honoured. The address comes from the key itself.

Key URI (flags and ``.sops.yaml``): ``https://vault.example.com:8200/v1/transit/keys/<name>``.
Errors carry the HTTP status and the key URI, never a token or a response body.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from kubeshield.sops.errors import ExitCode, SopsError
from kubeshield.sops.masterkeys.base import KeyEnv, MasterKey, format_created_at

if TYPE_CHECKING:
    import ssl

__all__ = ["VaultKey"]

_PREFIXED = re.compile(r"/[^/]+/v\d+/[^/]+/[^/]+/[^/]+")
_SHAPE = re.compile(r"/v\d+/[^/]+/[^/]+/[^/]+")


class VaultKey(MasterKey):
    kind = "hc_vault"

    def __init__(
        self, vault_address: str, engine_path: str, key_name: str, *, created_at: str = "", enc: str = ""
    ) -> None:
        self.vault_address = vault_address
        self.engine_path = engine_path
        self.key_name = key_name
        self.created_at = created_at
        self.enc = enc

    @classmethod
    def from_uri(cls, uri: str) -> VaultKey:
        """``https://host:8200/v1/<engine path>/keys/<name>`` (sops' ``NewMasterKeyFromURI``)."""
        parts = urlsplit(uri.strip())
        if not parts.scheme:
            raise SopsError(
                f"hc_vault: missing scheme in {uri!r} (https://vault.example.com:8200/v1/transit/keys/name)"
            )
        path = parts.path
        if _PREFIXED.match(path):
            raise SopsError(f"hc_vault: a prefixed Vault URL is not supported: {uri!r}")
        if not _SHAPE.match(path):
            raise SopsError(
                f"hc_vault: {uri!r} is not like https://vault.example.com:8200/v1/transit/keys/name"
            )
        dirs = path.strip("/").split("/")
        address = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        return cls(address, "/".join(dirs[1:-2]), dirs[-1])

    @classmethod
    def from_fields(cls, values: dict[str, Any]) -> VaultKey:
        return cls(
            str(values.get("vault_address", "")),
            str(values.get("engine_path", "")),
            str(values.get("key_name", "")),
            created_at=str(values.get("created_at", "")),
            enc=str(values.get("enc", "")),
        )

    def fields(self) -> list[tuple[str, Any]]:
        return [
            ("vault_address", self.vault_address),
            ("engine_path", self.engine_path),
            ("key_name", self.key_name),
            ("created_at", self.created_at),
            ("enc", self.enc),
        ]

    def describe(self) -> str:
        return f"{self.vault_address}/v1/{self.engine_path}/keys/{self.key_name}"

    def _post(self, op: str, body: dict[str, str], env: KeyEnv) -> dict[str, Any]:
        token = env.get("VAULT_TOKEN")
        if token is None:
            try:
                token = (env.home / ".vault-token").read_text().strip() or None
            except OSError:
                token = None
        headers = {"X-Vault-Request": "true"}
        if token:
            headers["X-Vault-Token"] = token
        namespace = env.get("VAULT_NAMESPACE")
        if namespace:
            headers["X-Vault-Namespace"] = namespace
        verify: ssl.SSLContext | bool = True
        cacert = env.get("VAULT_CACERT")
        if cacert:
            import ssl  # only here: importing ssl is ~50 ms of every sops command's start-up

            try:
                verify = ssl.create_default_context(cafile=cacert)
            except (OSError, ssl.SSLError):
                raise SopsError(f"hc_vault: VAULT_CACERT {cacert} cannot be loaded") from None
        try:
            import httpx
        except ModuleNotFoundError:
            raise SopsError("hc_vault keys need the httpx package: pip install 'kubeshield[sops]'") from None
        url = f"{self.vault_address.rstrip('/')}/v1/{self.engine_path}/{op}/{self.key_name}"
        try:
            with httpx.Client(verify=verify, timeout=15.0, trust_env=False) as client:
                response = client.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise SopsError(
                f"hc_vault {self.describe()}: cannot reach Vault ({type(exc).__name__})",
                code=ExitCode.COULD_NOT_RETRIEVE_KEY,
            ) from None
        if response.status_code != 200:
            raise SopsError(
                f"hc_vault {self.describe()}: {op} answered HTTP {response.status_code}",
                code=ExitCode.COULD_NOT_RETRIEVE_KEY,
            )
        try:
            data = response.json().get("data")
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise SopsError(f"hc_vault {self.describe()}: {op} sent an unexpected reply")
        return data

    def encrypt(self, data_key: bytes, *, env: KeyEnv) -> None:
        data = self._post("encrypt", {"plaintext": base64.b64encode(data_key).decode("ascii")}, env)
        ciphertext = data.get("ciphertext")
        if not isinstance(ciphertext, str) or not ciphertext.startswith("vault:"):
            raise SopsError(f"hc_vault {self.describe()}: encrypt sent an unexpected reply")
        self.enc = ciphertext
        self.created_at = format_created_at(env.clock())

    def decrypt(self, *, env: KeyEnv) -> bytes:
        data = self._post("decrypt", {"ciphertext": self.enc}, env)
        plaintext = data.get("plaintext")
        if not isinstance(plaintext, str):
            raise SopsError(f"hc_vault {self.describe()}: decrypt sent an unexpected reply")
        try:
            return base64.b64decode(plaintext, validate=True)
        except (binascii.Error, ValueError):
            raise SopsError(f"hc_vault {self.describe()}: decrypt sent an unexpected reply") from None
