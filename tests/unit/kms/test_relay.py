"""The relay's policy (kubeshield.kms.relay.Relay) with in-memory async replicas: agreement, routing,
failover, and the once-only check of a Decrypt request that is then forwarded as the received bytes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeshield.errors import (
    BackendAuthError,
    BackendTimeout,
    BackendUnavailable,
    ContractViolation,
    InvalidCiphertext,
    InvalidRequest,
)
from kubeshield.kms.api.v1beta1 import api_pb2 as v1_pb2
from kubeshield.kms.api.v2 import api_pb2 as v2_pb2
from kubeshield.kms.metrics import KMSMetrics
from kubeshield.kms.relay import Relay, check_v1_decrypt_request, check_v2_decrypt_request
from kubeshield.kms.relay_upstream import failure_reason
from kubeshield.kms.service import EncryptReply, StatusReply


class FakeReplica:
    """An async upstream that records every call; ``fail`` makes its next calls raise."""

    def __init__(self, name: str, key_id: str = "k1") -> None:
        self.name = name
        self.key_id = key_id
        self.fail: Exception | None = None
        self.calls: list[tuple[str, Any]] = []

    def _maybe_fail(self, op: str, arg: Any = None) -> None:
        self.calls.append((op, arg))
        if self.fail is not None:
            raise self.fail

    async def status(self, *, timeout: float) -> StatusReply:
        self._maybe_fail("status")
        return StatusReply(version="v2", healthz="ok", key_id=self.key_id)

    async def encrypt(self, plaintext: bytes, *, uid: str, timeout: float) -> EncryptReply:
        self._maybe_fail("encrypt", plaintext)
        return EncryptReply(ciphertext=b"c:" + plaintext, key_id=self.key_id, annotations={})

    async def decrypt(self, request: bytes, *, timeout: float) -> bytes:
        self._maybe_fail("decrypt", request)
        message = v2_pb2.DecryptRequest.FromString(request)
        reply: bytes = v2_pb2.DecryptResponse(plaintext=message.ciphertext[2:]).SerializeToString()
        return reply

    async def v1_encrypt(self, plain: bytes, *, timeout: float) -> bytes:
        self._maybe_fail("v1_encrypt", plain)
        return b"c:" + plain

    async def v1_decrypt(self, request: bytes, *, timeout: float) -> bytes:
        self._maybe_fail("v1_decrypt", request)
        cipher = v1_pb2.DecryptRequest.FromString(request).cipher
        reply: bytes = v1_pb2.DecryptResponse(plain=cipher[2:]).SerializeToString()
        return reply

    async def close(self) -> None:
        self.calls.append(("close", None))

    def data_calls(self) -> list[str]:
        return [op for op, _ in self.calls if op not in ("status", "close")]


def run(body: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(body())


def decrypt_request(
    ciphertext: bytes, key_id: str = "k1", annotations: dict[str, bytes] | None = None
) -> bytes:
    data: bytes = v2_pb2.DecryptRequest(
        ciphertext=ciphertext, key_id=key_id, annotations=annotations or {}, uid="u"
    ).SerializeToString()
    return data


def test_new_key_id_is_reported_only_when_every_healthy_replica_serves_it() -> None:
    replicas = [FakeReplica(f"r{i}") for i in range(3)]
    relay = Relay(replicas)

    async def body() -> None:
        await relay.check_now()
        assert (await relay.status()).key_id == "k1"
        replicas[0].key_id = replicas[1].key_id = "k2"
        await relay.check_now()
        assert relay.agreed_key_id == "k1"  # r2 still serves only k1
        assert (await relay.status()).key_id == "k1"
        replicas[2].fail = BackendUnavailable("down")
        await relay.check_now()
        assert relay.agreed_key_id == "k2"  # every *healthy* replica serves k2 now
        assert [c.key_id for c in relay.key_changes() if c.agreed_at is not None] == ["k1", "k2"]

    run(body)


def test_encrypt_goes_only_to_replicas_on_the_agreed_key_and_never_returns_another_key_id() -> None:
    replicas = [FakeReplica("r0"), FakeReplica("r1"), FakeReplica("r2")]
    relay = Relay(replicas)

    async def body() -> None:
        await relay.check_now()
        replicas[0].key_id = "k2"  # rotated after the check: its reply must not be returned
        for _ in range(6):
            reply = await relay.encrypt(b"seed", uid="u")
            assert reply.key_id == "k1"
        assert relay.states()[0].key_id == "k2"  # the relay noticed from the reply

    run(body)


def test_encrypt_refused_when_no_replica_serves_the_agreed_key() -> None:
    replicas = [FakeReplica("r0"), FakeReplica("r1", key_id="k2")]
    relay = Relay(replicas)

    async def body() -> None:
        await relay.check_now()
        assert relay.agreed_key_id is None
        with pytest.raises(BackendUnavailable):
            await relay.encrypt(b"seed", uid="u")
        with pytest.raises(BackendUnavailable):
            await relay.status()

    run(body)
    assert all(r.data_calls() == [] for r in replicas)


def test_decrypt_forwards_the_received_bytes_and_returns_the_replica_reply() -> None:
    replicas = [FakeReplica("r0"), FakeReplica("r1")]
    relay = Relay(replicas)
    request = decrypt_request(b"c:" + os.urandom(32), annotations={"a.example.com": b"x"})

    async def body() -> bytes:
        await relay.check_now()
        result: bytes = await relay.decrypt(request)
        return result

    reply = run(body)
    forwarded = [arg for r in replicas for op, arg in r.calls if op == "decrypt"]
    assert forwarded == [request]  # once, byte for byte
    assert (
        v2_pb2.DecryptResponse.FromString(reply).plaintext
        == v2_pb2.DecryptRequest.FromString(request).ciphertext[2:]
    )


def test_decrypt_fails_over_and_marks_an_unavailable_replica_down() -> None:
    replicas = [FakeReplica("r0"), FakeReplica("r1"), FakeReplica("r2")]
    relay = Relay(replicas)
    request = decrypt_request(b"c:plain")

    async def body() -> None:
        await relay.check_now()
        replicas[0].fail = BackendUnavailable("gone")
        replicas[1].fail = BackendUnavailable("gone")
        for _ in range(4):  # whatever the round robin starts with
            reply = await relay.decrypt(request)
            assert v2_pb2.DecryptResponse.FromString(reply).plaintext == b"plain"

    run(body)
    assert [s.healthy for s in relay.states()] == [False, False, True]


def test_decrypt_invalid_ciphertext_everywhere_is_the_opaque_error() -> None:
    replicas = [FakeReplica("r0"), FakeReplica("r1")]
    replicas[0].fail = InvalidCiphertext()
    replicas[1].fail = BackendUnavailable("down")
    relay = Relay(replicas)

    async def body() -> None:
        await relay.check_now()  # both fail Status: still tried, unhealthy ones last
        with pytest.raises(InvalidCiphertext):
            await relay.decrypt(decrypt_request(b"c:x"))

    run(body)


@pytest.mark.parametrize(
    ("request_bytes", "why"),
    [
        (b"\xff\xff\xff", "malformed"),
        (decrypt_request(b"x" * 1025), "larger than 1024"),
        (decrypt_request(b""), "empty"),
        (decrypt_request(b"c:x", key_id=""), "key_id is empty"),
        (decrypt_request(b"c:x", key_id="k" * 1025), "key_id"),
        (decrypt_request(b"c:x", annotations={"not a domain": b"v"}), "annotation"),
    ],
)
def test_a_bad_decrypt_request_is_refused_without_reaching_a_replica(request_bytes: bytes, why: str) -> None:
    replicas = [FakeReplica("r0"), FakeReplica("r1")]
    relay = Relay(replicas)

    async def body() -> None:
        await relay.check_now()
        with pytest.raises(InvalidRequest, match=why):
            await relay.decrypt(request_bytes)

    run(body)
    assert all(r.data_calls() == [] for r in replicas)


def test_a_bad_v1_decrypt_request_is_refused_and_a_good_one_forwarded_as_is() -> None:
    replicas = [FakeReplica("r0")]
    relay = Relay(replicas)
    too_big = v1_pb2.DecryptRequest(version="v1beta1", cipher=b"x" * 65536).SerializeToString()
    good = v1_pb2.DecryptRequest(version="v1beta1", cipher=b"c:plain").SerializeToString()

    async def body() -> bytes:
        await relay.check_now()
        with pytest.raises(InvalidRequest, match="larger than 65535"):
            await relay.v1_decrypt(too_big)
        with pytest.raises(InvalidRequest, match="malformed"):
            await relay.v1_decrypt(b"\x0a\xff")
        assert replicas[0].data_calls() == []
        result: bytes = await relay.v1_decrypt(good)
        return result

    assert v1_pb2.DecryptResponse.FromString(run(body)).plain == b"plain"
    assert [arg for op, arg in replicas[0].calls if op == "v1_decrypt"] == [good]


def test_start_checks_at_once_and_close_stops_the_checker_and_closes_upstreams() -> None:
    replicas = [FakeReplica("r0"), FakeReplica("r1")]
    relay = Relay(replicas, check_interval=0.01)

    async def body() -> None:
        await relay.start()
        assert relay.agreed_key_id == "k1" and relay.is_healthy()
        await asyncio.sleep(0.05)  # let the checker task run a few rounds
        await relay.close()
        checks = len(replicas[0].calls)
        await asyncio.sleep(0.05)
        assert len(replicas[0].calls) == checks  # no more checks after close

    run(body)
    assert all(r.calls[-1] == ("close", None) for r in replicas)
    assert sum(op == "status" for op, _ in replicas[0].calls) >= 2


@given(st.binary(max_size=2048))
def test_decrypt_request_check_refuses_only_with_invalid_request(data: bytes) -> None:
    """Random bytes are either refused with InvalidRequest or a request the plugin would accept."""
    try:
        check_v2_decrypt_request(data)
    except InvalidRequest:
        return
    message = v2_pb2.DecryptRequest.FromString(data)
    assert 1 <= len(message.ciphertext) <= 1024
    assert 1 <= len(message.key_id.encode()) <= 1024


@given(st.binary(max_size=1100), st.text(st.characters(exclude_categories=["Cs"]), max_size=1100))
def test_decrypt_request_check_follows_the_plugin_limits(ciphertext: bytes, key_id: str) -> None:
    request = decrypt_request(ciphertext, key_id=key_id)
    ok = 1 <= len(ciphertext) <= 1024 and 1 <= len(key_id.encode()) <= 1024
    if ok:
        check_v2_decrypt_request(request)
    else:
        with pytest.raises(InvalidRequest):
            check_v2_decrypt_request(request)


def test_v1_request_check_accepts_the_largest_v1_blob() -> None:
    check_v1_decrypt_request(v1_pb2.DecryptRequest(cipher=b"x" * 65535).SerializeToString())


# -- reasons, health changes logged once, client credential reload ------------------------------------


_PREFIX = "KMS Status: unavailable: failed to connect to all addresses; last error: "
_GRPC_TEXTS = [
    ("KMS Status: unavailable: errors resolving r0.invalid:9443: [...] Domain name not found", "dns"),
    (_PREFIX + "UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused", "refused"),
    (
        _PREFIX + "UNKNOWN: Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: CERTIFICATE_VERIFY",
        "tls",
    ),
    (_PREFIX + "UNKNOWN: Custom verification check failed: Hostname Verification Check failed.", "tls"),
    (_PREFIX + "UNAVAILABLE: ipv4:127.0.0.1:9443: Socket closed", "closed"),
    ("KMS Status: unavailable: key backend unhealthy: keyring sync: diverged", "unhealthy"),
]


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        *((BackendUnavailable(text), reason) for text, reason in _GRPC_TEXTS),
        (BackendTimeout("KMS Status: deadline exceeded"), "timeout"),
        (BackendAuthError("KMS Status: permission denied (PERMISSION_DENIED)"), "denied"),
        (ContractViolation("replica Status version is not v2"), "contract"),
    ],
)
def test_failure_reasons_say_what_the_operator_must_fix(exc: Exception, reason: str) -> None:
    """The texts are the grpc library's own (seen against real sockets in the integration tests)."""
    got, detail = failure_reason(exc)
    assert got == reason
    assert len(detail) <= 300 and detail


