"""Watch correctness over real HTTPS: resumption after drops, 410 re-lists, bookmarks, async twin."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest

from kubeshield.errors import KubeUnavailable
from kubeshield.kube import AsyncKubeClient, KubeClient, WatchEvent, resources
from tests.support.kubeapi import KubeAPI

DEADLINE = 30.0  # generous: the machine is shared; nothing here measures time


def _cm(name: str, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": dict(data)}


class Collector:
    """Runs a Watch in a thread and hands its events over a queue."""

    def __init__(self, watch) -> None:
        self.watch = watch
        self.events: queue.Queue[WatchEvent | BaseException] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.watch:
                self.events.put(event)
        except BaseException as exc:
            self.events.put(exc)

    def take(self, n: int) -> list[WatchEvent]:
        out: list[WatchEvent] = []
        end = time.monotonic() + DEADLINE
        while len(out) < n:
            item = self.events.get(timeout=max(0.1, end - time.monotonic()))
            if isinstance(item, BaseException):
                raise item
            out.append(item)
        return out

    def close(self) -> None:
        self.watch.close()
        self.thread.join(DEADLINE)


def _wait(condition: Callable[[], bool]) -> None:
    end = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def _summary(events: list[WatchEvent]) -> list[tuple[str, str, bool]]:
    return [(e.type, e.name, e.synthetic) for e in events]


def test_list_then_watch(kube: KubeClient):
    kube.create(_cm("before"))
    c = Collector(kube.watch(resources.CONFIG_MAPS))
    try:
        assert _summary(c.take(1)) == [("ADDED", "before", True)]
        kube.create(_cm("after"))
        kube.patch(resources.CONFIG_MAPS, "after", {"data": {"x": "1"}})
        kube.delete(resources.CONFIG_MAPS, "before")
        assert _summary(c.take(3)) == [
            ("ADDED", "after", False),
            ("MODIFIED", "after", False),
            ("DELETED", "before", False),
        ]
    finally:
        c.close()


def test_hold_watches_keeps_a_new_watch_unanswered_until_the_block_ends(kube_api: KubeAPI, kube: KubeClient):
    """The stand-in's hold_watches(): a watch asked for inside the block is received but not served."""
    kube.create(_cm("first"))
    with kube_api.hold_watches():
        c = Collector(kube.watch(resources.CONFIG_MAPS))
        _wait(lambda: kube_api.held_watches() == 1)  # the list came first (not held); the watch now waits
        before = kube_api.open_watches()
        kube.create(_cm("during"))
        assert kube_api.open_watches() == before
        assert _summary(c.take(1)) == [("ADDED", "first", True)]
        assert c.events.empty()  # nothing about "during" while the watch is held
    try:
        assert _summary(c.take(1)) == [("ADDED", "during", False)]  # served from the list's version on
        assert kube_api.held_watches() == 0
    finally:
        c.close()


def test_resumes_after_dropped_connections_without_gaps_or_repeats(kube_api: KubeAPI, kube: KubeClient):
    start_rv = kube.list(resources.CONFIG_MAPS).resource_version
    sleeps: list[float] = []
    client = KubeClient(kube._conn, sleep=sleeps.append)
    c = Collector(client.watch(resources.CONFIG_MAPS, resource_version=start_rv))
    try:
        kube.create(_cm("w0"))
        assert _summary(c.take(1)) == [("ADDED", "w0", False)]
        for i in range(1, 4):
            _wait(lambda: kube_api.open_watches() >= 1)
            assert kube_api.drop_watches() >= 1
            kube.create(_cm(f"w{i}"))  # written while the watch is down or reconnecting
        got = c.take(3)
        assert _summary(got) == [(("ADDED", f"w{i}", False)) for i in range(1, 4)]
        assert c.watch.resource_version == got[-1].object["metadata"]["resourceVersion"]
        assert c.watch.relists == 0
    finally:
        c.close()
        client.close()


class WatchGate(httpx2.BaseTransport):
    """The watching client's transport: while :meth:`hold` is in force, a new watch request waits
    (counted, bounded) before it is sent, until :meth:`release`.

    A dropped watch reconnects, after a back-off when the drop broke the stream or at once when it
    ended it cleanly (the stand-in can do either, depending on which of its two callbacks runs
    first). Either way its next request waits here, so the test can change and compact the
    history under it, then let it go: the reconnect is then certain to find its version compacted.
    """

    def __init__(self, inner: httpx2.BaseTransport) -> None:
        self._inner = inner
        self._holding = threading.Event()
        self._released = threading.Event()
        self.held = 0

    def hold(self) -> None:
        self._holding.set()

    def release(self) -> None:
        self._released.set()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if self._holding.is_set() and request.url.params.get("watch") == "true":
            self.held += 1
            self._released.wait(4 * DEADLINE)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


