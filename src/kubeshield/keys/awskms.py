"""AWS KMS key backend (boto3): the KEK is a symmetric AWS KMS key; wrap = Encrypt, unwrap = Decrypt.

Byte layout and EncryptionContext: :mod:`kubeshield.keys._aws_format`. Every call names our key ARN
(``KeyId``) and our context, so a ciphertext made under another key, another key_id or another aad
fails with InvalidCiphertext, and a reply for another key is refused.

What key_id changes mean here (read this before relying on them): AWS keeps every generation of key
material under the same ARN and picks the right one from the ciphertext, so the ARN alone never
changes. kubeshield adds a local *rotation generation* ``n`` = 1 + the number of completed rotations
AWS lists for the key (automatic or on demand), giving key_id ``awskms:<ARN>:<n>``. It changes exactly
when AWS has rotated the key material, which tells kube-apiserver to re-wrap its DEKs under the new
material; old key_ids keep decrypting for as long as the AWS key exists (AWS never deletes old
material of a key). It does not change when the key is merely re-enabled or its policy edited.
``refresh()`` re-reads the rotation list; ``rotate()`` calls RotateKeyOnDemand (moto supports it). On
real AWS an on-demand rotation completes asynchronously, so ``rotate()`` may return the old key_id and
a later ``refresh()`` picks the new one up.

Aliases: ``keyId`` may be an alias (``alias/NAME`` or an alias ARN). It is resolved to the key ARN at
start and again by every ``refresh()``, so moving the alias to another key (AWS's manual rotation
procedure) makes the new key current: a new key_id (a new ARN in it), new data under the new key.
Decrypt uses the ARN recorded in the stored key_id, not the alias, so data wrapped under the old key
keeps decrypting for as long as that key exists and our credentials may use it. With an alias, a key
ARN from a key_id is accepted when it is in the same partition, region and account as the current key
(where an alias can point): which of those keys the plugin may really use is what its IAM policy or the
keys' policies grant, so grant ``kms:Decrypt`` on this cluster's keys only. With a key id or key ARN
(no alias) only that key is accepted, as the key can never change. KMS v1 sends no key_id, so a v1
ciphertext is decrypted under the current key only: after an alias move, v1 data of the old key no
longer decrypts (use KMS v2).

Timeouts: the client uses short connect/read timeouts and at most two attempts (botocore "standard"
retry mode), so a call returns, or fails with BackendTimeout/BackendUnavailable, well within
kube-apiserver's 3 s KMS timeout. Errors never carry an AWS response body or message: only the error
code and the HTTP status.

boto3 is imported here and nowhere else in kubeshield.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3  # type: ignore[import-untyped,unused-ignore]
import botocore.config  # type: ignore[import-untyped,unused-ignore]
import botocore.exceptions as bce  # type: ignore[import-untyped,unused-ignore]

from kubeshield.config.settings import AwsKmsSettings
from kubeshield.errors import (
    BackendAuthError,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    InvalidCiphertext,
    InvalidRequest,
    KeyNotFound,
)
from kubeshield.keys import _aws_format as fmt
from kubeshield.keys.base import Health, InitCheck, InitReport, Wrapped
from kubeshield.keys.health import HEALTH_AAD, round_trip

__all__ = ["AwsKmsKeyBackend", "map_exceptions"]

_MAX_PLAINTEXT = 4096  # AWS KMS Encrypt limit

_UNAVAILABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "LimitExceededException",
        "TooManyRequestsException",
        "KMSInternalException",
        "KeyUnavailableException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "CustomKeyStoreInvalidStateException",
    }
)
_TIMEOUT_CODES = frozenset({"DependencyTimeoutException", "RequestTimeout", "RequestTimeoutException"})
_AUTH_CODES = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignature",
        "ExpiredTokenException",
        "ExpiredToken",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "InvalidGrantTokenException",
    }
)
_PERMISSION_PROBE_TTL = 5.0
_KEY_CODES = frozenset({"NotFoundException", "DisabledException", "KMSInvalidStateException"})
_CIPHERTEXT_CODES = frozenset(
    {"InvalidCiphertextException", "IncorrectKeyException", "InvalidKeyUsageException", "ValidationException"}
)


@contextlib.contextmanager
def map_exceptions(*, decrypting: bool = False) -> Iterator[None]:
    """Translate botocore errors into the kubeshield tree (chained ``from`` the SDK error).

    Throttling/5xx -> BackendUnavailable; timeouts -> BackendTimeout; refused credentials ->
    BackendAuthError; missing/disabled key -> KeyNotFound; with ``decrypting=True`` a refused
    ciphertext -> InvalidCiphertext. Messages hold the AWS error code and HTTP status only.
    """
    try:
        yield
    except bce.ClientError as exc:
        err = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
        code = str(err.get("Code", "")) or "Unknown"
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        where = f"AWS KMS {exc.operation_name} failed: {code} (HTTP {status})"
        if decrypting and code in _CIPHERTEXT_CODES:
            raise InvalidCiphertext() from exc
        if code in _UNAVAILABLE_CODES or (isinstance(status, int) and status >= 500):
            raise BackendUnavailable(where) from exc
        if code in _TIMEOUT_CODES:
            raise BackendTimeout(where) from exc
        if code in _AUTH_CODES:
            raise BackendAuthError(where) from exc
        if code in _KEY_CODES:
            raise KeyNotFound(where) from exc
        if code == "ValidationException":
            raise InvalidRequest(where) from exc
        raise BackendError(where) from exc
    except (bce.ConnectTimeoutError, bce.ReadTimeoutError) as exc:
        raise BackendTimeout(f"AWS KMS did not answer in time ({type(exc).__name__})") from exc
    except (bce.NoCredentialsError, bce.PartialCredentialsError, bce.CredentialRetrievalError) as exc:
        raise BackendAuthError(f"no usable AWS credentials ({type(exc).__name__})") from exc
    except bce.NoRegionError as exc:
        raise ConfigError("region: no AWS region given (set keys.awskms.region or AWS_REGION)") from exc
    except (bce.EndpointConnectionError, bce.ConnectionError, bce.HTTPClientError) as exc:
        raise BackendUnavailable(f"cannot reach AWS KMS ({type(exc).__name__})") from exc
    except bce.BotoCoreError as exc:
        raise BackendUnavailable(f"AWS KMS call failed ({type(exc).__name__})") from exc


class AwsKmsKeyBackend:
    """A symmetric AWS KMS key as KEK (see the module docstring for the key_id semantics)."""

    name = "awskms"

    def __init__(
        self,
        *,
        key_id: str,
        region: str | None,
        endpoint_url: str | None = None,
        connect_timeout: float = 0.5,
        read_timeout: float = 0.8,
        max_attempts: int = 2,
        rng: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(key_id, str) or not key_id:
            raise ConfigError("keyId: the AWS KMS key id, ARN or alias is required")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self._rng = rng
        self._clock = clock
        self._lock = threading.Lock()
        self._configured = key_id
        self._follows_alias = _is_alias(key_id)
        self._client: Any = _make_client(
            region=region,
            endpoint_url=endpoint_url,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_attempts=max_attempts,
        )
        self._closed = False
        self._probe_at = float("-inf")
        self._probe_ok = False
        try:
            arn = self._resolve(key_id)
            self._state: tuple[str, int] = (arn, self._read_generation(arn))
        except BaseException:
            self._client.close()
            raise

    @classmethod
    def from_settings(cls, settings: AwsKmsSettings) -> AwsKmsKeyBackend:
        """Build from ``keys.awskms``; credentials come from the usual AWS chain (env, profile, IRSA)."""
        return cls(key_id=settings.key_id, region=settings.region, endpoint_url=settings.endpoint_url)

    @classmethod
    def initialize(cls, settings: AwsKmsSettings, *, exist_ok: bool = False) -> InitReport:
        """``kubeshield keys init``: create the key behind an alias that points nowhere, then check it.

        Only an alias (``alias/NAME``) can be created for: a key id or ARN names a key AWS made, so a
        missing one is an error that says how to create a key and point the config at it. An existing
        key is checked, never changed. When the credentials may not create the key or the alias, the
        error holds the ``aws kms`` commands to run instead.
        """
        del exist_ok
        region = f" --region {settings.region}" if settings.region else ""
        create = (
            f"aws kms create-key{region} --key-spec SYMMETRIC_DEFAULT --key-usage ENCRYPT_DECRYPT "
            "--description kubeshield-kek"
        )
        client = _make_client(
            region=settings.region, endpoint_url=settings.endpoint_url, connect_timeout=2.0, read_timeout=5.0
        )
        created = False
        try:
            try:
                with map_exceptions():
                    client.describe_key(KeyId=settings.key_id)
            except KeyNotFound:
                if not settings.key_id.startswith("alias/"):
                    raise KeyNotFound(
                        f"keyId: there is no AWS KMS key {settings.key_id!r}; create one with `{create}` "
                        "and set keys.awskms.keyId to its ARN, or to an alias kubeshield may create "
                        "(alias/NAME)"
                    ) from None
                _create_aliased_key(client, alias=settings.key_id, create_command=create, region=region)
                created = True
            except BackendAuthError:
                raise BackendAuthError(
                    f"these AWS credentials may not DescribeKey {settings.key_id!r}: the plugin needs "
                    "kms:DescribeKey, kms:Encrypt, kms:Decrypt and kms:ListKeyRotations on the key "
                    "(docs/backends.md)"
                ) from None
        finally:
            client.close()
        backend = cls.from_settings(settings)
        try:
            health = backend.check_health()
            return InitReport(
                backend="awskms",
                created=created,
                key_id=backend.key_id(),
                location=f"AWS KMS key {backend._arn}"
                + (f" (alias {settings.key_id})" if _is_alias(settings.key_id) else ""),
                checks=(
                    InitCheck(
                        "encrypt and decrypt with these credentials", health.ok, health.detail, required=True
                    ),
                    backend._rotation_check(),
                    InitCheck(
                        "rotate (`kubeshield keys rotate`)",
                        None,
                        "not checked: needs kms:RotateKeyOnDemand, which cannot be tried without rotating",
                    ),
                ),
            )
        finally:
            backend.close()

    def _rotation_check(self) -> InitCheck:
        what = "automatic yearly rotation of the key material"
        try:
            with map_exceptions():
                enabled = bool(
                    self._client.get_key_rotation_status(KeyId=self._arn).get("KeyRotationEnabled")
                )
        except BackendError as exc:
            return InitCheck(what, None, f"not checked ({exc})")
        if enabled:
            return InitCheck(what, True, "enabled (each rotation gives a new key_id)")
        return InitCheck(what, None, f"off; to turn it on: aws kms enable-key-rotation --key-id {self._arn}")

    # -- remote reads -----------------------------------------------------------------------------------

    def _resolve(self, key_id: str) -> str:
        with map_exceptions():
            meta = self._client.describe_key(KeyId=key_id)["KeyMetadata"]
        if meta.get("KeyState") != "Enabled":
            raise KeyNotFound(f"AWS KMS key is not enabled (state {meta.get('KeyState')!s})")
        if meta.get("KeySpec", "SYMMETRIC_DEFAULT") != "SYMMETRIC_DEFAULT" or meta.get("KeyUsage") != (
            "ENCRYPT_DECRYPT"
        ):
            raise ConfigError("keyId: the AWS KMS key must be SYMMETRIC_DEFAULT with usage ENCRYPT_DECRYPT")
        arn = str(meta["Arn"])
        if fmt.parse_key_arn(arn) is None:
            raise BackendError("AWS KMS DescribeKey answered with an ARN that is not a key ARN")
        return arn

    def _read_generation(self, arn: str) -> int:
        rotations = 0
        kwargs: dict[str, Any] = {"KeyId": arn}
        with map_exceptions():
            while True:
                page = self._client.list_key_rotations(**kwargs)
                rotations += len(page.get("Rotations", []))
                marker = page.get("NextMarker")
                if not page.get("Truncated") or not marker:
                    break
                kwargs["Marker"] = marker
        return min(1 + rotations, fmt.MAX_GENERATION)

    def _check_open(self) -> None:
        if self._closed:
            raise BackendUnavailable("the AWS KMS backend is closed")

    # -- KeyBackend ------------------------------------------------------------------------------------

    def key_id(self) -> str:
        """The key_id of the last known key and generation (no remote call)."""
        arn, generation = self._state
        return fmt.make_key_id(arn=arn, generation=generation)

    @property
    def _arn(self) -> str:
        """The current key's ARN (what the configured key id or alias resolved to at the last refresh)."""
        return self._state[0]

    def wrap(self, plaintext: bytes, *, aad: bytes = b"") -> Wrapped:
        """KMS Encrypt under our ARN with our EncryptionContext; layout in :mod:`._aws_format`."""
        if not isinstance(plaintext, bytes) or not isinstance(aad, bytes):
            raise TypeError("plaintext and aad must be bytes")
        if not 1 <= len(plaintext) <= _MAX_PLAINTEXT:
            raise InvalidRequest(f"plaintext must be 1..{_MAX_PLAINTEXT} bytes for AWS KMS")
        self._check_open()
        arn, generation = self._state  # one read: a refresh may replace both
        key_id = fmt.make_key_id(arn=arn, generation=generation)
        with map_exceptions():
            resp = self._client.encrypt(
                KeyId=arn,
                Plaintext=plaintext,
                EncryptionContext=fmt.encryption_context(key_id=key_id, aad=aad),
                EncryptionAlgorithm="SYMMETRIC_DEFAULT",
            )
        if resp.get("KeyId") != arn:
            raise BackendError("AWS KMS answered for another key")
        return Wrapped(
            ciphertext=fmt.encode_ciphertext(generation=generation, blob=resp["CiphertextBlob"]),
            key_id=key_id,
        )

    def unwrap(self, wrapped: Wrapped, *, aad: bytes = b"") -> bytes:
        if not isinstance(wrapped, Wrapped) or not isinstance(aad, bytes):
            raise TypeError("unwrap takes a Wrapped and bytes aad")
        generation, blob = fmt.decode_ciphertext(wrapped.ciphertext)
        arn = self._arn_of(wrapped.key_id, generation)
        key_id = fmt.make_key_id(arn=arn, generation=generation)
        self._check_open()
        context = fmt.encryption_context(key_id=key_id, aad=aad)
        try:
            plaintext = self._decrypt(blob, context, arn=arn)
        except BackendAuthError:
            # AccessDenied on Decrypt means either "our credential may not decrypt" or "this blob names
            # a key we cannot use" (a foreign or altered blob; moto answers so for any altered key-id
            # byte). Our own probe tells them apart; its result is cached for a few seconds.
            if self._can_decrypt():
                raise InvalidCiphertext() from None
            raise
        return plaintext

    def _arn_of(self, key_id: str, generation: int) -> str:
        """The key ARN to decrypt with: the one recorded in ``key_id`` (the current one for KMS v1's "").

        A key_id that is not ours, names another generation than the ciphertext, or names another key
        than the current one where that is not allowed (see "Aliases" above) is ``InvalidCiphertext``.
        """
        current = self._arn
        if not key_id:
            return current
        parsed = fmt.parse_key_id(key_id)
        if parsed is None or parsed[1] != generation:
            raise InvalidCiphertext()
        arn = parsed[0]
        if arn != current and (
            not self._follows_alias or fmt.parse_key_arn(arn) != fmt.parse_key_arn(current)
        ):
            raise InvalidCiphertext()
        return arn

    def _decrypt(self, blob: bytes, context: dict[str, str], *, arn: str) -> bytes:
        with map_exceptions(decrypting=True):
            resp = self._client.decrypt(
                KeyId=arn,
                CiphertextBlob=blob,
                EncryptionContext=context,
                EncryptionAlgorithm="SYMMETRIC_DEFAULT",
            )
        if resp.get("KeyId") != arn:
            raise InvalidCiphertext()
        return bytes(resp["Plaintext"])

    def _can_decrypt(self) -> bool:
        now = self._clock()
        if now - self._probe_at < _PERMISSION_PROBE_TTL:
            return self._probe_ok
        ok = False
        with contextlib.suppress(BackendError, InvalidCiphertext, InvalidRequest):
            probe = self._rng(32)
            wrapped = self.wrap(probe, aad=HEALTH_AAD)
            generation, blob = fmt.decode_ciphertext(wrapped.ciphertext)
            context = fmt.encryption_context(key_id=wrapped.key_id, aad=HEALTH_AAD)
            arn = self._arn_of(wrapped.key_id, generation)
            ok = hmac.compare_digest(self._decrypt(blob, context, arn=arn), probe)
        self._probe_at, self._probe_ok = now, ok
        return ok

    def check_health(self) -> Health:
        """Encrypt and decrypt a random value through AWS KMS (:func:`kubeshield.keys.health.round_trip`)."""
        return round_trip(self, clock=self._clock, rng=self._rng)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._client.close()

    # -- optional abilities ----------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Re-resolve an alias and re-read the key's rotation list; True when the key_id changed."""
        self._check_open()
        arn = self._resolve(self._configured) if self._follows_alias else self._arn
        generation = self._read_generation(arn)
        with self._lock:
            before = self._state
            self._state = (arn, generation)
        return (arn, generation) != before

    def rotate(self) -> str:
        """RotateKeyOnDemand, then refresh. On real AWS the rotation may finish later (see above)."""
        self._check_open()
        with map_exceptions():
            self._client.rotate_key_on_demand(KeyId=self._arn)
        self.refresh()
        return self.key_id()

    def __repr__(self) -> str:
        return f"AwsKmsKeyBackend(key={self._arn!r})"