def test_health_changes_are_logged_once_with_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    replicas = [FakeReplica("r0"), FakeReplica("r1")]
    metrics = KMSMetrics()
    relay = Relay(replicas, metrics=metrics)

    def events(msg: str) -> list[dict[str, Any]]:
        return [r.fields for r in caplog.records if r.getMessage() == msg]  # type: ignore[attr-defined]

    async def body() -> None:
        await relay.check_now()
        replicas[1].fail = BackendUnavailable("KMS Status: unavailable: ... Connection refused")
        for _ in range(3):
            await relay.check_now()
        replicas[1].fail = BackendUnavailable("KMS Status: unavailable: ... Tls handshake failed")
        await relay.check_now()
        replicas[1].fail = None
        await relay.check_now()
        await relay.check_now()

    with caplog.at_level("INFO", logger="kubeshield.kms.relay"):
        run(body)
    assert [e["upstream"] for e in events("replica up")] == ["r0", "r1"]
    down = events("replica down")
    assert [(e["upstream"], e["reason"]) for e in down] == [("r1", "refused")]  # once, not per round
    assert [(e["upstream"], e["reason"]) for e in events("replica still down")] == [("r1", "tls")]
    assert [e["upstream"] for e in events("replica back")] == ["r1"]
    text = metrics.render().decode()
    assert 'kubeshield_relay_upstream_failures_total{reason="refused",upstream="r1"} 3.0' in text
    assert 'kubeshield_relay_upstream_failures_total{reason="tls",upstream="r1"} 1.0' in text


