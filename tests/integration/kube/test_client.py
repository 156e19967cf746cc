"""kubeshield.kube.KubeClient against the stand-in over real HTTPS: every verb, errors, reviews."""

from __future__ import annotations

import base64
import threading

import pytest

from kubeshield.errors import (
    ConfigError,
    KubeAlreadyExists,
    KubeBadRequest,
    KubeConflict,
    KubeError,
    KubeForbidden,
    KubeGone,
    KubeInvalid,
    KubeNotFound,
    KubeUnauthorized,
    KubeUnavailable,
)
from kubeshield.kube import KubeClient, PatchType, Resource, resources
from tests.support.kubeapi import KubeAPI
from tests.support.kubeapi._pki import Authority

CRONTABS = Resource.custom("stable.example.com/v1", "CronTab")


def _cm(name: str, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": dict(data)}


def test_create_get_replace_delete(kube: KubeClient, kube_ns: str):
    made = kube.create(_cm("a", k="v"))
    assert made["metadata"]["namespace"] == kube_ns
    assert made["metadata"]["uid"] and made["metadata"]["resourceVersion"]
    got = kube.get(resources.CONFIG_MAPS, "a")
    assert got["data"] == {"k": "v"}
    got["data"]["k"] = "v2"
    replaced = kube.replace(got)
    assert int(replaced["metadata"]["resourceVersion"]) > int(made["metadata"]["resourceVersion"])
    kube.delete(resources.CONFIG_MAPS, "a")
    with pytest.raises(KubeNotFound) as err:
        kube.get(resources.CONFIG_MAPS, "a")
    assert err.value.code == 404 and err.value.name == "a" and err.value.namespace == kube_ns


def test_stale_replace_is_a_conflict_and_update_retries(kube: KubeClient):
    first = kube.create(_cm("c", n="0"))
    kube.patch(resources.CONFIG_MAPS, "c", {"data": {"n": "1"}})
    with pytest.raises(KubeConflict):
        kube.replace(first)  # carries the old resourceVersion

    # a writer that races the first two attempts: update() re-reads and re-applies each time
    races = {"left": 2}

    def bump(obj: dict) -> dict:
        if races["left"]:
            races["left"] -= 1
            kube.patch(resources.CONFIG_MAPS, "c", {"data": {"other": str(races["left"])}})
        obj["data"]["n"] = str(int(obj["data"]["n"]) + 10)
        return obj

    sleeps: list[float] = []
    client = KubeClient(kube._conn, sleep=sleeps.append)
    try:
        done = client.update(resources.CONFIG_MAPS, "c", bump)
    finally:
        client.close()
    assert done["data"]["n"] == "11" and done["data"]["other"] == "0"
    assert len(sleeps) == 2 and sleeps[0] < sleeps[1]


def test_update_gives_up_after_its_attempts(kube: KubeClient):
    kube.create(_cm("g", n="0"))

    def always_race(obj: dict) -> dict:
        kube.patch(resources.CONFIG_MAPS, "g", {"data": {"n": obj["data"]["n"] + "x"}})
        return obj

    client = KubeClient(kube._conn, sleep=lambda _: None)
    try:
        with pytest.raises(KubeConflict):
            client.update(resources.CONFIG_MAPS, "g", always_race, attempts=3)
    finally:
        client.close()
    assert kube.get(resources.CONFIG_MAPS, "g")["data"]["n"] == "0xxx"


def test_already_exists_and_invalid(kube: KubeClient):
    kube.create(_cm("dup"))
    with pytest.raises(KubeAlreadyExists):
        kube.create(_cm("dup"))
    with pytest.raises(KubeInvalid) as err:
        kube.create(_cm("Not_A_Name"))
    assert err.value.fields == ("metadata.name",)


def test_list_selectors_and_pagination(kube: KubeClient):
    for i in range(7):
        obj = _cm(f"p{i}")
        obj["metadata"]["labels"] = {"tier": "a" if i % 2 else "b", "n": str(i)}
        kube.create(obj)
    every = kube.list(resources.CONFIG_MAPS, page_size=2)
    assert [o["metadata"]["name"] for o in every] == [f"p{i}" for i in range(7)]
    assert all(o["kind"] == "ConfigMap" and o["apiVersion"] == "v1" for o in every)
    first = kube.list_page(resources.CONFIG_MAPS, limit=3)
    assert len(first) == 3 and first.continue_token and first.remaining == 4
    second = kube.list_page(resources.CONFIG_MAPS, limit=3, continue_token=first.continue_token)
    assert [o["metadata"]["name"] for o in second] == ["p3", "p4", "p5"]
    odd = kube.list(resources.CONFIG_MAPS, labels={"tier": "a"})
    assert [o["metadata"]["name"] for o in odd] == ["p1", "p3", "p5"]
    assert [o["metadata"]["name"] for o in kube.list(resources.CONFIG_MAPS, labels="tier=b,n in (0,6)")] == [
        "p0",
        "p6",
    ]
    assert [
        o["metadata"]["name"] for o in kube.list(resources.CONFIG_MAPS, fields={"metadata.name": "p4"})
    ] == ["p4"]
    with pytest.raises(KubeBadRequest):
        kube.list(resources.CONFIG_MAPS, fields={"data.k": "v"})


def test_expired_continue_token_restarts_the_list(kube_api: KubeAPI, kube: KubeClient):
    for i in range(4):
        kube.create(_cm(f"e{i}"))
    page = kube.list_page(resources.CONFIG_MAPS, limit=2)
    kube_api.compact()
    with pytest.raises(KubeGone):
        kube.list_page(resources.CONFIG_MAPS, limit=2, continue_token=page.continue_token)
    assert len(kube.list(resources.CONFIG_MAPS, page_size=2)) == 4


def test_all_namespaces(kube: KubeClient, kube_ns: str):
    kube.create(_cm("everywhere"))
    found = kube.list(resources.CONFIG_MAPS, all_namespaces=True, fields={"metadata.name": "everywhere"})
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in found] == [(kube_ns, "everywhere")]


