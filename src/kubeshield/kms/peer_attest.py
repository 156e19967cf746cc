"""Mutual attestation between the relay and the service replicas, in addition to mTLS.

With ``--peer-attestation FILE`` on both sides, a replica serves Decrypt over TCP only to a relay whose
evidence verified, and the relay forwards a Decrypt only to a replica whose evidence verified.
The exchange rides on the same mTLS connection as a small gRPC service with JSON bodies
(``kubeshield.attest.v1.PeerAttestation``, bytes in and out, no new proto)::

    relay -> Challenge {"nonce": N_r}
    replica <- {"session": S, "nonce": N_s, "evidence": B64(E_s)},  E_s bound to binding(N_r, F)
    relay:   verifies E_s (its peerPolicy), then
    relay -> Attest {"session": S, "evidence": B64(E_r)},           E_r bound to binding(N_s, F)
    replica <- {"token": T, "expiresAt": UNIX}                      after verifying E_r (its peerPolicy)
    relay -> Decrypt ... with metadata kubeshield-attestation-token: T

    F = SHA-256(DER of the relay's TLS client certificate)     (the replica reads it from the TLS session)
    binding(nonce, F) = SHA-384(canonical_json({"nonce": nonce, "peer": hex(F)}))

Both nonces are fresh and single use, so evidence cannot be replayed; binding both to the relay's
client certificate ties the two attestations to this mTLS session: another mTLS client cannot relay
a genuine replica's answer (it would carry the other client's F) nor reuse the relay's token (the
replica checks F on every Decrypt). The replica's own certificate is not in the binding because
grpc-python does not expose the server certificate to the client: the replica is authenticated by
mTLS, and attested by evidence made for this relay's certificate and nonce.

The config file (YAML) on each side::

    attester: {tee: tpm, tcti: "device:/dev/tpmrm0", pcrs: [0, 7]}     # or {tee: sample}
    peerPolicy: {version: 1, tee: [tpm], claims: {ak_sha256: {in: ['...']}, pcr7: {equals: '...'}}}
    allowSample: false          # the sample TEE gives no protection; tests and demos only
    tokenTtl: 600               # seconds a replica honours a token (the relay re-attests before)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kubeshield.attest import EvidenceFormatError, Policy, verify_evidence
from kubeshield.attest.attester import Attester
from kubeshield.attest.policy import policy_from_mapping
from kubeshield.attest.sample import SampleAttester
from kubeshield.errors import BackendAuthError, ConfigError, InvalidCiphertext
from kubeshield.kms.api.v1beta1 import api_pb2 as v1_pb2
from kubeshield.kms.api.v2 import api_pb2 as v2_pb2
from kubeshield.kms.client import error_from_rpc
from kubeshield.kms.logging import fields, get_logger

__all__ = [
    "SERVICE",
    "TOKEN_METADATA",
    "AttestedUpstream",
    "PeerAttestationConfig",
    "PeerAttestationGate",
    "cert_fingerprint",
    "load_peer_attestation",
    "peer_binding",
]

SERVICE = "kubeshield.attest.v1.PeerAttestation"
TOKEN_METADATA = "kubeshield-attestation-token"
GUARDED = frozenset({"/v2.KeyManagementService/Decrypt", "/v1beta1.KeyManagementService/Decrypt"})
_V2, _V1 = "/v2.KeyManagementService/", "/v1beta1.KeyManagementService/"
_MAX_SESSIONS = 4096
_log = get_logger("kms.peer_attest")


@dataclass(frozen=True, slots=True)
class PeerAttestationConfig:
    attester: Attester
    peer_policy: Policy
    allow_sample: bool = False
    token_ttl: float = 600.0
    nonce_ttl: float = 30.0


def load_peer_attestation(path: str | Path) -> PeerAttestationConfig:
    """Read the config file (module docstring). Errors name the file and field."""
    source = str(path)
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read: {type(exc).__name__}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{source}: not valid YAML") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: must be a mapping")
    unknown = set(doc) - {"attester", "peerPolicy", "allowSample", "tokenTtl"}
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    att = doc.get("attester")
    if not isinstance(att, dict) or att.get("tee") not in ("tpm", "sample"):
        raise ConfigError(f"{source}: attester.tee: tpm or sample")
    attester: Attester
    if att["tee"] == "tpm":
        from kubeshield.keys.tpm_attest import TpmAttester

        if not isinstance(att.get("tcti"), str):
            raise ConfigError(f"{source}: attester.tcti: required for tee tpm")
        pcrs = att.get("pcrs", list(range(24)))
        if not isinstance(pcrs, list) or not all(isinstance(p, int) and 0 <= p <= 23 for p in pcrs):
            raise ConfigError(f"{source}: attester.pcrs: a list of PCR indexes 0..23")
        attester = TpmAttester(tcti=att["tcti"], pcrs=pcrs)
    else:
        attester = SampleAttester()
    policy = doc.get("peerPolicy")
    if not isinstance(policy, dict):
        raise ConfigError(f"{source}: peerPolicy: required (what the other side's evidence must show)")
    allow = doc.get("allowSample", False)
    ttl = doc.get("tokenTtl", 600)
    if not isinstance(allow, bool):
        raise ConfigError(f"{source}: allowSample: true or false")
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 10 <= ttl <= 86400:
        raise ConfigError(f"{source}: tokenTtl: seconds, 10..86400")
    return PeerAttestationConfig(
        attester=attester,
        peer_policy=policy_from_mapping(policy, source=f"{source}: peerPolicy"),
        allow_sample=allow,
        token_ttl=float(ttl),
    )


def cert_fingerprint(pem_or_der: bytes) -> str:
    """SHA-256 hex of the DER of the first certificate in ``pem_or_der``."""
    if pem_or_der.lstrip().startswith(b"-----"):
        cert = x509.load_pem_x509_certificates(pem_or_der)[0]
    else:
        cert = x509.load_der_x509_certificate(pem_or_der)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def peer_binding(nonce: str, peer_fingerprint: str) -> bytes:
    text = json.dumps({"nonce": nonce, "peer": peer_fingerprint}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha384(text.encode("ascii")).digest()


def _verify(config: PeerAttestationConfig, evidence_b64: object, binding: bytes, now: float) -> str | None:
    """None when the evidence verifies and the policy allows it; else why not."""
    if not isinstance(evidence_b64, str):
        return "evidence: missing"
    try:
        evidence = base64.b64decode(evidence_b64, validate=True)
        result = verify_evidence(
            evidence,
            at=datetime.fromtimestamp(now, UTC),
            expected_report_data=binding,
            allow_sample=config.allow_sample,
        )
    except (binascii.Error, ValueError, EvidenceFormatError) as exc:
        return f"evidence: {exc}"
    decision = config.peer_policy.evaluate(result)
    return None if decision.allowed else decision.reason


def _peer_fp(context: grpc.ServicerContext) -> str | None:
    pems: list[Any] = list(context.auth_context().get("x509_pem_cert") or [])
    for pem in pems:
        try:
            return cert_fingerprint(pem if isinstance(pem, bytes) else str(pem).encode())
        except ValueError:
            return None
    return None


class PeerAttestationGate:
    """The replica side: the exchange service and the interceptor that guards Decrypt (TCP server only)."""

    def __init__(
        self,
        config: PeerAttestationConfig,
        *,
        clock: Callable[[], float] = time.time,
        token: Callable[[int], str] = secrets.token_urlsafe,
    ) -> None:
        self._config = config
        self._clock = clock
        self._token = token
        self._lock = threading.Lock()
        self._sessions: dict[str, tuple[str, str, float]] = {}  # session -> (nonce, peer fp, expires)
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (peer fp, expires)

    def _gc(self, now: float) -> None:
        for sid in [k for k, v in self._sessions.items() if v[2] < now]:
            del self._sessions[sid]
        for tok in [k for k, t in self._tokens.items() if t[1] < now]:
            del self._tokens[tok]

    def _challenge(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        fp = _peer_fp(context)
        try:
            nonce = json.loads(request)["nonce"]
            if not isinstance(nonce, str) or not 16 <= len(nonce) <= 128:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "peer attestation: challenge needs a nonce")
        if fp is None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "peer attestation: no client certificate")
        now = self._clock()
        own = self._config.attester.evidence(peer_binding(nonce, fp))
        with self._lock:
            self._gc(now)
            if len(self._sessions) >= _MAX_SESSIONS:
                context.abort(grpc.StatusCode.UNAVAILABLE, "peer attestation: too many open challenges")
            session, server_nonce = self._token(18), self._token(32)
            self._sessions[session] = (server_nonce, fp, now + self._config.nonce_ttl)
        reply = {"session": session, "nonce": server_nonce, "evidence": base64.b64encode(own).decode()}
        return json.dumps(reply).encode()

    def _attest(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        fp = _peer_fp(context)
        try:
            body = json.loads(request)
            session = body["session"]
        except (ValueError, KeyError, TypeError):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "peer attestation: attest needs a session")
        now = self._clock()
        with self._lock:
            entry = self._sessions.pop(session, None) if isinstance(session, str) else None
        if entry is None or entry[2] < now or entry[1] != fp:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "peer attestation: unknown, used or expired session"
            )
        assert entry is not None and fp is not None
        problem = _verify(self._config, body.get("evidence"), peer_binding(entry[0], fp), now)
        if problem is not None:
            _log.warning("peer attestation refused", extra=fields(peer=fp[:16], reason=problem[:300]))
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"peer attestation refused: {problem[:500]}")
        token = self._token(32)
        with self._lock:
            self._tokens[token] = (fp, now + self._config.token_ttl)
        _log.info("peer attested", extra=fields(peer=fp[:16]))
        return json.dumps({"token": token, "expiresAt": int(now + self._config.token_ttl)}).encode()

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Challenge": grpc.unary_unary_rpc_method_handler(self._challenge),
                "Attest": grpc.unary_unary_rpc_method_handler(self._attest),
            },
        )

    def allowed(self, metadata: Mapping[str, str], context: grpc.ServicerContext) -> bool:
        token = metadata.get(TOKEN_METADATA)
        fp = _peer_fp(context)
        with self._lock:
            entry = self._tokens.get(token) if token else None
        return entry is not None and fp is not None and entry[0] == fp and entry[1] >= self._clock()

    def interceptor(self) -> grpc.ServerInterceptor[Any, Any]:
        return _Guard(self)


class _Guard(grpc.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, gate: PeerAttestationGate) -> None:
        self._gate = gate

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method not in GUARDED or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        gate = self._gate
        metadata = {k: v for k, v in (handler_call_details.invocation_metadata or ()) if isinstance(v, str)}

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            if not gate.allowed(metadata, context):
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "peer attestation required (no valid token)")
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class AttestedUpstream:
    """The relay side: an ``Upstream`` whose Decrypts go only to a replica that attested (and that we
    attested to). Status and Encrypt are delegated to ``inner`` unchanged."""

    def __init__(
        self,
        inner: Any,
        *,
        credentials: grpc.ChannelCredentials,
        client_cert_fingerprint: str,
        config: PeerAttestationConfig,
        server_name: str | None = None,
        client_cert_path: Path | None = None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.inner = inner
        self._cert_path = client_cert_path
        self.name: str = inner.name
        self._credentials = credentials
        self._fp = client_cert_fingerprint
        self._config = config
        self._options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        self._clock = clock
        self._rng = rng
        self._channel: grpc.aio.Channel | None = None
        self._token: str | None = None
        self._expires = 0.0
        self._lock: asyncio.Lock | None = None

    async def status(self, *, timeout: float) -> Any:
        return await self.inner.status(timeout=timeout)

    async def encrypt(self, plaintext: bytes, *, uid: str, timeout: float) -> Any:
        return await self.inner.encrypt(plaintext, uid=uid, timeout=timeout)

    async def v1_encrypt(self, plain: bytes, *, timeout: float) -> bytes:
        result: bytes = await self.inner.v1_encrypt(plain, timeout=timeout)
        return result

    async def use_credentials(self, credentials: grpc.ChannelCredentials, *, grace: float = 5.0) -> None:
        """The relay certificate was renewed: new channels; attest again, bound to the new certificate."""
        use = getattr(self.inner, "use_credentials", None)
        if use is not None:
            await use(credentials, grace=grace)
        old, self._channel = self._channel, None
        self._credentials = credentials
        self._token = None
        if self._cert_path is not None:
            self._fp = cert_fingerprint(self._cert_path.read_bytes())
        if old is not None:
            await old.close(grace)

    def _chan(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = grpc.aio.secure_channel(self.name, self._credentials, options=self._options)
        return self._channel

    async def _call(self, path: str, body: bytes, *, timeout: float, metadata: Any = None) -> bytes:
        call = self._chan().unary_unary(path, request_serializer=None, response_deserializer=None)
        try:
            reply: bytes = await call(body, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.PERMISSION_DENIED:
                self._token = None
                raise BackendAuthError(
                    f"replica {self.name}: {exc.details() or 'permission denied'}"
                ) from None
            raise error_from_rpc(exc, operation=path.rsplit("/", 1)[1]) from None
        return reply

    async def _attested(self, timeout: float) -> str:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            now = self._clock()
            if self._token is not None and self._expires - now > 30:
                return self._token
            nonce = base64.urlsafe_b64encode(self._rng(32)).decode().rstrip("=")
            raw = await self._call(
                f"/{SERVICE}/Challenge", json.dumps({"nonce": nonce}).encode(), timeout=timeout
            )
            try:
                challenge = json.loads(raw)
                session, server_nonce = str(challenge["session"]), str(challenge["nonce"])
            except (ValueError, KeyError, TypeError):
                raise BackendAuthError(f"replica {self.name}: malformed attestation challenge") from None
            problem = _verify(self._config, challenge.get("evidence"), peer_binding(nonce, self._fp), now)
            if problem is not None:
                _log.warning(
                    "replica evidence refused", extra=fields(upstream=self.name, reason=problem[:300])
                )
                raise BackendAuthError(f"replica {self.name}: evidence refused: {problem[:500]}")
            own = await asyncio.to_thread(
                self._config.attester.evidence, peer_binding(server_nonce, self._fp)
            )
            body = json.dumps({"session": session, "evidence": base64.b64encode(own).decode()}).encode()
            reply = json.loads(await self._call(f"/{SERVICE}/Attest", body, timeout=timeout))
            self._token = str(reply["token"])
            self._expires = min(float(reply["expiresAt"]), now + self._config.token_ttl)
            return self._token

    async def _decrypt(self, path: str, request: bytes, message: Any, timeout: float) -> bytes:
        token = await self._attested(timeout)
        data = await self._call(path, request, timeout=timeout, metadata=((TOKEN_METADATA, token),))
        try:
            message.FromString(data)
        except Exception:  # protobuf DecodeError: the reply is not a DecryptResponse
            raise InvalidCiphertext() from None
        return data

    async def decrypt(self, request: bytes, *, timeout: float) -> bytes:
        return await self._decrypt(_V2 + "Decrypt", request, v2_pb2.DecryptResponse, timeout)

    async def v1_decrypt(self, request: bytes, *, timeout: float) -> bytes:
        return await self._decrypt(_V1 + "Decrypt", request, v1_pb2.DecryptResponse, timeout)

    async def close(self) -> None:
        await self.inner.close()
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
