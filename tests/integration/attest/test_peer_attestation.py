"""Wire-in (b): a replica serves Decrypt over mTLS only to a relay whose evidence verified, and the relay
forwards Decrypt only to a replica whose evidence verified. Real gRPC over TLS on 127.0.0.1, real
relay (kubeshield.kms.relay.Relay), evidence from a real swtpm (and the sample TEE for the policy cases)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from kubeshield.attest import parse_policy
from kubeshield.attest.sample import SampleAttester
from kubeshield.attest.tpm import ak_fingerprint
from kubeshield.errors import BackendAuthError, BackendError
from kubeshield.keys.local import LocalKeyBackend
from kubeshield.keys.tpm import TpmSealer
from kubeshield.keys.tpm_attest import TpmAttester
from kubeshield.kms.api.v2 import api_pb2 as v2_pb2
from kubeshield.kms.peer_attest import (
    AttestedUpstream,
    PeerAttestationConfig,
    PeerAttestationGate,
    cert_fingerprint,
    load_peer_attestation,
)
from kubeshield.kms.relay import AioUpstream, Relay
from kubeshield.kms.server import KMSServer
from kubeshield.kms.service import EncryptReply, KMSService, StatusReply
from kubeshield.kms.tls import AllowList, ReloadingServerCredentials, client_credentials
from tests.support.service import RELAY_ALLOW, make_certs
from tests.support.swtpm import start_swtpm


class Recording:
    def __init__(self, service: KMSService) -> None:
        self.service = service
        self.calls: list[str] = []

    def status(self) -> StatusReply:
        return self.service.status()

    def encrypt(self, plaintext: bytes, *, uid: str) -> EncryptReply:
        self.calls.append("encrypt")
        return self.service.encrypt(plaintext, uid=uid)

    def decrypt(self, ciphertext: bytes, *, key_id: str, annotations: Mapping[str, bytes], uid: str) -> bytes:
        self.calls.append("decrypt")
        return self.service.decrypt(ciphertext, key_id=key_id, annotations=annotations, uid=uid)

    def v1_encrypt(self, plain: bytes) -> bytes:
        return self.service.v1_encrypt(plain)

    def v1_decrypt(self, cipher: bytes) -> bytes:
        self.calls.append("v1_decrypt")
        return self.service.v1_decrypt(cipher)


SAMPLE_OK = parse_policy("version: 1\ntee: [sample]\nclaims: {svn: {min: 1}}\n")
SAMPLE_STRICT = parse_policy("version: 1\ntee: [sample]\nclaims: {svn: {min: 5}}\n")


def sample_config(policy=SAMPLE_OK, svn: int = 1) -> PeerAttestationConfig:
    return PeerAttestationConfig(attester=SampleAttester(svn=svn), peer_policy=policy, allow_sample=True)


@pytest.fixture(scope="module")
def tpm(tmp_path_factory):
    t = start_swtpm(tmp_path_factory.mktemp("tpm-peer"))
    yield t
    t.stop()


@pytest.fixture
def replica(tmp_path):
    started: list = []

    def start(config: PeerAttestationConfig):
        certs = make_certs(tmp_path / f"certs{len(started)}")
        service = KMSService(
            LocalKeyBackend.create(path=tmp_path / f"keyring{len(started)}"), health_interval=0.5
        )
        api = Recording(service)
        live = tmp_path / f"live{len(started)}"
        live.mkdir()
        for name, src in (
            ("tls.crt", certs.server.cert),
            ("tls.key", certs.server.key),
            ("ca.crt", certs.ca.path),
        ):
            shutil.copy(src, live / name)
        creds = ReloadingServerCredentials(
            cert=live / "tls.crt", key=live / "tls.key", client_ca=live / "ca.crt"
        )
        server = KMSServer(
            api,
            listen="tcp://127.0.0.1:0",
            tls=creds,
            allow=AllowList((RELAY_ALLOW, "dns:intruder.kubeshield.test")),
            peer_attestation=PeerAttestationGate(config),
        )
        service.start()
        server.start()
        started.append((server, service))
        return certs, api, f"127.0.0.1:{server.listen_port}"

    yield start
    for server, service in started:
        server.stop(None).wait(5)
        service.stop()


def attested(certs, target, config, issued=None) -> AttestedUpstream:
    issued = issued or certs.relay
    creds = client_credentials(ca=certs.ca.path, cert=issued.cert, key=issued.key)
    return AttestedUpstream(
        AioUpstream(target, credentials=creds, server_name="localhost"),
        credentials=creds,
        client_cert_fingerprint=cert_fingerprint(issued.cert.read_bytes()),
        config=config,
        server_name="localhost",
    )


def decrypt_request(ciphertext_reply) -> bytes:
    return v2_pb2.DecryptRequest(
        ciphertext=ciphertext_reply.ciphertext,
        key_id=ciphertext_reply.key_id,
        uid="u",
        annotations=dict(ciphertext_reply.annotations),
    ).SerializeToString()


def test_relay_and_replica_attest_each_other_with_tpm_quotes(replica, tpm, tmp_path):
    ak = load_pem_public_key(TpmSealer(tcti=tpm.tcti).quote(nonce=b"enrol", pcrs=[0]).ak_public_pem)
    policy = parse_policy(
        f"version: 1\ntee: [tpm]\nclaims: {{ak_sha256: {{in: ['{ak_fingerprint(ak)}']}}}}\n"
    )
    config = PeerAttestationConfig(attester=TpmAttester(tcti=tpm.tcti, pcrs=[0, 7]), peer_policy=policy)
    certs, api, target = replica(config)

    async def run() -> bytes:
        up = attested(certs, target, config)
        relay = Relay([up], budget=20.0, try_timeout=10.0, check_timeout=5.0)
        await relay.check_now()
        try:
            enc = await relay.encrypt(b"secret", uid="u")
            reply = await relay.decrypt(decrypt_request(enc))
            again = await relay.decrypt(decrypt_request(enc))  # the token is reused, no new quote
            assert again == reply
            return reply
        finally:
            await relay.close()

    reply = asyncio.run(run())
    assert v2_pb2.DecryptResponse.FromString(reply).plaintext == b"secret"
    assert api.calls.count("decrypt") == 2


def test_decrypt_without_a_token_or_with_a_stolen_token_is_refused(replica):
    certs, api, target = replica(sample_config())

    async def run() -> None:
        up = attested(certs, target, sample_config())
        enc = await up.encrypt(b"x", uid="u", timeout=10)
        await up.decrypt(decrypt_request(enc), timeout=10)  # attests, works
        assert api.calls.count("decrypt") == 1
        # a plain mTLS client (the relay's own cert, no token) gets PERMISSION_DENIED for Decrypt ...
        with pytest.raises(BackendAuthError, match="permission denied"):
            await up.inner.decrypt(decrypt_request(enc), timeout=10)
        # ... an allowed-listed intruder replaying the relay's token is refused too (token bound to the cert)
        thief = attested(certs, target, sample_config(), issued=certs.intruder)
        thief._token, thief._expires = up._token, up._expires
        with pytest.raises(BackendAuthError, match="peer attestation required"):
            await thief.decrypt(decrypt_request(enc), timeout=10)
        await thief.close()
        await up.close()

    asyncio.run(run())
    assert api.calls.count("decrypt") == 1  # neither refused call reached the service


def test_relay_refuses_a_replica_whose_evidence_fails_its_policy(replica):
    certs, api, target = replica(sample_config(svn=1))

    async def run() -> None:
        up = attested(certs, target, sample_config(SAMPLE_STRICT))
        enc = await up.encrypt(b"x", uid="u", timeout=10)
        with pytest.raises(BackendAuthError, match=r"evidence refused.*claims\.svn\.min"):
            await up.decrypt(decrypt_request(enc), timeout=10)
        await up.close()

    asyncio.run(run())
    assert "decrypt" not in api.calls


def test_replica_refuses_a_relay_whose_evidence_fails_its_policy(replica):
    certs, api, target = replica(sample_config(SAMPLE_STRICT, svn=9))

    async def run() -> None:
        up = attested(certs, target, sample_config(SAMPLE_OK, svn=1))
        enc = await up.encrypt(b"x", uid="u", timeout=10)
        with pytest.raises(BackendError, match=r"peer attestation refused.*claims\.svn\.min"):
            await up.decrypt(decrypt_request(enc), timeout=10)
        await up.close()

    asyncio.run(run())
    assert "decrypt" not in api.calls


def test_sample_is_refused_unless_enabled(replica):
    strict = PeerAttestationConfig(attester=SampleAttester(), peer_policy=SAMPLE_OK, allow_sample=False)
    certs, _, target = replica(strict)

    async def run() -> None:
        up = attested(certs, target, sample_config())
        enc = await up.encrypt(b"x", uid="u", timeout=10)
        with pytest.raises(BackendError, match="no protection"):
            await up.decrypt(decrypt_request(enc), timeout=10)
        await up.close()

    asyncio.run(run())


def test_config_file(tmp_path: Path):
    p = tmp_path / "peer.yaml"
    p.write_text("attester: {tee: sample}\npeerPolicy: {version: 1, tee: [sample]}\nallowSample: true\n")
    cfg = load_peer_attestation(p)
    assert cfg.allow_sample and cfg.attester.tee == "sample"
    p.write_text("attester: {tee: sample}\n")
    from kubeshield.errors import ConfigError

    with pytest.raises(ConfigError, match="peerPolicy"):
        load_peer_attestation(p)


def test_a_renewed_client_certificate_attests_again_bound_to_the_new_certificate(replica, tmp_path):
    """use_credentials (the relay's certificate was renewed): new channel, new fingerprint, new quote;
    the token bound to the old certificate is worthless over the new one."""
    certs, api, target = replica(sample_config())
    live = tmp_path / "relay-live"
    live.mkdir()
    shutil.copy(certs.relay.cert, live / "tls.crt")
    shutil.copy(certs.relay.key, live / "tls.key")

    async def run() -> None:
        creds = client_credentials(ca=certs.ca.path, cert=live / "tls.crt", key=live / "tls.key")
        up = AttestedUpstream(
            AioUpstream(target, credentials=creds, server_name="localhost"),
            credentials=creds,
            client_cert_fingerprint=cert_fingerprint((live / "tls.crt").read_bytes()),
            config=sample_config(),
            server_name="localhost",
            client_cert_path=live / "tls.crt",
        )
        try:
            enc = await up.encrypt(b"x", uid="u", timeout=10)
            await up.decrypt(decrypt_request(enc), timeout=10)
            first = up._token
            assert first is not None
            # renewal: the files now hold another allow-listed certificate
            shutil.copy(certs.intruder.cert, live / "tls.crt")
            shutil.copy(certs.intruder.key, live / "tls.key")
            renewed = client_credentials(ca=certs.ca.path, cert=live / "tls.crt", key=live / "tls.key")
            await up.use_credentials(renewed, grace=0)
            assert up._token is None
            assert up._fp == cert_fingerprint(certs.intruder.cert.read_bytes())
            await up.decrypt(decrypt_request(enc), timeout=10)  # attests again, over the new certificate
            assert up._token is not None and up._token != first
            up._token = first  # the old certificate's token, presented over the new certificate
            with pytest.raises(BackendAuthError, match="peer attestation required"):
                await up.decrypt(decrypt_request(enc), timeout=10)
        finally:
            await up.close()

    asyncio.run(run())
    assert api.calls.count("decrypt") == 2