@pytest.mark.parametrize("gone_as_http", [False, True], ids=["error-event", "http-410"])
def test_410_gone_relists_and_reports_the_difference(tmp_path: Path, gone_as_http: bool):
    with KubeAPI(tmp_path / "api", gone_as_http=gone_as_http) as api:
        config = api.kubeconfig(tmp_path / "kc", credential=api.admin, namespace="default")
        with KubeClient.from_kubeconfig(config) as kube:
            gate = WatchGate(httpx2.HTTPTransport(verify=kube._conn.verify))
            watching = KubeClient(kube._conn, transport=gate)
            kube.create(_cm("stays", v="1"))
            kube.create(_cm("changes", v="1"))
            kube.create(_cm("goes", v="1"))
            c = Collector(watching.watch(resources.CONFIG_MAPS))
            try:
                assert sorted(e.name for e in c.take(3)) == ["changes", "goes", "stays"]
                _wait(lambda: api.open_watches() >= 1)
                # while the watch is down (its reconnect held): changes, then the history is compacted
                gate.hold()
                assert api.drop_watches() >= 1
                _wait(lambda: gate.held >= 1)
                kube.patch(resources.CONFIG_MAPS, "changes", {"data": {"v": "2"}})
                kube.delete(resources.CONFIG_MAPS, "goes")
                kube.create(_cm("new"))
                api.compact()
                gate.release()
                got = c.take(3)
                assert sorted(_summary(got)) == [
                    ("ADDED", "new", True),
                    ("DELETED", "goes", True),
                    ("MODIFIED", "changes", True),
                ]
                assert c.watch.relists >= 1
                kube.create(_cm("later"))  # and the watch carries on from the fresh list
                assert _summary(c.take(1)) == [("ADDED", "later", False)]
            finally:
                gate.release()
                c.close()
                watching.close()


def test_resume_from_a_compacted_version_relists(tmp_path: Path):
    with KubeAPI(tmp_path / "api", history=3) as api:
        config = api.kubeconfig(tmp_path / "kc", credential=api.admin, namespace="default")
        with KubeClient.from_kubeconfig(config) as kube:
            old_rv = kube.create(_cm("a"))["metadata"]["resourceVersion"]
            for i in range(5):  # push the first write out of the 3-event history
                kube.create(_cm(f"b{i}"))
            c = Collector(kube.watch(resources.CONFIG_MAPS, resource_version=old_rv))
            try:
                # the Watch knew nothing at old_rv, so the re-list reports every object it finds
                got = c.take(6)
                assert sorted(e.name for e in got) == ["a"] + [f"b{i}" for i in range(5)]
                assert all(e.synthetic and e.type == "ADDED" for e in got) and c.watch.relists == 1
            finally:
                c.close()


def test_bookmarks_move_the_resource_version(tmp_path: Path):
    with KubeAPI(tmp_path / "api", bookmark_interval=None) as api:
        config = api.kubeconfig(tmp_path / "kc", credential=api.admin, namespace="default")
        with KubeClient.from_kubeconfig(config) as kube:
            kube.create(_cm("seen"))
            c = Collector(kube.watch(resources.CONFIG_MAPS))
            try:
                c.take(1)
                first_rv = c.watch.resource_version
                # writes elsewhere move the global resourceVersion; only a bookmark tells this watch
                api.store.put(
                    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x", "namespace": "default"}}
                )
                _wait(lambda: api.open_watches() >= 1)
                api.bookmark()
                _wait(lambda: c.watch.resource_version != first_rv)
                assert int(c.watch.resource_version) == api.store.resource_version
                assert c.events.empty()  # bookmarks are not handed to the caller
            finally:
                c.close()


def test_selectors_apply_to_watch_events(kube: KubeClient):
    rv = kube.list(resources.CONFIG_MAPS).resource_version
    c = Collector(kube.watch(resources.CONFIG_MAPS, resource_version=rv, labels={"pick": "me"}))
    try:
        ignored = _cm("ignored")
        picked = _cm("picked")
        picked["metadata"]["labels"] = {"pick": "me"}
        kube.create(ignored)
        kube.create(picked)
        assert _summary(c.take(1)) == [("ADDED", "picked", False)]
    finally:
        c.close()


def test_a_server_that_stays_away_ends_the_watch(tmp_path: Path):
    api = KubeAPI(tmp_path / "api").start()
    config = api.kubeconfig(tmp_path / "kc", credential=api.admin, namespace="default")
    sleeps: list[float] = []
    client = KubeClient.from_kubeconfig(config, sleep=sleeps.append)
    try:
        rv = client.list(resources.CONFIG_MAPS).resource_version
        watch = client.watch(resources.CONFIG_MAPS, resource_version=rv, max_failures=3)
        api.stop()
        with pytest.raises(KubeUnavailable):
            next(watch)
        assert len(sleeps) == 3 and sleeps == sorted(sleeps)
    finally:
        client.close()


def test_async_watch_resumes_and_relists(kube_api: KubeAPI, kube: KubeClient, kube_ns: str, tmp_path: Path):
    config = kube_api.kubeconfig(tmp_path / "async", credential=kube_api.admin, namespace=kube_ns)

    async def scenario() -> list[tuple[str, str, bool]]:
        seen: list[tuple[str, str, bool]] = []
        async with AsyncKubeClient.from_kubeconfig(config) as client:
            await client.create(_cm("a1"))
            watch = client.watch(resources.CONFIG_MAPS)
            events = watch.__aiter__()
            first = await asyncio.wait_for(events.__anext__(), DEADLINE)
            seen.append((first.type, first.name, first.synthetic))
            await client.create(_cm("a2"))
            second = await asyncio.wait_for(events.__anext__(), DEADLINE)
            seen.append((second.type, second.name, second.synthetic))
            end = time.monotonic() + DEADLINE
            while kube_api.open_watches() < 1 and time.monotonic() < end:
                await asyncio.sleep(0.02)
            kube_api.drop_watches()
            await client.create(_cm("a3"))
            third = await asyncio.wait_for(events.__anext__(), DEADLINE)
            seen.append((third.type, third.name, third.synthetic))
            await watch.aclose()
        return seen

    assert asyncio.run(scenario()) == [("ADDED", "a1", True), ("ADDED", "a2", False), ("ADDED", "a3", False)]
