"""The ``kms`` master key: AWS KMS, exactly as sops calls it (``kms/keysource.go``).

* encrypt: ``Encrypt(KeyId=arn, Plaintext=data key, EncryptionContext=context)``; ``enc`` =
  base64 of the ``CiphertextBlob``;
* decrypt: ``Decrypt(CiphertextBlob, EncryptionContext, KeyId=arn)``;
* the region is the ARN's; ``role`` is assumed with STS first (session name ``sops@<host>``);
  ``aws_profile`` selects a profile; everything else is the standard AWS chain and variables
  (``AWS_ACCESS_KEY_ID``..., ``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_KMS``), which boto3 reads from the
  process environment.

Flag form: ``arn:aws:kms:<region>:<account>:key/<id>[+<role arn>]``; the encryption context is
``key:value,key:value``. Errors carry the AWS error code, never a response body.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from kubeshield.sops.errors import ExitCode, SopsError
from kubeshield.sops.masterkeys.base import KeyEnv, MasterKey, format_created_at

__all__ = ["KmsKey", "parse_encryption_context"]


def parse_encryption_context(text: str) -> dict[str, str]:
    """``k1:v1,k2:v2`` as sops' ``--encryption-context``. ``SopsError`` (exit 6) when malformed."""
    context: dict[str, str] = {}
    if not text:
        return context
    for pair in text.split(","):
        key, sep, value = pair.partition(":")
        if not sep:
            raise SopsError(
                "--encryption-context: each pair must be key:value",
                code=ExitCode.ERROR_INVALID_KMS_ENCRYPTION_CONTEXT_FORMAT,
            )
        context[key] = value
    return context


def _region(arn: str) -> str | None:
    parts = arn.split(":")
    return parts[3] if len(parts) > 4 and parts[0] == "arn" and parts[3] else None


class KmsKey(MasterKey):
    kind = "kms"

    def __init__(
        self,
        arn: str,
        *,
        role: str = "",
        context: dict[str, str] | None = None,
        created_at: str = "",
        enc: str = "",
        aws_profile: str = "",
    ) -> None:
        self.arn = arn.strip()
        self.role = role
        self.context = dict(context or {})
        self.created_at = created_at
        self.enc = enc
        self.aws_profile = aws_profile

    @classmethod
    def from_flag(cls, text: str, *, context: dict[str, str] | None = None, aws_profile: str = "") -> KmsKey:
        arn, _, role = text.strip().partition("+")
        return cls(arn, role=role, context=context, aws_profile=aws_profile)

    @classmethod
    def from_fields(cls, values: dict[str, Any]) -> KmsKey:
        context = values.get("context") or {}
        return cls(
            str(values.get("arn", "")),
            role=str(values.get("role") or ""),
            context={str(k): "" if v is None else str(v) for k, v in dict(context).items()},
            created_at=str(values.get("created_at", "")),
            enc=str(values.get("enc", "")),
            aws_profile=str(values.get("aws_profile") or ""),
        )

    def fields(self) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = [("arn", self.arn)]
        if self.role:
            out.append(("role", self.role))
        if self.context:
            out.append(("context", dict(self.context)))
        out += [("created_at", self.created_at), ("enc", self.enc), ("aws_profile", self.aws_profile)]
        return out

    def describe(self) -> str:
        text = self.arn
        if self.role:
            text += f"+{self.role}"
        if self.context:
            text += "|" + ",".join(f"{k}:{v}" for k, v in sorted(self.context.items()))
        if self.aws_profile:
            text += f"|{self.aws_profile}"
        return text

    def _client(self) -> Any:
        import socket  # here, not at the top: every sops command imports this module

        boto3, bce = _sdk()
        try:
            session = boto3.session.Session(profile_name=self.aws_profile or None)
            if self.role:
                sts = session.client("sts", region_name=_region(self.arn))
                creds = sts.assume_role(
                    RoleArn=self.role, RoleSessionName=f"sops@{socket.gethostname()}"[:64]
                )["Credentials"]
                session = boto3.session.Session(
                    aws_access_key_id=creds["AccessKeyId"],
                    aws_secret_access_key=creds["SecretAccessKey"],
                    aws_session_token=creds["SessionToken"],
                )
            return session.client("kms", region_name=_region(self.arn))
        except (bce.BotoCoreError, bce.ClientError) as exc:
            raise SopsError(
                f"kms {self.arn}: cannot set up AWS ({_code(exc)})", code=ExitCode.COULD_NOT_RETRIEVE_KEY
            ) from None

    def encrypt(self, data_key: bytes, *, env: KeyEnv) -> None:
        _boto3, bce = _sdk()
        client = self._client()
        try:
            kwargs: dict[str, Any] = {"KeyId": self.arn, "Plaintext": data_key}
            if self.context:
                kwargs["EncryptionContext"] = self.context
            blob = client.encrypt(**kwargs)["CiphertextBlob"]
        except (bce.BotoCoreError, bce.ClientError) as exc:
            raise SopsError(
                f"kms {self.arn}: Encrypt failed ({_code(exc)})", code=ExitCode.COULD_NOT_RETRIEVE_KEY
            ) from None
        finally:
            client.close()
        self.enc = base64.b64encode(blob).decode("ascii")
        self.created_at = format_created_at(env.clock())

    def decrypt(self, *, env: KeyEnv) -> bytes:
        try:
            blob = base64.b64decode(self.enc, validate=True)
        except (binascii.Error, ValueError):
            raise SopsError(f"kms {self.arn}: enc is not base64") from None
        _boto3, bce = _sdk()
        client = self._client()
        try:
            kwargs: dict[str, Any] = {"CiphertextBlob": blob, "KeyId": self.arn}
            if self.context:
                kwargs["EncryptionContext"] = self.context
            return bytes(client.decrypt(**kwargs)["Plaintext"])
        except (bce.BotoCoreError, bce.ClientError) as exc:
            raise SopsError(
                f"kms {self.arn}: Decrypt failed ({_code(exc)})", code=ExitCode.COULD_NOT_RETRIEVE_KEY
            ) from None
        finally:
            client.close()


def _sdk() -> tuple[Any, Any]:
    try:
        import boto3  # type: ignore[import-untyped,unused-ignore]
        import botocore.exceptions as bce  # type: ignore[import-untyped,unused-ignore]
    except ModuleNotFoundError:
        raise SopsError("kms keys need the boto3 package: pip install 'kubeshield[sops]'") from None
    return boto3, bce


def _code(exc: Exception) -> str:
    _boto3, bce = _sdk()
    if isinstance(exc, bce.ClientError):
        return str(exc.response.get("Error", {}).get("Code", "error"))
    return type(exc).__name__