def test_a_failing_call_marks_the_replica_down_with_its_reason_at_once() -> None:
    replicas = [FakeReplica("r0"), FakeReplica("r1")]
    relay = Relay(replicas)

    async def body() -> None:
        await relay.check_now()
        replicas[0].fail = BackendUnavailable("... Connection refused")
        replicas[1].fail = None
        for _ in range(2):  # round robin reaches r0 once
            await relay.decrypt(decrypt_request(b"c:x"))

    run(body)
    state = relay.states()[0]
    assert not state.healthy and state.reason == "refused" and state.detail.startswith("Decrypt: ")


class Credentials:
    """A CredentialSource whose files 'change' when told to."""

    def __init__(self) -> None:
        self.renewed: object | None = None
        self.polls = 0

    def poll(self) -> object | None:
        self.polls += 1
        renewed, self.renewed = self.renewed, None
        return renewed


class Reloadable(FakeReplica):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.credentials: list[object] = []

    async def use_credentials(self, credentials: object) -> None:
        self.credentials.append(credentials)


def test_each_check_round_hands_renewed_client_credentials_to_every_upstream() -> None:
    replicas = [Reloadable("r0"), Reloadable("r1")]
    tls = Credentials()
    relay = Relay(replicas, tls=tls)
    new = object()

    async def body() -> None:
        await relay.check_now()
        assert all(r.credentials == [] for r in replicas)
        tls.renewed = new
        await relay.check_now()
        await relay.check_now()

    run(body)
    assert tls.polls == 3
    assert all(r.credentials == [new] for r in replicas)  # once, when the files changed
