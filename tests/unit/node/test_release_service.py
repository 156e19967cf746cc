"""The release service core with a recording TokenReview double (integration tests use the stand-in)."""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kubeshield.keys.jwe import decrypt_jwe, generate_ephemeral_key, public_jwk
from kubeshield.keys.testing import InMemoryBackend
from kubeshield.node.audit import AUDIT_LOGGER
from kubeshield.node.identity import Binding, Identity
from kubeshield.node.metrics import NodeMetrics
from kubeshield.node.release import HttpError, ReleaseService
from kubeshield.node.review import PodVerifier, token_expiry
from kubeshield.node.sealing_keys import SealingKeyFile
from kubeshield.node.settings import ReleaseSettings

POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"


@dataclass
class Answer:
    authenticated: bool
    username: str = ""
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)
    audiences: tuple[str, ...] = ()
    error: str = ""
    groups: tuple[str, ...] = ()
    uid: str = ""


def jwt(sub: str, exp: float, jti: int) -> str:
    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part({'sub': sub, 'exp': exp, 'jti': jti})}.c2ln"


class Cluster:
    """Tokens -> answers, pods by (namespace, name); counts the reviews it answered."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.reviews = 0
        self.allowed_sealers: set[tuple[str, str]] = set()

    def add_pod(self, ns: str, name: str, sa: str, uid: str, labels: dict[str, str] | None = None) -> None:
        self.pods[(ns, name)] = {
            "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": labels or {}},
            "spec": {"serviceAccountName": sa},
            "status": {"phase": "Running"},
        }

    def token(
        self, ns: str, sa: str, pod: str, uid: str, *, audiences=("kubeshield",), exp: float = 10_000.0
    ) -> str:
        token = jwt(f"system:serviceaccount:{ns}:{sa}", exp, len(self.answers))
        self.answers[token] = Answer(
            True, f"system:serviceaccount:{ns}:{sa}", {POD_NAME: (pod,), POD_UID: (uid,)}, tuple(audiences)
        )
        return token

    def token_review(self, token: str, audiences=()) -> Answer:
        self.reviews += 1
        return self.answers.get(token, Answer(False, error="invalid bearer token"))

    def subject_access_review(
        self, *, user, verb, groups=(), uid=None, extra=None, resource=None, namespace=None
    ):
        @dataclass
        class Verdict:
            allowed: bool
            reason: str = ""

        return Verdict((user, namespace) in self.allowed_sealers)

    def get_pod(self, ns: str, name: str) -> dict[str, Any] | None:
        return self.pods.get((ns, name))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(tmp_path: Path):
    backend = InMemoryBackend()
    SealingKeyFile(tmp_path / "k.json").create(backend)
    keys = SealingKeyFile(tmp_path / "k.json").open(backend)
    cluster = Cluster()
    clock = Clock()
    metrics = NodeMetrics()
    verifier = PodVerifier(
        reviewer=cluster,
        pods=cluster.get_pod,
        audience="kubeshield",
        cache_ttl=10.0,
        clock=clock,
        on_review=metrics.review_hook,
    )
    settings = ReleaseSettings(rate_per_client=1000, rate_per_identity=1000, burst=1000)
    service = ReleaseService(
        keys=keys,
        verifier=verifier,
        settings=settings,
        user_reviewer=cluster,
        access_reviewer=cluster,
        clock=clock,
        metrics=metrics,
    )
    return keys, cluster, clock, service


def _release(service: ReleaseService, token: str, objects, *, client="10.0.0.1"):
    key = generate_ephemeral_key()
    body = {"objects": [{"name": n, "sealed": s} for n, s in objects], "replyKey": public_jwk(key)}
    reply = service.release(token=token, body=body, client=client)
    return json.loads(decrypt_jwe(reply["jwe"], key))


def test_a_value_goes_only_to_its_identity(world, caplog) -> None:
    keys, cluster, _clock, service = world
    sealed = keys.seal(b"db-pass", binding=Binding(Identity("ns-a", "app")))
    cluster.add_pod("ns-a", "web-1", "app", "uid-1")
    cluster.add_pod("ns-a", "other-1", "other", "uid-2")
    cluster.add_pod("ns-b", "web-1", "app", "uid-3")
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    good = cluster.token("ns-a", "app", "web-1", "uid-1")
    doc = _release(service, good, [("db", sealed)])
    assert doc["identity"] == "ns-a:app" and doc["pod"] == {"name": "web-1", "uid": "uid-1"}
    assert base64.b64decode(doc["objects"][0]["value"]) == b"db-pass"
    for ns, sa, pod, uid in (("ns-a", "other", "other-1", "uid-2"), ("ns-b", "app", "web-1", "uid-3")):
        with pytest.raises(HttpError) as err:
            _release(service, cluster.token(ns, sa, pod, uid), [("db", sealed)])
        assert (
            err.value.status == 403
            and "sealed for ns-a:app" in str(err.value)
            and f"{ns}:{sa}" in str(err.value)
        )
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == AUDIT_LOGGER]
    assert [ln["outcome"] for ln in lines] == ["released", "forbidden", "forbidden"]
    assert (
        lines[0]["identity"] == "ns-a:app"
        and lines[0]["objects"] == ["db"]
        and lines[0]["keyVersions"] == [1]
    )
    text = caplog.text
    assert "db-pass" not in text and good not in text and sealed not in text
    metrics = service.metrics.exposition().decode()
    assert 'kubeshield_node_releases_total{outcome="released"} 1.0' in metrics
    assert 'kubeshield_node_releases_total{outcome="forbidden"} 2.0' in metrics


def test_token_problems_are_401_and_pod_problems_403(world) -> None:
    keys, cluster, _clock, service = world
    sealed = keys.seal(b"v", binding=Binding(Identity("ns-a", "app")))
    cluster.add_pod("ns-a", "web-1", "app", "uid-1")
    cases = {
        "not authenticated": ("garbage", 401, "did not authenticate"),
        "wrong audience": (
            cluster.token("ns-a", "app", "web-1", "uid-1", audiences=("vault",)),
            401,
            "audience",
        ),
        "api audience": (cluster.token("ns-a", "app", "web-1", "uid-1", audiences=()), 401, "audience"),
        "pod gone": (cluster.token("ns-a", "app", "gone", "uid-9"), 403, "no longer exists"),
        "pod re-created": (cluster.token("ns-a", "app", "web-1", "uid-old"), 403, "re-created"),
        "empty": ("", 401, "no bearer token"),
    }
    for what, (token, status, message) in cases.items():
        with pytest.raises(HttpError) as err:
            _release(service, token, [("db", sealed)])
        assert (err.value.status, message in str(err.value)) == (status, True), what
    unbound = cluster.token("ns-a", "app", "web-1", "uid-1")
    cluster.answers[unbound].extra = {}
    with pytest.raises(HttpError, match="not bound to a pod") as err:
        _release(service, unbound, [("db", sealed)])
    assert err.value.status == 401
    cluster.add_pod("ns-a", "web-2", "other", "uid-2")
    with pytest.raises(HttpError, match="does not run as ServiceAccount app"):
        _release(service, cluster.token("ns-a", "app", "web-2", "uid-2"), [("db", sealed)])
    cluster.pods[("ns-a", "web-1")]["status"]["phase"] = "Succeeded"
    with pytest.raises(HttpError, match="has finished"):
        _release(service, cluster.token("ns-a", "app", "web-1", "uid-1"), [("db", sealed)])


def test_audience_and_selector_in_the_binding(world) -> None:
    keys, cluster, _clock, service = world
    cluster.add_pod("ns-a", "web-1", "app", "uid-1", labels={"app": "web"})
    token = cluster.token("ns-a", "app", "web-1", "uid-1", audiences=("kubeshield", "extra"))
    ok = keys.seal(b"v", binding=Binding(Identity("ns-a", "app"), "extra", {"app": "web"}))
    assert _release(service, token, [("a", ok)])["objects"][0]["name"] == "a"
    wrong_label = keys.seal(b"v", binding=Binding(Identity("ns-a", "app"), None, {"app": "db"}))
    with pytest.raises(HttpError, match="does not match") as err:
        _release(service, token, [("a", wrong_label)])
    assert err.value.status == 403
    wrong_aud = keys.seal(b"v", binding=Binding(Identity("ns-a", "app"), "other"))
    with pytest.raises(HttpError, match="audience 'other'"):
        _release(service, token, [("a", wrong_aud)])


def test_bad_values_and_bodies_name_the_object(world, tmp_path: Path) -> None:
    keys, cluster, _clock, service = world
    cluster.add_pod("ns-a", "web-1", "app", "uid-1")
    token = cluster.token("ns-a", "app", "web-1", "uid-1")
    good = keys.seal(b"v", binding=Binding(Identity("ns-a", "app")))
    raw = bytearray(base64.urlsafe_b64decode(good.split(":")[-1] + "=="))
    raw[-1] ^= 1
    tampered = good.rsplit(":", 1)[0] + ":" + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    other_backend = InMemoryBackend()
    SealingKeyFile(tmp_path / "o.json").create(other_backend)
    SealingKeyFile(tmp_path / "o.json").rotate(other_backend)
    foreign = (
        SealingKeyFile(tmp_path / "o.json")
        .open(other_backend)
        .seal(b"v", binding=Binding(Identity("ns-a", "app")))
    )
    for objects, message in (
        ([("ok", good), ("bad", tampered)], "objects[1] (bad): the sealed value does not open"),
        ([("x", "not sealed")], "objects[0] (x): not a kubeshield sealed value"),
        ([("x", foreign)], "version 2, which is not held here"),
        ([("x", good), ("x", good)], "appears twice"),
    ):
        with pytest.raises(HttpError) as err:
            _release(service, token, objects)
        assert err.value.status == 400 and message in str(err.value)
    for body, message in (
        ({"objects": [{"name": "a", "sealed": good}]}, "replyKey: required"),
        ({"objects": []}, "non-empty list"),
        ({"objects": [{"name": "a", "sealed": good}], "replyKey": {"kty": "RSA"}}, "P-256"),
        ({"objects": [{"name": "a", "sealed": good}], "extra": 1}, "unknown field"),
        ({"objects": [{"name": "", "sealed": good}], "replyKey": {}}, "name: required"),
    ):
        with pytest.raises(HttpError, match=message):
            service.release(token=token, body=body, client="c")


def test_reviews_are_cached_briefly_and_never_past_the_token_expiry(world) -> None:
    keys, cluster, clock, service = world
    cluster.add_pod("ns-a", "web-1", "app", "uid-1")
    sealed = keys.seal(b"v", binding=Binding(Identity("ns-a", "app")))
    token = cluster.token("ns-a", "app", "web-1", "uid-1", exp=clock.now + 3)
    assert token_expiry(token) == clock.now + 3
    _release(service, token, [("a", sealed)])
    _release(service, token, [("a", sealed)])
    assert cluster.reviews == 1  # the second came from the cache
    clock.now += 4  # past the token's exp (3 s), well inside the 10 s cache
    with pytest.raises(HttpError):
        cluster.answers[token] = Answer(False, error="token expired")
        _release(service, token, [("a", sealed)])
    assert cluster.reviews == 2
    long_lived = cluster.token("ns-a", "app", "web-1", "uid-1")
    _release(service, long_lived, [("a", sealed)])
    del cluster.pods[("ns-a", "web-1")]
    _release(service, long_lived, [("a", sealed)])  # inside the cache TTL the deleted pod still passes
    clock.now += 11
    with pytest.raises(HttpError, match="no longer exists"):
        _release(service, long_lived, [("a", sealed)])
    assert (
        'kubeshield_node_token_reviews_total{cached="yes",outcome="authenticated"}'
        in service.metrics.exposition().decode()
    )


def test_rate_limits_answer_429_with_retry_after(world) -> None:
    keys, cluster, clock, _service = world
    cluster.add_pod("ns-a", "web-1", "app", "uid-1")
    verifier = PodVerifier(reviewer=cluster, pods=cluster.get_pod, audience="kubeshield", clock=clock)
    service = ReleaseService(
        keys=keys,
        verifier=verifier,
        settings=ReleaseSettings(rate_per_client=1, rate_per_identity=1, burst=2),
        clock=clock,
    )
    sealed = keys.seal(b"v", binding=Binding(Identity("ns-a", "app")))
    token = cluster.token("ns-a", "app", "web-1", "uid-1")
    _release(service, token, [("a", sealed)], client="a")
    _release(service, token, [("a", sealed)], client="b")
    with pytest.raises(HttpError) as err:  # the identity's bucket (burst 2) is empty
        _release(service, token, [("a", sealed)], client="c")
    assert err.value.status == 429 and "per ServiceAccount" in str(err.value) and err.value.retry_after
    for _ in range(2):
        with pytest.raises(HttpError):
            _release(service, "bad", [("a", sealed)], client="e")
    with pytest.raises(HttpError) as err:
        _release(service, "bad", [("a", sealed)], client="e")
    assert err.value.status == 429 and "per client" in str(err.value)
    clock.now += 5
    assert _release(service, token, [("a", sealed)], client="c")["identity"] == "ns-a:app"


def test_seal_through_the_service_checks_the_callers_rbac(world) -> None:
    keys, cluster, _clock, service = world
    cluster.answers["alice-token"] = Answer(True, "alice", groups=("dev",))
    body = {"namespace": "ns-a", "serviceAccount": "app", "value": base64.b64encode(b"pw").decode()}
    with pytest.raises(HttpError, match="alice may not create secrets in namespace ns-a") as err:
        service.seal(token="alice-token", body=body, client="c")
    assert err.value.status == 403
    cluster.allowed_sealers.add(("alice", "ns-a"))
    reply = service.seal(token="alice-token", body=body, client="c")
    from kubeshield.node.sealed import parse_sealed

    assert keys.open(parse_sealed(reply["sealed"])) == b"pw" and reply["keyVersion"] == 1
    with pytest.raises(HttpError) as err:
        service.seal(token="nobody", body=body, client="c")
    assert err.value.status == 401
    with pytest.raises(HttpError, match="namespace"):
        service.seal(token="alice-token", body={**body, "namespace": "Bad"}, client="c")
    with pytest.raises(HttpError, match="base64"):
        service.seal(token="alice-token", body={**body, "value": "***"}, client="c")
