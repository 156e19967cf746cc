"""The agent's requests, served on a real unix socket by an Agent on a thread's loop (no process)."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubeshield.access.agent import AgentSettings, prepare_socket_dir
from kubeshield.access.agent_client import AgentClient, AgentError, AgentUnavailable
from kubeshield.access.agent_protocol import ERROR_TYPES, OPS, encode_frame, recv_message
from kubeshield.access.credential import ClusterEndpoint
from kubeshield.access.store import Argon2Params, CredentialStore, StoreKey
from kubeshield.errors import ConfigError
from tests.support.access_agent import agent_on_thread, cert_credential, token_credential


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def rundir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def agent(rundir: Path, tmp_path: Path, clock: Clock) -> Iterator[AgentClient]:
    settings = AgentSettings(
        socket_path=rundir / "agent.sock",
        store=CredentialStore(tmp_path / "store"),
        max_connections=3,
        request_timeout=10,
        clock=clock,
    )
    with agent_on_thread(settings) as (_, client):
        yield client


def test_add_list_remove(agent: AgentClient) -> None:
    agent.add(cert_credential("prod", subject="alice"))
    agent.add(token_credential("dev"))
    listed = {c["context"]: c for c in agent.contexts()}
    assert set(listed) == {"prod", "dev"}
    assert listed["prod"]["kind"] == "client-certificate" and listed["prod"]["subject"] == "alice"
    assert all("PRIVATE" not in str(c) and "token" not in c for c in listed.values())
    agent.remove("dev")
    assert [c["context"] for c in agent.contexts()] == ["prod"]
    with pytest.raises(AgentError) as caught:
        agent.remove("dev")
    assert caught.value.kind == "not-found"


def test_exec_credential_without_proxy_gives_the_credential(agent: AgentClient) -> None:
    expires = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    cred = cert_credential("prod", expires_at=expires)
    token = token_credential("dev")
    agent.add(cred)
    agent.add(token)
    status = agent.exec_credential("prod", proxy=False)
    assert status["clientCertificateData"].encode() == cred.client_cert_pem
    assert status["clientKeyData"].encode() == cred.client_key_pem
    assert status["expirationTimestamp"] == expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert agent.exec_credential("dev", proxy=False) == {"token": token.token, "expirationTimestamp": None}


def test_lock_drops_everything_and_says_locked(agent: AgentClient) -> None:
    agent.add(token_credential("dev"))
    agent.lock()
    assert agent.contexts() == [] and agent.status()["locked"] is True
    with pytest.raises(AgentError) as caught:
        agent.exec_credential("dev", proxy=False)
    assert caught.value.kind == "locked"


def test_a_credential_is_dropped_at_its_expiry(agent: AgentClient, clock: Clock) -> None:
    agent.add(token_credential("dev", expires_at=clock.now + dt.timedelta(minutes=5)))
    assert agent.exec_credential("dev", proxy=False)["token"]
    clock.now += dt.timedelta(minutes=6)
    with pytest.raises(AgentError) as caught:
        agent.exec_credential("dev", proxy=False)
    assert caught.value.kind == "expired"
    assert agent.contexts() == []


def test_an_expired_credential_is_not_taken(agent: AgentClient, clock: Clock) -> None:
    with pytest.raises(AgentError) as caught:
        agent.add(token_credential("dev", expires_at=clock.now - dt.timedelta(seconds=1)))
    assert caught.value.kind == "expired"


def test_new_key_and_install_certificate(agent: AgentClient, clock: Clock) -> None:
    handle, csr_pem = agent.new_key()
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "alice@example.com")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(csr.public_key())
        .serial_number(1)
        .not_valid_before(clock.now - dt.timedelta(minutes=1))
        .not_valid_after(clock.now + dt.timedelta(minutes=15))
        .sign(ca_key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = cert.public_bytes(Encoding.PEM)
    clusters = [
        ClusterEndpoint("east", "https://east:6443"),
        ClusterEndpoint("west", "https://west:6443", b"CA"),
    ]
    agent.install_certificate(handle=handle, cert_pem=pem, clusters=clusters)
    listed = {c["context"]: c for c in agent.contexts()}
    assert set(listed) == {"east", "west"} and listed["east"]["subject"] == "alice@example.com"
    assert listed["west"]["source"] == "relay"
    key_pem = agent.exec_credential("east", proxy=False)["clientKeyData"]
    from cryptography.hazmat.primitives.serialization import PublicFormat, load_pem_private_key

    key = load_pem_private_key(key_pem.encode(), None)
    assert key.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    ) == csr.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(AgentError) as used:  # a handle serves once
        agent.install_certificate(handle=handle, cert_pem=pem, clusters=clusters)
    assert used.value.kind == "not-found"


def test_a_certificate_for_another_key_is_refused(agent: AgentClient) -> None:
    handle, _ = agent.new_key()
    other = cert_credential("x")
    with pytest.raises(AgentError) as caught:
        agent.install_certificate(
            handle=handle, cert_pem=other.client_cert_pem or b"", clusters=[ClusterEndpoint("e", "https://e")]
        )
    assert caught.value.kind == "invalid" and "not for the key pair" in str(caught.value)
    assert agent.contexts() == []


def test_unlock_with_a_passphrase_loads_the_store(agent: AgentClient, tmp_path: Path) -> None:
    key = StoreKey(passphrase=b"pw", argon2=Argon2Params(iterations=1, lanes=1, memory_kib=64))
    CredentialStore(tmp_path / "store").save([token_credential("a"), cert_credential("b")], key)
    with pytest.raises(AgentError, match="does not open"):
        agent.unlock(passphrase=b"wrong")
    assert sorted(agent.unlock(passphrase=b"pw")) == ["a", "b"]
    assert {c["context"] for c in agent.contexts()} == {"a", "b"}


def _raw(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(str(path))
    return s


def test_an_unknown_op_and_malformed_json_are_clear_errors_and_the_agent_keeps_serving(
    agent: AgentClient, rundir: Path
) -> None:
    with pytest.raises(AgentError, match="unknown op 'steal'") as caught:
        agent.call("steal")
    assert caught.value.kind == "protocol"
    conn = _raw(rundir / "agent.sock")
    try:
        body = b'{"v": 1, "op": '
        conn.sendall(struct.pack(">I", len(body)) + body)
        answer = recv_message(conn)
        assert (
            answer is not None
            and answer["error"]["type"] == "protocol"
            and "JSON" in answer["error"]["message"]
        )
        conn.sendall(encode_frame({"v": 1, "op": "contexts"}))  # the same connection still serves
        again = recv_message(conn)
        assert again is not None and again["ok"] is True
        conn.sendall(encode_frame({"v": 1, "op": "remove", "context": 5}))
        bad = recv_message(conn)
        assert bad is not None and "context" in bad["error"]["message"]
    finally:
        conn.close()
    assert agent.status()["contexts"] == 0


def test_an_oversized_frame_is_refused_before_its_body_and_ends_that_connection_only(
    agent: AgentClient, rundir: Path
) -> None:
    conn = _raw(rundir / "agent.sock")
    try:
        conn.sendall(struct.pack(">I", 64 * 1024 * 1024))
        answer = recv_message(conn)
        assert answer is not None and "larger than" in answer["error"]["message"]
        assert conn.recv(1) == b""  # closed: the framing is lost
    finally:
        conn.close()
    assert agent.status()["protocol"] == 1


def test_connections_beyond_the_cap_are_told_the_agent_is_busy(agent: AgentClient, rundir: Path) -> None:
    held = [_raw(rundir / "agent.sock") for _ in range(3)]
    try:
        for conn in held:  # each one admitted and served once: the agent counts them
            conn.sendall(encode_frame({"v": 1, "op": "contexts"}))
            assert recv_message(conn) is not None
        with pytest.raises(AgentError, match="too many connections") as caught:
            agent.status()
        assert caught.value.kind == "unavailable"
    finally:
        for conn in held:
            conn.close()
    deadline = 60.0
    import time

    end = time.monotonic() + deadline
    while True:  # the closed connections are released (poll with a deadline, not a sleep)
        try:
            assert agent.status()["contexts"] == 0
            break
        except AgentError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def test_no_agent_is_unavailable_with_the_command_to_run(tmp_path: Path) -> None:
    with pytest.raises(AgentUnavailable, match="kubeshield access agent"):
        AgentClient(tmp_path / "none.sock", timeout=5).status()


@pytest.mark.parametrize("mode", [0o755, 0o711, 0o770, 0o701])
def test_a_socket_directory_that_is_not_0700_is_refused(tmp_path: Path, mode: int) -> None:
    d = tmp_path / "run"
    d.mkdir()
    d.chmod(mode)
    with pytest.raises(ConfigError, match="must be 0700"):
        prepare_socket_dir(d / "agent.sock")


def test_a_missing_socket_directory_is_made_0700(tmp_path: Path) -> None:
    prepare_socket_dir(tmp_path / "a" / "b" / "agent.sock")
    assert os.stat(tmp_path / "a" / "b").st_mode & 0o777 == 0o700


def test_the_socket_is_0600(agent: AgentClient, rundir: Path) -> None:
    assert os.stat(rundir / "agent.sock").st_mode & 0o777 == 0o600


def test_the_expiry_timer_drops_a_credential_nobody_asks_for(agent: AgentClient, clock: Clock) -> None:
    import time

    clock.now = clock.now.replace(microsecond=0)  # the wire carries whole seconds
    agent.add(token_credential("short", expires_at=clock.now + dt.timedelta(seconds=1)))
    agent.add(token_credential("long", expires_at=clock.now + dt.timedelta(hours=1)))
    deadline = time.monotonic() + 60
    while "short" in {c["context"] for c in agent.contexts()}:  # no request touched it: the timer did
        assert time.monotonic() < deadline, "the credential was not dropped at its expiry"
        time.sleep(0.05)
    assert [c["context"] for c in agent.contexts()] == ["long"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
requests = st.one_of(
    st.binary(min_size=1, max_size=200),
    st.dictionaries(st.text(max_size=10), json_values, max_size=5).map(lambda d: json.dumps(d).encode()),
    st.builds(
        lambda op, args: json.dumps({"v": 1, "op": op, **args}).encode(),
        st.sampled_from([*sorted(OPS), "", "nope"]),
        st.dictionaries(
            st.sampled_from(
                [
                    "context",
                    "credential",
                    "handle",
                    "cert",
                    "clusters",
                    "proxy",
                    "listen",
                    "passphrase",
                    "subject",
                ]
            ),
            json_values,
            max_size=4,
        ),
    ),
)


@given(body=requests)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_request_gets_an_answer_and_the_agent_keeps_serving(
    agent: AgentClient, rundir: Path, body: bytes
) -> None:
    conn = _raw(rundir / "agent.sock")
    try:
        conn.sendall(struct.pack(">I", len(body)) + body)
        answer = recv_message(conn)
        assert answer is not None
        if answer["ok"] is not True:
            assert answer["error"]["type"] in ERROR_TYPES and answer["error"]["message"]
            assert answer["error"]["type"] != "internal", answer
    finally:
        conn.close()
    assert agent.status()["protocol"] == 1


def test_a_request_that_stalls_is_answered_at_the_request_timeout_and_the_agent_keeps_serving(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run2"
    run.mkdir(mode=0o700)
    settings = AgentSettings(socket_path=run / "agent.sock", request_timeout=0.5)
    with agent_on_thread(settings) as (_, client):
        conn = _raw(run / "agent.sock")
        try:
            conn.sendall(struct.pack(">I", 100) + b'{"v": 1')  # 7 of the 100 announced bytes, then nothing
            answer = recv_message(conn)  # the socket's own timeout (30 s) bounds this wait
            assert answer is not None and "did not arrive within 0.5s" in answer["error"]["message"]
            assert conn.recv(1) == b""
        finally:
            conn.close()
        assert client.status()["protocol"] == 1