def test_three_patch_types(kube: KubeClient):
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]},
    }
    kube.create(pod)
    smp = kube.patch(
        resources.PODS,
        "p",
        {"spec": {"containers": [{"name": "b", "image": "b:2"}]}},
        patch_type=PatchType.STRATEGIC,
    )
    assert [(c["name"], c["image"]) for c in smp["spec"]["containers"]] == [("a", "a:1"), ("b", "b:2")]
    merge = kube.patch(resources.PODS, "p", {"spec": {"containers": [{"name": "c", "image": "c:1"}]}})
    assert [c["name"] for c in merge["spec"]["containers"]] == ["c"]  # merge patch replaces lists
    json_patch = kube.patch(
        resources.PODS,
        "p",
        [{"op": "add", "path": "/metadata/labels", "value": {"x": "y"}}],
        patch_type=PatchType.JSON,
    )
    assert json_patch["metadata"]["labels"] == {"x": "y"}
    stale = {"metadata": {"resourceVersion": "1"}, "spec": {"nodeName": "n"}}
    with pytest.raises(KubeConflict):
        kube.patch(resources.PODS, "p", stale)


def test_server_side_apply_owns_conflicts_and_prunes(kube: KubeClient):
    cfg = _cm("ssa", a="1", b="2")
    made = kube.apply(cfg, field_manager="alpha")
    assert made["data"] == {"a": "1", "b": "2"}
    managers = {m["manager"] for m in made["metadata"]["managedFields"]}
    assert managers == {"alpha"}
    with pytest.raises(KubeConflict) as err:
        kube.apply(_cm("ssa", a="other"), field_manager="beta")
    assert ".data.a" in str(err.value)
    taken = kube.apply(_cm("ssa", a="other"), field_manager="beta", force=True)
    assert taken["data"] == {"a": "other", "b": "2"}
    pruned = kube.apply(_cm("ssa", c="3"), field_manager="alpha")  # alpha gave up b (and a is beta's now)
    assert pruned["data"] == {"a": "other", "c": "3"}
    assert kube.apply(_cm("ssa", c="3"), field_manager="alpha", dry_run=True)["data"] == pruned["data"]


def test_status_subresource_and_generation(kube: KubeClient):
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            },
        },
        "status": {"replicas": 99},
    }
    made = kube.create(deploy)
    assert made["metadata"]["generation"] == 1 and "status" not in made
    made["status"] = {"observedGeneration": 1, "replicas": 1}
    with_status = kube.replace_status(made)
    assert with_status["status"]["replicas"] == 1 and with_status["metadata"]["generation"] == 1
    with_status["spec"]["replicas"] = 3
    with_status["status"] = {"replicas": 1000}
    scaled = kube.replace(with_status)
    assert scaled["metadata"]["generation"] == 2
    assert scaled["status"] == {"observedGeneration": 1, "replicas": 1}  # the main resource ignores status
    patched = kube.patch_status(resources.DEPLOYMENTS, "d", {"status": {"replicas": 3}})
    assert patched["status"]["replicas"] == 3 and patched["metadata"]["generation"] == 2


