"""The watch bookkeeping: resource versions, bookmarks, and the diff a re-list reports."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kubeshield.kube._watch import WatchState


def _obj(name: str, rv: int, ns: str = "n") -> dict:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": str(rv)}}


def test_events_and_bookmarks_move_the_version():
    state = WatchState("5")
    added = state.on_event("ADDED", _obj("a", 6))
    assert added is not None and added.type == "ADDED"
    assert state.on_event("BOOKMARK", {"metadata": {"resourceVersion": "9"}}) is None
    assert state.resource_version == "9"
    state.expired()
    assert state.resource_version is None


def test_relist_reports_what_changed():
    state = WatchState()
    initial = state.on_list([_obj("a", 1), _obj("b", 2), _obj("c", 3)], "3", initial=True)
    assert [(e.type, e.name, e.synthetic) for e in initial] == [("ADDED", n, True) for n in "abc"]
    state.on_event("MODIFIED", _obj("a", 4))
    diff = state.on_list([_obj("a", 4), _obj("b", 7), _obj("d", 8)], "8", initial=False)
    assert sorted((e.type, e.name) for e in diff) == [("ADDED", "d"), ("DELETED", "c"), ("MODIFIED", "b")]
    deleted = next(e for e in diff if e.type == "DELETED")
    assert deleted.object["metadata"]["resourceVersion"] == "3"  # the last state seen
    assert state.resource_version == "8" and state.relists == 1


objects = st.dictionaries(st.sampled_from("abcdefgh"), st.integers(min_value=1, max_value=50), max_size=8)


@given(objects, objects)
def test_relist_diff_turns_the_old_view_into_the_new(before, after):
    state = WatchState()
    state.on_list([_obj(k, v) for k, v in before.items()], "1", initial=True)
    view = {k: v for k, v in before.items()}
    for event in state.on_list([_obj(k, v) for k, v in after.items()], "2", initial=False):
        if event.type == "DELETED":
            del view[event.name]
        else:
            assert (event.type == "ADDED") == (event.name not in view)
            view[event.name] = int(event.object["metadata"]["resourceVersion"])
    assert view == after