def _make_client(
    *,
    region: str | None,
    endpoint_url: str | None,
    connect_timeout: float,
    read_timeout: float,
    max_attempts: int = 2,
) -> Any:
    """A KMS client with bounded connect/read timeouts and a bounded number of attempts."""
    config = botocore.config.Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"total_max_attempts": max_attempts, "mode": "standard"},
        tcp_keepalive=True,
    )
    with map_exceptions():
        return boto3.session.Session().client(
            "kms", region_name=region, endpoint_url=endpoint_url, config=config
        )


def _create_aliased_key(client: Any, *, alias: str, create_command: str, region: str) -> str:
    """Create a symmetric key and point ``alias`` at it; return the key's ARN (see ``initialize``)."""
    alias_command = (
        f"aws kms create-alias{region} --alias-name {alias} --target-key-id <KeyId from create-key>"
    )
    try:
        with map_exceptions():
            meta = client.create_key(
                Description="kubeshield KEK (kube-apiserver KMS v2)",
                KeyUsage="ENCRYPT_DECRYPT",
                KeySpec="SYMMETRIC_DEFAULT",
            )["KeyMetadata"]
    except BackendAuthError:
        raise BackendAuthError(
            f"there is no key behind {alias} and these AWS credentials may not create one; as an "
            f"administrator, run `{create_command}` and then `{alias_command}`"
        ) from None
    try:
        with map_exceptions():
            client.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
    except BackendError as exc:
        with contextlib.suppress(Exception):  # an unused new key: do not leave it behind
            client.schedule_key_deletion(KeyId=meta["KeyId"], PendingWindowInDays=7)
        raise BackendError(
            f"created key {meta['Arn']} but could not point {alias} at it ({exc}); it is scheduled for "
            f"deletion; as an administrator, run `{create_command}` and then `{alias_command}`"
        ) from None
    return str(meta["Arn"])


def _is_alias(key_id: str) -> bool:
    """``alias/NAME`` or ``arn:...:alias/NAME``: names that AWS lets the operator point elsewhere."""
    return key_id.startswith("alias/") or (key_id.startswith("arn:") and ":alias/" in key_id)