def test_secret_string_data_is_folded(kube: KubeClient):
    made = kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s"},
            "stringData": {"user": "admin"},
            "data": {"raw": base64.b64encode(b"\x00\x01").decode()},
        }
    )
    assert "stringData" not in made and made["type"] == "Opaque"
    assert (
        base64.b64decode(made["data"]["user"]) == b"admin"
        and base64.b64decode(made["data"]["raw"]) == b"\0\1"
    )


def test_errors_never_carry_secret_values(kube_api: KubeAPI, kube: KubeClient, kube_ns: str):
    kube_api.store.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "imm", "namespace": kube_ns},
            "data": {"k": base64.b64encode(b"old").decode()},
            "immutable": True,
        }
    )
    obj = kube.get(resources.SECRETS, "imm")
    obj["data"]["k"] = base64.b64encode(b"TOPSECRET-VALUE").decode()
    with pytest.raises(KubeInvalid) as err:
        kube.replace(obj)
    text = f"{err.value!s} {err.value!r} {err.value.__dict__}"
    assert "TOPSECRET" not in text and obj["data"]["k"] not in text
    assert err.value.fields == ("data",)


def test_delete_propagation_and_preconditions(kube: KubeClient):
    owner = kube.create(_cm("owner"))
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    for name in ("dep-1", "dep-2"):
        obj = _cm(name)
        obj["metadata"]["ownerReferences"] = [ref]
        kube.create(obj)
    with pytest.raises(KubeConflict):
        kube.delete(resources.CONFIG_MAPS, "owner", uid="not-the-uid")
    kube.delete(resources.CONFIG_MAPS, "owner")  # background: dependents go too
    assert [o["metadata"]["name"] for o in kube.list(resources.CONFIG_MAPS)] == []

    owner = kube.create(_cm("owner2"))
    dep = _cm("orphan")
    dep["metadata"]["ownerReferences"] = [{**ref, "name": "owner2", "uid": owner["metadata"]["uid"]}]
    kube.create(dep)
    kube.delete(resources.CONFIG_MAPS, "owner2", propagation="Orphan")
    left = kube.get(resources.CONFIG_MAPS, "orphan")
    assert "ownerReferences" not in left["metadata"]


def test_finalizers_hold_the_object(kube: KubeClient):
    obj = _cm("fin")
    obj["metadata"]["finalizers"] = ["example.com/hold"]
    kube.create(obj)
    kube.delete(resources.CONFIG_MAPS, "fin")
    held = kube.get(resources.CONFIG_MAPS, "fin")
    assert held["metadata"]["deletionTimestamp"]
    kube.patch(resources.CONFIG_MAPS, "fin", {"metadata": {"finalizers": None}})
    with pytest.raises(KubeNotFound):
        kube.get(resources.CONFIG_MAPS, "fin")


def test_events(kube: KubeClient, kube_ns: str):
    involved = kube.create(_cm("evented"))
    event = kube.emit_event(
        involved, reason="Unsealed", message="ok", type="Warning", component="kubeshield-test"
    )
    assert event["involvedObject"]["uid"] == involved["metadata"]["uid"]
    found = kube.list(resources.EVENTS, fields={"involvedObject.name": "evented", "reason": "Unsealed"})
    assert [e["type"] for e in found] == ["Warning"] and found.items[0]["metadata"]["namespace"] == kube_ns
    with pytest.raises(ValueError):
        kube.emit_event(involved, reason="x", message="y", type="Loud")


