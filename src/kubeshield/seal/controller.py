"""The controller's API I/O: watch SealedSecrets, write Secrets, status and Events (kubeshield.kube).

The decisions are in :mod:`kubeshield.seal.reconcile` (pure); this module only moves objects:

* one watch per namespace (or one for all namespaces) feeds a cache of the latest SealedSecrets and
  a queue of keys; a watch that drops resumes, a 410 re-lists (kubeshield.kube does both);
* ``workers`` threads take keys that are due, unseal, read the Secret, apply the planned action, then
  write ``status`` (``Synced``, ``observedGeneration``) and, on failure, a Warning Event
  (``ErrUnsealFailed`` / ``ErrUpdateFailed``); a success that changed the Secret gets a Normal
  ``Unsealed`` Event;
* a failure that can heal (keys may be imported, the API may come back) is retried with exponential
  backoff (:func:`~kubeshield.seal.reconcile.backoff`), at most ``max_retries`` times per change;
  a SealedSecret whose spec and generation did not change since it synced is not reconciled again
  (its own status writes come back as MODIFIED events);
* every ``resync`` seconds all objects are queued again, and every minute the key registry is reloaded
  and renewed when due.

A Secret it does not own is never updated or deleted. Messages in status and Events name fields and
reasons only, never a value.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubeshield.config import Settings
from kubeshield.errors import KubeAlreadyExists, KubeConflict, KubeError, KubeNotFound, KubeshieldError
from kubeshield.kube import KubeClient, resources
from kubeshield.seal.errors import SealError
from kubeshield.seal.http import ApiServer, MetricsServer, RateLimiter, SealMetrics
from kubeshield.seal.objects import SealedSecret
from kubeshield.seal.reconcile import (
    REASON_UNSEAL_FAILED,
    REASON_UNSEALED,
    REASON_UPDATE_FAILED,
    backoff,
    plan,
    synced_status,
)
from kubeshield.seal.service import SealService
from kubeshield.seal.unsealing import unseal

__all__ = ["Controller", "run_from_cli"]

_log = logging.getLogger("kubeshield.seal.controller")
Key = tuple[str, str]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class _Done:
    uid: str
    generation: int
    keys: int


class Controller:
    """Reconciles SealedSecrets through the Kubernetes API (see the module docstring)."""

    def __init__(
        self,
        *,
        kube: KubeClient,
        service: SealService,
        metrics: SealMetrics | None = None,
        namespaces: Sequence[str] = (),
        workers: int = 2,
        max_retries: int = 8,
        resync: float = 600.0,
        housekeeping_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kube = kube
        self._service = service
        self.metrics = metrics or SealMetrics()
        self._namespaces = list(namespaces)
        self._workers = max(1, workers)
        self._max_retries = max_retries
        self._resync = resync
        self._housekeeping_interval = housekeeping_interval
        self._busy = 0
        self._clock = clock
        self._cache: dict[Key, dict[str, Any]] = {}
        self._failures: dict[Key, int] = {}
        self._done: dict[Key, _Done] = {}
        self._queue: list[tuple[float, int, Key]] = []
        self._queued: dict[Key, float] = {}
        self._seq = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watches: list[Any] = []
        self.synced = threading.Event()  # set once every watch delivered its initial list
        self.reconciled = 0

    # --- queue ---------------------------------------------------------------------------------------

    def _enqueue(self, key: Key, *, delay: float = 0.0) -> None:
        due = self._clock() + delay
        with self._cond:
            current = self._queued.get(key)
            if current is not None and current <= due:
                return
            self._queued[key] = due
            self._seq += 1
            heapq.heappush(self._queue, (due, self._seq, key))
            self._cond.notify()

    def _next(self) -> Key | None:
        with self._cond:
            while not self._stop.is_set():
                now = self._clock()
                while self._queue and self._queued.get(self._queue[0][2]) != self._queue[0][0]:
                    heapq.heappop(self._queue)  # superseded entry
                if self._queue and self._queue[0][0] <= now:
                    _due, _seq, key = heapq.heappop(self._queue)
                    del self._queued[key]
                    return key
                wait = self._queue[0][0] - now if self._queue else 1.0
                self._cond.wait(timeout=min(max(wait, 0.01), 1.0))
            return None

    def idle(self) -> bool:
        """Nothing queued (the benchmark and tests wait for this after ``synced``)."""
        with self._cond:
            return not self._queued and self._busy == 0

    # --- run -----------------------------------------------------------------------------------------

    def start(self) -> Controller:
        targets: list[str | None] = list(self._namespaces) or [None]
        remaining = [len(targets)]
        lock = threading.Lock()

        def initial_done() -> None:
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    self.synced.set()

        for ns in targets:
            t = threading.Thread(
                target=self._watch, args=(ns, initial_done), name=f"seal-watch-{ns or 'all'}", daemon=True
            )
            self._threads.append(t)
        for i in range(self._workers):
            self._threads.append(threading.Thread(target=self._work, name=f"seal-worker-{i}", daemon=True))
        self._threads.append(
            threading.Thread(target=self._housekeeping, name="seal-housekeeping", daemon=True)
        )
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for w in list(self._watches):
            w.close()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=timeout)

    def _watch(self, namespace: str | None, initial_done: Callable[[], None]) -> None:
        signalled = False
        while not self._stop.is_set():
            try:
                listing = self._kube.list(
                    resources.SEALED_SECRETS, namespace=namespace, all_namespaces=namespace is None
                )
                seen = set()
                for item in listing.items:
                    meta = item.get("metadata") or {}
                    key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
                    seen.add(key)
                    self._cache[key] = item
                    self._enqueue(key)
                for key in [
                    k for k in self._cache if (namespace is None or k[0] == namespace) and k not in seen
                ]:
                    self._forget(key)
                if not signalled:
                    signalled = True
                    initial_done()
                watch = self._kube.watch(
                    resources.SEALED_SECRETS,
                    namespace=namespace,
                    all_namespaces=namespace is None,
                    resource_version=listing.resource_version,
                )
                self._watches.append(watch)
                with watch:
                    for event in watch:
                        key = (event.namespace, event.name)
                        if event.type == "DELETED":
                            self._forget(key)
                        else:
                            self._cache[key] = event.object
                            self._enqueue(key)
                        if self._stop.is_set():
                            return
            except KubeError as exc:
                if self._stop.is_set():
                    return
                _log.warning("watch of SealedSecrets (%s) failed: %s; listing again", namespace or "all", exc)
                self._stop.wait(2.0)

    def _forget(self, key: Key) -> None:
        self._cache.pop(key, None)
        self._done.pop(key, None)
        self._failures.pop(key, None)

    def _work(self) -> None:
        while True:
            key = self._next()
            if key is None:
                return
            with self._cond:
                self._busy += 1
            started = time.perf_counter()
            try:
                retry = self.reconcile(key)
            except Exception:  # a bug must not stop the worker; the key is retried
                _log.exception("reconcile of %s/%s crashed", *key)
                retry = True
            finally:
                with self._cond:
                    self._busy -= 1
                    self.reconciled += 1
            self.metrics.reconcile.observe(time.perf_counter() - started)
            if retry:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                if failures <= self._max_retries:
                    self._enqueue(key, delay=backoff(failures))
            else:
                self._failures.pop(key, None)

    def _housekeeping(self) -> None:
        last_resync = self._clock()
        while not self._stop.wait(self._housekeeping_interval):
            try:
                if self._service.renew_if_due() is not None or self._service.reload():
                    self._requeue_all()
            except KubeshieldError as exc:
                _log.warning("sealing-key registry reload/renewal failed: %s", exc)
            if self._clock() - last_resync >= self._resync:
                last_resync = self._clock()
                self._requeue_all()

    def _requeue_all(self) -> None:
        """Reconcile everything again, synced or not (a deleted or edited Secret is put back)."""
        self._done.clear()
        self._failures.clear()
        for key in list(self._cache):
            self._enqueue(key)

    # --- one object ----------------------------------------------------------------------------------

    def reconcile(self, key: Key) -> bool:
        """Reconcile one SealedSecret; returns True when it should be retried later."""
        obj = self._cache.get(key)
        if obj is None:
            return False  # deleted: its Secret goes with it (ownerReference garbage collection)
        meta = obj.get("metadata") or {}
        uid, generation = str(meta.get("uid") or ""), int(meta.get("generation") or 0)
        done = self._done.get(key)
        if (
            done is not None
            and done.uid == uid
            and done.generation == generation
            and done.keys == len(self._service.keys)
        ):
            return False
        try:
            sealed = self._service.parse(obj)
        except SealError as exc:
            self._fail(obj, None, REASON_UNSEAL_FAILED, str(exc), outcome="malformed")
            return False
        try:
            unsealed = unseal(sealed, self._service.keys)
        except SealError as exc:
            self._fail(obj, sealed, REASON_UNSEAL_FAILED, f"Failed to unseal: {exc}", outcome="unseal_failed")
            return True
        try:
            try:
                existing: dict[str, Any] | None = self._kube.get(
                    resources.SECRETS, sealed.name, namespace=sealed.namespace
                )
            except KubeNotFound:
                existing = None
            action = plan(sealed=sealed, desired=unsealed.secret, existing=existing)
            if action.kind == "create":
                assert action.secret is not None
                self._kube.create(action.secret, resource=resources.SECRETS, namespace=sealed.namespace)
            elif action.kind == "update":
                assert action.secret is not None
                self._kube.replace(action.secret, resource=resources.SECRETS, namespace=sealed.namespace)
            elif action.kind in ("refuse", "fail"):
                self._fail(
                    obj,
                    sealed,
                    REASON_UPDATE_FAILED,
                    action.message,
                    outcome="unmanaged" if action.kind == "refuse" else "update_failed",
                )
                return action.kind == "fail"
        except (KubeConflict, KubeAlreadyExists):
            return True  # someone else wrote it meanwhile: read again soon
        except KubeError as exc:
            self._fail(
                obj, sealed, REASON_UPDATE_FAILED, f"cannot write the Secret: {exc}", outcome="update_failed"
            )
            return True
        if action.kind != "none":
            self._event(obj, "Normal", REASON_UNSEALED, "SealedSecret unsealed successfully")
        self._status(obj, ok=True, message="", reason="")
        self.metrics.unseal.labels(outcome="ok").inc()
        self._done[key] = _Done(uid=uid, generation=generation, keys=len(self._service.keys))
        return False

    def _fail(
        self, obj: dict[str, Any], sealed: SealedSecret | None, reason: str, message: str, *, outcome: str
    ) -> None:
        self.metrics.unseal.labels(outcome=outcome).inc()
        meta = obj.get("metadata") or {}
        _log.warning("SealedSecret %s/%s: %s", meta.get("namespace"), meta.get("name"), message)
        self._event(obj, "Warning", reason, message)
        self._status(obj, ok=False, message=message, reason=reason)

    def _event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        try:
            self._kube.emit_event(
                obj, reason=reason, message=message[:1024], type=type_, component="kubeshield-seal"
            )
        except KubeError as exc:
            _log.warning("cannot record an Event: %s", exc)

    def _status(self, obj: dict[str, Any], *, ok: bool, message: str, reason: str) -> None:
        meta = obj.get("metadata") or {}
        generation = int(meta.get("generation") or 0)

        def mutate(current: dict[str, Any]) -> dict[str, Any] | None:
            status, changed = synced_status(
                current.get("status"),
                generation=int(current.get("metadata", {}).get("generation") or generation),
                ok=ok,
                message=message[:1024],
                now=_now(),
                reason=reason,
            )
            if not changed:
                return None
            return {**current, "status": status}

        try:
            new = self._kube.update(
                resources.SEALED_SECRETS,
                str(meta.get("name")),
                mutate,
                namespace=str(meta.get("namespace")),
                status=True,
            )
            key = (str(meta.get("namespace")), str(meta.get("name")))
            if key in self._cache and isinstance(new, dict):
                self._cache[key] = new
        except KubeNotFound:
            return
        except KubeError as exc:
            self.metrics.unseal.labels(outcome="status_failed").inc()
            _log.warning("cannot write the status of %s/%s: %s", meta.get("namespace"), meta.get("name"), exc)


def run_from_cli(
    *,
    settings: Settings,
    kubeconfig: Any,
    listen: str,
    metrics_listen: str,
    namespaces: str | None,
    rate_limit: float,
    rate_limit_burst: int,
) -> None:
    """``kubeshield seal controller``: open the keys, start the HTTP servers and the controller, and run
    until SIGTERM/SIGINT."""
    import signal

    from kubeshield.seal.setup import open_registry

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opened = open_registry(settings)
    try:
        if not opened.registry.exists():
            opened.registry.init()
            _log.info("created the sealing-key registry %s", opened.registry.path)
        service = SealService(opened.registry, renew_period=settings.seal.key_renew_period)
        service.renew_if_due()
        metrics = SealMetrics()
        api = ApiServer(
            listen,
            service=service,
            metrics=metrics,
            limiter=RateLimiter(rate=rate_limit, burst=rate_limit_burst),
        ).start()
        metrics_server = MetricsServer(metrics_listen, service=service, metrics=metrics).start()
        kube = KubeClient.from_kubeconfig(kubeconfig) if kubeconfig else _in_cluster_or_default()
        ns = [n.strip() for n in (namespaces or "").split(",") if n.strip()]
        controller = Controller(kube=kube, service=service, metrics=metrics, namespaces=ns).start()
        _log.info(
            "serving the API on %s and metrics on %s; %d sealing key(s)",
            listen,
            metrics_listen,
            len(service.keys),
        )
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        _log.info("stopping")
        controller.stop()
        api.stop()
        metrics_server.stop()
        kube.close()
    finally:
        opened.close()


def _in_cluster_or_default() -> KubeClient:
    try:
        return KubeClient.in_cluster()
    except KubeshieldError:
        return KubeClient.from_kubeconfig()
