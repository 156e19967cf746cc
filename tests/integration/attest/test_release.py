"""The release server over real HTTP on loopback: RCAR round trip, replay/reuse/expiry refusals, the
sample TEE refused unless enabled, policy failures named, and the released keys interoperate with the
keyring on the server."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path

import pytest

from kubeshield.attest.sample import SampleAttester
from kubeshield.attest_release.client import _post, request_resource
from kubeshield.attest_release.keysource import ReleasedKeyBackend
from kubeshield.attest_release.protocol import binding, decrypt_resource, generate_tee_key, public_jwk
from kubeshield.attest_release.server import ReleaseServer, ReleaseService, load_release_config
from kubeshield.errors import InvalidCiphertext, PolicyDenied
from kubeshield.keys.local import LocalKeyBackend


def write_config(tmp_path: Path, *, allow_sample: bool, policy: dict, ttl: int = 60) -> Path:
    keyring = tmp_path / "keyring"
    if not keyring.exists():
        LocalKeyBackend.create(path=keyring).close()
    cfg = {
        "listen": "127.0.0.1:0",
        "allowSample": allow_sample,
        "nonceTtl": ttl,
        "resources": {"kek": {"keyring": str(keyring), "policy": policy}},
    }
    path = tmp_path / "release.yaml"
    path.write_text(json.dumps(cfg))
    return path


SAMPLE_POLICY = {"version": 1, "tee": ["sample"], "claims": {"svn": {"min": 1}}}


@pytest.fixture
def server(tmp_path):
    servers = []

    def start(*, allow_sample=True, policy=SAMPLE_POLICY, clock=None, ttl=60):
        config = load_release_config(
            write_config(tmp_path, allow_sample=allow_sample, policy=policy, ttl=ttl)
        )
        service = ReleaseService(config, **({"clock": clock} if clock else {}))
        srv = ReleaseServer(config, service=service)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()


def test_sample_release_round_trip_gives_the_keyring_keys(server, tmp_path):
    srv = server()
    material = request_resource(srv.url, "kek", attester=SampleAttester())
    released = ReleasedKeyBackend(material)
    local = LocalKeyBackend(path=tmp_path / "keyring")
    assert released.key_id() == local.key_id()
    w = released.wrap(b"d" * 32, aad=b"ctx")
    assert local.unwrap(w, aad=b"ctx") == b"d" * 32
    w2 = local.wrap(b"e" * 32, aad=b"ctx")
    assert released.unwrap(w2, aad=b"ctx") == b"e" * 32
    with pytest.raises(InvalidCiphertext):
        released.unwrap(w2, aad=b"other")
    assert released.check_health().ok


def test_sample_is_refused_unless_enabled(server):
    srv = server(allow_sample=False)
    with pytest.raises(PolicyDenied, match="sample TEE gives no protection"):
        request_resource(srv.url, "kek", attester=SampleAttester())


def test_policy_failure_is_named(server):
    srv = server()
    with pytest.raises(PolicyDenied, match=r"claims\.svn\.min"):
        request_resource(srv.url, "kek", attester=SampleAttester(svn=0))


def _attempt(url, *, nonce_for_binding=None, session=None, reuse_key=None):
    challenge = _post(
        url, "/kbs/v0/auth", {"version": "0.1.0", "tee": "sample", "resource": "kek"}, timeout=10, cafile=None
    )
    key = reuse_key or generate_tee_key()
    jwk = public_jwk(key)
    evidence = SampleAttester().evidence(binding(nonce_for_binding or challenge["nonce"], jwk))
    body = {
        "session": session or challenge["session"],
        "tee-pubkey": jwk,
        "evidence": base64.b64encode(evidence).decode(),
    }
    return challenge, key, body


def test_wrong_nonce_replay_and_reuse_are_refused(server):
    srv = server()
    # evidence bound to another nonce
    _, _, body = _attempt(srv.url, nonce_for_binding="not-the-nonce")
    with pytest.raises(PolicyDenied, match="nonce"):
        _post(srv.url, "/kbs/v0/attest", body, timeout=10, cafile=None)
    # a good attempt, then the same body again (replay): the nonce is single use
    _, key, body = _attempt(srv.url)
    reply = _post(srv.url, "/kbs/v0/attest", body, timeout=10, cafile=None)
    assert json.loads(decrypt_resource(reply["jwe"], key))["kind"] == "KubeshieldReleasedKeys"
    with pytest.raises(PolicyDenied, match="already used"):
        _post(srv.url, "/kbs/v0/attest", body, timeout=10, cafile=None)
    # old evidence replayed into a fresh session: bound to the old nonce, refused
    challenge2 = _post(
        srv.url,
        "/kbs/v0/auth",
        {"version": "0.1.0", "tee": "sample", "resource": "kek"},
        timeout=10,
        cafile=None,
    )
    with pytest.raises(PolicyDenied, match="nonce"):
        _post(srv.url, "/kbs/v0/attest", {**body, "session": challenge2["session"]}, timeout=10, cafile=None)


def test_someone_else_cannot_open_the_released_resource(server):
    srv = server()
    _, _, body = _attempt(srv.url)
    reply = _post(srv.url, "/kbs/v0/attest", body, timeout=10, cafile=None)
    with pytest.raises(InvalidCiphertext):
        decrypt_resource(reply["jwe"], generate_tee_key())


def test_nonces_expire(server):
    now = [1000.0]
    srv = server(clock=lambda: now[0], ttl=5)
    _, _, body = _attempt(srv.url)
    now[0] += 6
    with pytest.raises(PolicyDenied, match=r"expired|unknown"):
        _post(srv.url, "/kbs/v0/attest", body, timeout=10, cafile=None)


def test_unknown_resource_and_bad_config(server, tmp_path):
    srv = server()
    with pytest.raises(PolicyDenied, match="no such resource"):
        _post(
            srv.url,
            "/kbs/v0/auth",
            {"version": "0.1.0", "tee": "sample", "resource": "nope"},
            timeout=10,
            cafile=None,
        )
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"resources": {"x": {"file": "/k"}}}))
    from kubeshield.errors import ConfigError

    with pytest.raises(ConfigError, match=r"resources\.x\.policy"):
        load_release_config(bad)