CRONTAB_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "crontabs.stable.example.com"},
    "spec": {
        "group": "stable.example.com",
        "scope": "Namespaced",
        "names": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab", "shortNames": ["ct"]},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}


def test_custom_resources_are_as_easy_as_builtins(kube: KubeClient):
    try:
        kube.create(CRONTAB_CRD)
    except KubeAlreadyExists:
        pass
    assert kube.discover("stable.example.com/v1", "CronTab") == CRONTABS
    made = kube.create(
        {
            "apiVersion": "stable.example.com/v1",
            "kind": "CronTab",
            "metadata": {"name": "ct"},
            "spec": {"cronSpec": "* * * * */5"},
        }
    )
    assert made["metadata"]["generation"] == 1
    kube.patch(CRONTABS, "ct", {"spec": {"image": "x"}})
    assert kube.get(CRONTABS, "ct")["metadata"]["generation"] == 2
    kube.patch_status(CRONTABS, "ct", {"status": {"ok": True}})
    got = kube.get(CRONTABS, "ct")
    assert got["status"] == {"ok": True} and got["metadata"]["generation"] == 2
    with pytest.raises(KubeError) as err:  # the API takes no strategic merge for custom resources
        kube.patch(CRONTABS, "ct", {"spec": {}}, patch_type=PatchType.STRATEGIC)
    assert err.value.code == 415
    assert [o["metadata"]["name"] for o in kube.list(CRONTABS)] == ["ct"]


def test_sealed_secrets_and_secret_provider_classes(kube: KubeClient):
    for crd in (
        ("sealedsecrets", "bitnami.com", "v1alpha1", "SealedSecret"),
        ("secretproviderclasses", "secrets-store.csi.x-k8s.io", "v1", "SecretProviderClass"),
    ):
        plural, group, version, kind = crd
        body = {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": plural, "singular": kind.lower(), "kind": kind},
                "versions": [
                    {
                        "name": version,
                        "served": True,
                        "storage": True,
                        "subresources": {"status": {}},
                        "schema": {"openAPIV3Schema": {"type": "object"}},
                    }
                ],
            },
        }
        try:
            kube.create(body)
        except KubeAlreadyExists:
            pass
    sealed = kube.create(
        {
            "apiVersion": "bitnami.com/v1alpha1",
            "kind": "SealedSecret",
            "metadata": {"name": "s"},
            "spec": {"encryptedData": {"k": "AgB..."}},
        }
    )
    assert sealed["kind"] == "SealedSecret"
    spc = kube.create(
        {
            "apiVersion": "secrets-store.csi.x-k8s.io/v1",
            "kind": "SecretProviderClass",
            "metadata": {"name": "p"},
            "spec": {"provider": "kubeshield", "parameters": {"objects": "[]"}},
        }
    )
    assert kube.get(resources.SECRET_PROVIDER_CLASSES, "p")["spec"] == spc["spec"]
    assert len(kube.list(resources.SEALED_SECRETS)) == 1


def test_token_review_with_real_jwts(kube_api: KubeAPI, kube: KubeClient, kube_ns: str):
    pod = kube.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "app-0"},
            "spec": {"serviceAccountName": "app", "containers": [{"name": "c", "image": "i"}]},
        }
    )
    pod_ref = (pod["metadata"]["name"], pod["metadata"]["uid"])
    good = kube_api.mint_sa_token(kube_ns, "app", audiences=["kubeshield"], pod=pod_ref)
    review = kube.token_review(good, ["kubeshield"])
    assert review.authenticated and review.service_account == (kube_ns, "app")
    assert review.pod_name == "app-0" and review.pod_uid == pod["metadata"]["uid"]
    assert review.audiences == ("kubeshield",)
    assert f"system:serviceaccounts:{kube_ns}" in review.groups

    wrong_aud = kube.token_review(good, ["vault"])
    assert not wrong_aud.authenticated and not wrong_aud.username and "audience" in wrong_aud.error

    import datetime as dt

    expired = kube_api.mint_sa_token(
        kube_ns,
        "app",
        audiences=["kubeshield"],
        expiration_seconds=600,
        issued_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
    )
    assert not kube.token_review(expired, ["kubeshield"]).authenticated

    from cryptography.hazmat.primitives.asymmetric import rsa

    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = kube_api.mint_sa_token(kube_ns, "app", audiences=["kubeshield"], signing_key=stranger)
    assert not kube.token_review(forged, ["kubeshield"]).authenticated

    kube.delete(resources.PODS, "app-0")
    assert not kube.token_review(good, ["kubeshield"]).authenticated  # bound to a pod that is gone


def test_token_request_mints_tokens_the_review_accepts(kube: KubeClient, kube_ns: str):
    kube.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"}})
    token, expires = kube.create_token("robot", audiences=["kubeshield"], expiration_seconds=600)
    assert expires.endswith("Z")
    review = kube.token_review(token, ["kubeshield"])
    assert review.authenticated and review.username == f"system:serviceaccount:{kube_ns}:robot"
    with pytest.raises(KubeNotFound):
        kube.create_token("nobody", audiences=["kubeshield"])
    with pytest.raises(KubeInvalid):
        kube.create_token("robot", expiration_seconds=60)


