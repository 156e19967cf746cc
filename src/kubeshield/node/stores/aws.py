"""AWS Secrets Manager read as the pod: ``AssumeRoleWithWebIdentity`` with its token, then ``GetSecretValue``.

Object reference::

    aws: {store: aws, secretId: prod/db, versionStage: AWSCURRENT, jsonKey: password, roleArn: arn:...}

``roleArn`` (or the SecretProviderClass parameter ``awsRoleArn``) is the IAM role whose trust policy admits
the pod's ServiceAccount (the ``sub`` claim ``system:serviceaccount:<ns>:<sa>``, as IRSA does); the token is
the pod's for the store's audience (``sts.amazonaws.com`` by default). ``jsonKey`` picks one key of a JSON
``SecretString``. boto3 is imported here only (``pip install 'kubeshield[awskms]'``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import boto3
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from kubeshield.errors import BackendUnavailable, InvalidRequest, PolicyDenied
from kubeshield.node.settings import StoreSettings

__all__ = ["AwsSecretsManagerStore"]

_DENIED = {"AccessDenied", "AccessDeniedException", "InvalidIdentityToken", "ExpiredTokenException",
           "IDPRejectedClaim", "ExpiredToken"}  # fmt: skip


class AwsSecretsManagerStore:
    def __init__(self, name: str, settings: StoreSettings) -> None:
        self.name = name
        self.audience = settings.audience or "sts.amazonaws.com"
        self._region = settings.region
        self._endpoint = settings.endpoint_url
        self._config = Config(
            connect_timeout=settings.timeout, read_timeout=settings.timeout, retries={"max_attempts": 2}
        )

    def _fail(self, exc: Exception, what: str) -> Exception:
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _DENIED:
                return PolicyDenied(f"store {self.name}: {what} refused ({code})")
            if code == "ResourceNotFoundException":
                return InvalidRequest(f"store {self.name}: {what}: no such secret")
            return BackendUnavailable(f"store {self.name}: {what} failed ({code or 'error'})")
        return BackendUnavailable(f"store {self.name}: {what} failed ({type(exc).__name__})")

    def read(self, *, token: str, ref: Mapping[str, Any], pod: Mapping[str, str]) -> tuple[bytes, str]:
        role = str(ref.get("roleArn") or "")
        if not role:
            raise InvalidRequest(
                "aws objects need a role (aws.roleArn or the SecretProviderClass parameter awsRoleArn)"
            )
        session = ("kubeshield-" + pod.get("uid", "pod"))[:64]
        try:
            sts = boto3.client("sts", region_name=self._region, endpoint_url=self._endpoint,
                               config=self._config.merge(Config(signature_version=UNSIGNED)))  # fmt: skip
            creds = sts.assume_role_with_web_identity(
                RoleArn=role, RoleSessionName=session, WebIdentityToken=token
            )["Credentials"]
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, f"AssumeRoleWithWebIdentity {role}") from None
        args: dict[str, str] = {"SecretId": str(ref["secretId"])}
        if ref.get("versionStage"):
            args["VersionStage"] = str(ref["versionStage"])
        if ref.get("versionId"):
            args["VersionId"] = str(ref["versionId"])
        try:
            sm = boto3.client(
                "secretsmanager",
                region_name=self._region,
                endpoint_url=self._endpoint,
                aws_access_key_id=creds["AccessKeyId"],
                aws_secret_access_key=creds["SecretAccessKey"],
                aws_session_token=creds["SessionToken"],
                config=self._config,
            )
            answer = sm.get_secret_value(**args)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, f"GetSecretValue {args['SecretId']}") from None
        if "SecretString" in answer:
            content = str(answer["SecretString"]).encode()
        else:
            content = bytes(answer.get("SecretBinary", b""))
        json_key = ref.get("jsonKey")
        if json_key is not None:
            try:
                doc = json.loads(content)
                raw = doc[json_key]
            except (ValueError, KeyError, TypeError):
                raise InvalidRequest(
                    f"store {self.name}: {args['SecretId']} is not JSON with key {json_key!r}"
                ) from None
            content = raw.encode() if isinstance(raw, str) else json.dumps(raw, sort_keys=True).encode()
        return content, str(answer.get("VersionId", ""))
