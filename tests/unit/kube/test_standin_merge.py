"""The stand-in's patch semantics: RFC 7386 merge patch, strategic merge, server-side apply."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.support.kubeapi._merge import apply_config, json_merge_patch, strategic_merge_patch


def test_rfc7386_examples():
    # RFC 7386 appendix A, a selection
    assert json_merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert json_merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert json_merge_patch({"a": "b"}, {"a": None}) == {}
    assert json_merge_patch({"a": ["b"]}, {"a": "c"}) == {"a": "c"}
    assert json_merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert json_merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert json_merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3),
    max_leaves=10,
)


@given(
    st.dictionaries(st.text(max_size=2), json_values, max_size=4),
    st.dictionaries(st.text(max_size=2), json_values, max_size=4),
)
def test_merge_patch_is_idempotent(target, patch):
    once = json_merge_patch(target, patch)
    assert json_merge_patch(once, patch) == once


def _pod(*containers):
    return {"spec": {"containers": [{"name": n, "image": i} for n, i in containers]}}


def test_strategic_merge_by_key_and_directives():
    base = _pod(("a", "a:1"), ("b", "b:1"))
    assert strategic_merge_patch(base, _pod(("b", "b:2"))) == _pod(("a", "a:1"), ("b", "b:2"))
    assert strategic_merge_patch(base, _pod(("c", "c:1"))) == _pod(("a", "a:1"), ("b", "b:1"), ("c", "c:1"))
    deleted = strategic_merge_patch(base, {"spec": {"containers": [{"name": "a", "$patch": "delete"}]}})
    assert deleted == _pod(("b", "b:1"))
    replaced = strategic_merge_patch(base, {"spec": {"$patch": "replace", "containers": []}})
    assert replaced == {"spec": {"containers": []}}
    ordered = strategic_merge_patch(
        base, {"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}}
    )
    assert [c["name"] for c in ordered["spec"]["containers"]] == ["b", "a"]
    fins = strategic_merge_patch(
        {"metadata": {"finalizers": ["x"]}}, {"metadata": {"finalizers": ["y", "x"]}}
    )
    assert fins == {"metadata": {"finalizers": ["x", "y"]}}
    removed = strategic_merge_patch(fins, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}})
    assert removed == {"metadata": {"finalizers": ["y"]}}
    atomic = strategic_merge_patch({"spec": {"args": ["1", "2"]}}, {"spec": {"args": ["3"]}})
    assert atomic == {"spec": {"args": ["3"]}}
    ports = strategic_merge_patch(
        {"spec": {"ports": [{"port": 80, "name": "h"}]}}, {"spec": {"ports": [{"port": 443, "name": "s"}]}}
    )
    assert [p["port"] for p in ports["spec"]["ports"]] == [80, 443]


def test_apply_conflicts_force_and_prune():
    applied: dict = {}
    obj, conflicts = apply_config(
        None, {"data": {"a": "1", "b": "2"}}, manager="m1", applied=applied, force=False
    )
    assert obj == {"data": {"a": "1", "b": "2"}} and conflicts == []
    obj2, conflicts = apply_config(obj, {"data": {"a": "X"}}, manager="m2", applied=applied, force=False)
    assert conflicts == [(("data", "a"), "m1")] and obj2 == obj and "m2" not in applied
    same, conflicts = apply_config(obj, {"data": {"a": "1"}}, manager="m2", applied=applied, force=False)
    assert conflicts == []  # the same value is shared ownership, not a conflict
    forced, _ = apply_config(same, {"data": {"a": "X"}}, manager="m2", applied=applied, force=True)
    assert forced == {"data": {"a": "X", "b": "2"}}
    pruned, _ = apply_config(forced, {"data": {"c": "3"}}, manager="m1", applied=applied, force=False)
    assert pruned == {"data": {"a": "X", "c": "3"}}  # m1 dropped b; a belongs to m2 now