def test_subject_access_review_and_forbidden(kube_api: KubeAPI, kube: KubeClient, kube_ns: str, tmp_path):
    kube_api.deny(user="mallory", resource="secrets", namespace=kube_ns)
    try:
        assert kube.subject_access_review(
            user="alice", verb="get", resource="secrets", namespace=kube_ns
        ).allowed
        refused = kube.subject_access_review(
            user="mallory", verb="get", resource="secrets", namespace=kube_ns
        )
        assert not refused.allowed and refused.denied
        config = kube_api.kubeconfig(tmp_path / "mallory", user="mallory", namespace=kube_ns)
        with KubeClient.from_kubeconfig(config) as mallory:
            mallory.list(resources.CONFIG_MAPS)  # allowed
            with pytest.raises(KubeForbidden) as err:
                mallory.get(resources.SECRETS, "anything")
            assert err.value.code == 403
    finally:
        kube_api.clear_denies()


def test_bearer_tokens_and_unauthorized(kube_api: KubeAPI, kube_ns: str, tmp_path):
    token = kube_api.add_token("bob", ["dev"])
    with KubeClient.from_kubeconfig(
        kube_api.kubeconfig(tmp_path / "bob", token=token, namespace=kube_ns)
    ) as bob:
        assert bob.list(resources.CONFIG_MAPS).items == []
    with KubeClient.from_kubeconfig(kube_api.kubeconfig(tmp_path / "nope", token="not-a-token")) as nope:
        with pytest.raises(KubeUnauthorized):
            nope.list(resources.NAMESPACES)
    sa_token = kube_api.mint_sa_token(kube_ns, "api-user")  # audience: the API's own
    with KubeClient.from_kubeconfig(
        kube_api.kubeconfig(tmp_path / "sa", token=sa_token, namespace=kube_ns)
    ) as sa:
        assert sa.list(resources.CONFIG_MAPS).items == []


def test_inline_certificate_data_and_untrusted_server(kube_api: KubeAPI, kube_ns: str, tmp_path):
    config = kube_api.kubeconfig(tmp_path / "inline", user="carol", embed=True, namespace=kube_ns)
    with KubeClient.from_kubeconfig(config) as carol:
        assert carol.list(resources.CONFIG_MAPS).items == []
    other_ca = Authority(tmp_path / "other-ca")  # a CA we never trust
    text = config.read_text().replace(str(kube_api.ca_path), str(other_ca.path))
    (tmp_path / "untrusting").write_text(text)
    with KubeClient.from_kubeconfig(tmp_path / "untrusting") as client:
        with pytest.raises(KubeUnavailable):
            client.list(resources.CONFIG_MAPS)


def test_a_certificate_from_another_ca_is_not_a_user(kube_api: KubeAPI, tmp_path):
    stranger = Authority(tmp_path / "stranger-ca").issue(
        "admin", "kubernetes-admin", organizations=("system:masters",)
    )
    # refused in the TLS handshake (kube-apiserver answers 401 instead: Go can request a client
    # certificate without verifying it during the handshake, Python's ssl cannot)
    config = kube_api.kubeconfig(tmp_path / "stranger", credential=stranger)
    before = len(kube_api.requests)
    with KubeClient.from_kubeconfig(config) as client:
        with pytest.raises(KubeUnavailable):
            client.list(resources.SECRETS, all_namespaces=True)
    assert [r for r in list(kube_api.requests)[before:] if "secrets" in r.path] == []


def test_bad_kubeconfigs_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        KubeClient.from_kubeconfig(tmp_path / "missing")
    (tmp_path / "bad").write_text("clusters: [}")
    with pytest.raises(ConfigError, match="not valid YAML"):
        KubeClient.from_kubeconfig(tmp_path / "bad")


def test_concurrent_clients_share_nothing(kube_api: KubeAPI, kube: KubeClient):
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(5):
                kube.create(_cm(f"t{n}-{i}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rvs = [int(o["metadata"]["resourceVersion"]) for o in kube.list(resources.CONFIG_MAPS)]
    assert len(rvs) == 20 and len(set(rvs)) == 20
