"""The stand-in's apiserver semantics, without HTTP."""

from __future__ import annotations

import pytest

from tests.support.kubeapi._selectors import FieldSelector, LabelSelector
from tests.support.kubeapi._status import ApiStatus
from tests.support.kubeapi._store import Store, Watcher


@pytest.fixture
def store() -> Store:
    return Store(history=5)


def _cms(store: Store):
    return store.type_of("", "v1", "configmaps")


def test_resource_versions_are_monotonic_across_kinds(store: Store):
    rvs = []
    for i in range(3):
        rvs.append(
            int(
                store.create(_cms(store), "default", {"metadata": {"name": f"c{i}"}})["metadata"][
                    "resourceVersion"
                ]
            )
        )
        rvs.append(
            int(
                store.create(store.type_of("", "v1", "secrets"), "default", {"metadata": {"name": f"s{i}"}})[
                    "metadata"
                ]["resourceVersion"]
            )
        )
    assert rvs == sorted(rvs) and len(set(rvs)) == len(rvs)


def test_status_of_errors(store: Store):
    with pytest.raises(ApiStatus) as err:
        store.create(_cms(store), "nowhere", {"metadata": {"name": "x"}})
    assert err.value.status == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'namespaces "nowhere" not found',
        "reason": "NotFound",
        "details": {"name": "nowhere", "kind": "namespaces"},
        "code": 404,
    }
    made = store.create(_cms(store), "default", {"metadata": {"name": "x"}})
    store.update(_cms(store), "default", "x", {**made, "data": {"a": "b"}})
    with pytest.raises(ApiStatus) as err:
        store.update(_cms(store), "default", "x", {**made, "data": {"a": "c"}})
    assert err.value.code == 409 and err.value.status["reason"] == "Conflict"
    assert err.value.status["message"].startswith('Operation cannot be fulfilled on configmaps "x"')


def test_no_op_writes_keep_the_resource_version(store: Store):
    made = store.create(_cms(store), "default", {"metadata": {"name": "same"}, "data": {"a": "b"}})
    again = store.update(_cms(store), "default", "same", made)
    assert again["metadata"]["resourceVersion"] == made["metadata"]["resourceVersion"]


def test_history_bound_makes_old_versions_gone(store: Store):
    first = int(
        store.create(_cms(store), "default", {"metadata": {"name": "h0"}})["metadata"]["resourceVersion"]
    )
    watcher = Watcher(("", "configmaps"), deliver=lambda e: None)
    assert [e.object["metadata"]["name"] for e in store.subscribe(watcher, first - 1)] == ["h0"]
    store.unsubscribe(watcher)
    for i in range(1, 7):
        store.create(_cms(store), "default", {"metadata": {"name": f"h{i}"}})
    with pytest.raises(ApiStatus) as err:
        store.subscribe(watcher, first)
    assert err.value.code == 410 and "too old resource version" in err.value.status["message"]


def test_pagination_serves_one_snapshot(store: Store):
    for i in range(5):
        store.create(_cms(store), "default", {"metadata": {"name": f"p{i}"}})
    page, rv, token, remaining = store.list(
        _cms(store), "default", labels=LabelSelector(), fields=FieldSelector(), limit=2
    )
    store.create(
        _cms(store), "default", {"metadata": {"name": "p0a"}}
    )  # after the snapshot: not in this list
    rest: list = []
    while token:
        more, rv2, token, _ = store.list(
            _cms(store),
            "default",
            labels=LabelSelector(),
            fields=FieldSelector(),
            limit=2,
            continue_token=token,
        )
        assert rv2 == rv
        rest += more
    assert [o["metadata"]["name"] for o in page + rest] == [f"p{i}" for i in range(5)] and remaining == 3


def test_namespace_deletion_takes_its_objects(store: Store):
    ns = store.type_of("", "v1", "namespaces")
    store.create(ns, None, {"metadata": {"name": "doomed"}})
    store.create(_cms(store), "doomed", {"metadata": {"name": "inside"}})
    store.delete(ns, None, "doomed")
    assert store.objects("", "configmaps") == []
    with pytest.raises(ApiStatus):
        store.get(ns, None, "doomed")


def test_crd_registration_and_removal(store: Store):
    crds = store.type_of("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    crd = {
        "metadata": {"name": "things.ex.io"},
        "spec": {
            "group": "ex.io",
            "scope": "Cluster",
            "names": {"plural": "things", "kind": "Thing"},
            "versions": [{"name": "v1", "served": True, "storage": True}, {"name": "v2", "served": True}],
        },
    }
    made = store.create(crds, None, crd)
    assert [c["type"] for c in made["status"]["conditions"]] == ["NamesAccepted", "Established"]
    v1, v2 = store.type_of("ex.io", "v1", "things"), store.type_of("ex.io", "v2", "things")
    store.create(v1, None, {"metadata": {"name": "t"}})
    assert store.get(v2, None, "t")["apiVersion"] == "ex.io/v2"  # one storage, every served version
    store.delete(crds, None, "things.ex.io")
    assert store.find_type("ex.io", "v1", "things") is None and store.objects("ex.io", "things") == []
    with pytest.raises(ApiStatus) as err:
        store.create(crds, None, {**crd, "metadata": {"name": "wrong.name"}})
    assert err.value.code == 422
