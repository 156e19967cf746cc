"""``KubeClient``: the synchronous Kubernetes API client (for CLIs and threads).

Objects are plain JSON dicts exactly as the API sends them (unknown fields survive a read-modify-write);
resource types are ``Resource`` values, so custom resources work like built-ins. Every failure is a
``kubeshield.errors.KubeError`` subclass that names the object and never carries a response body.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any

import httpx2

from kubeshield.errors import KubeGone, KubeUnavailable
from kubeshield.kube import _connect, _reviews, _wire
from kubeshield.kube._common import (
    USER_AGENT,
    ObjectList,
    Resolver,
    as_list,
    discovery_path,
    name_of,
    resource_from_discovery,
    transport_errors,
)
from kubeshield.kube._retry import backoff_delays, retry_on_conflict
from kubeshield.kube._watch import WatchEvent, WatchState
from kubeshield.kube.resources import EVENTS, SERVICE_ACCOUNTS, Resource

__all__ = ["KubeClient", "Watch"]

JsonObject = dict[str, Any]
PatchType = _wire.PatchType


class KubeClient:
    """A synchronous client for one API server and one identity.

    Build it with ``KubeClient.from_kubeconfig(path=None, context=None)`` or ``KubeClient.in_cluster()``.
    ``namespace=None`` on a namespaced call means the context's namespace (as kubectl does); list and
    watch take ``all_namespaces=True`` for every namespace.
    """

    def __init__(
        self,
        connection: _connect.Connection,
        *,
        timeout: float = 30.0,
        transport: httpx2.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._conn = connection
        self._timeout = timeout
        self._sleep = sleep
        self._rng = rng
        self._resolver = Resolver(connection.namespace)
        self._http = httpx2.Client(
            base_url=connection.base_url,
            verify=connection.verify,
            auth=connection.auth,
            timeout=httpx2.Timeout(timeout),
            headers={"User-Agent": USER_AGENT},
            transport=transport,
            trust_env=False,
        )

    @classmethod
    def from_kubeconfig(
        cls, path: str | os.PathLike[str] | None = None, context: str | None = None, **kwargs: Any
    ) -> KubeClient:
        return cls(_connect.from_kubeconfig(path, context), **kwargs)

    @classmethod
    def in_cluster(
        cls, service_account_dir: str | os.PathLike[str] = _connect.SERVICE_ACCOUNT_DIR, **kwargs: Any
    ) -> KubeClient:
        return cls(_connect.in_cluster(service_account_dir), **kwargs)

    @property
    def namespace(self) -> str:
        """The namespace calls use when none is given (the context's)."""
        return self._conn.namespace

    @property
    def server(self) -> str:
        return self._conn.base_url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KubeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ----------------------------------------------------------------------------------

    def _send(self, req: _wire.Request) -> JsonObject:
        with transport_errors(req.target):
            resp = self._http.request(
                req.method, req.path, params=list(req.params), headers=list(req.headers), content=req.body
            )
        return _wire.decode(
            resp.status_code, resp.content, req.target, retry_after=resp.headers.get("Retry-After")
        )

    # --- types -------------------------------------------------------------------------------------

    def register(self, *resources: Resource) -> None:
        """Make ``create(obj)``/``apply(obj)`` recognise these kinds by the object's apiVersion/kind."""
        self._resolver.register(*resources)

    def discover(self, api_version: str, kind: str) -> Resource:
        """Ask the server which resource serves ``kind`` (its plural and scope), and register it."""
        found = self._resolver.lookup(api_version, kind)
        if found is not None:
            return found
        probe = Resource.custom(api_version, kind)
        answer = self._send(_wire.Request("GET", discovery_path(api_version), _wire.Target(probe)))
        resource = resource_from_discovery(api_version, kind, answer)
        self._resolver.register(resource)
        return resource

    # --- reads -------------------------------------------------------------------------------------

    def get(self, resource: Resource, name: str, *, namespace: str | None = None) -> JsonObject:
        return self._send(_wire.get(resource, name, self._resolver.namespace(resource, namespace)))

    def list_page(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        all_namespaces: bool = False,
        labels: _wire.LabelSelector | None = None,
        fields: _wire.FieldSelector | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> ObjectList:
        """One page of a list (``limit`` objects at most); follow ``continue_token`` for the next."""
        ns = None if all_namespaces else self._resolver.namespace(resource, namespace)
        req = _wire.list_(
            resource, ns, labels=labels, fields=fields, limit=limit, continue_token=continue_token
        )
        return as_list(resource, self._send(req))

    def list(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        all_namespaces: bool = False,
        labels: _wire.LabelSelector | None = None,
        fields: _wire.FieldSelector | None = None,
        page_size: int | None = 500,
    ) -> ObjectList:
        """Every matching object, fetched in pages of ``page_size``. If a continue token expires (410)
        midway, the list starts over once, as client-go's pager does."""
        for attempt in (1, 2):
            items: list[JsonObject] = []
            token: str | None = None
            first_rv = ""
            try:
                while True:
                    page = self.list_page(
                        resource,
                        namespace=namespace,
                        all_namespaces=all_namespaces,
                        labels=labels,
                        fields=fields,
                        limit=page_size,
                        continue_token=token,
                    )
                    items.extend(page.items)
                    if token is None:
                        first_rv = page.resource_version
                    token = page.continue_token
                    if not token:
                        return ObjectList(items=items, resource_version=first_rv)
            except KubeGone:
                if attempt == 2 or token is None:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def watch(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        all_namespaces: bool = False,
        labels: _wire.LabelSelector | None = None,
        fields: _wire.FieldSelector | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 290,
        max_failures: int = 8,
    ) -> Watch:
        """Events for matching objects, for as long as the caller iterates (``Watch.close()`` stops it).

        Without ``resource_version`` it lists first and yields the current objects as synthetic ADDED
        events (informer semantics). Dropped connections resume from the last resourceVersion; 410
        Gone re-lists and yields the difference; ``max_failures`` consecutive connection failures raise
        ``KubeUnavailable``."""
        ns = None if all_namespaces else self._resolver.namespace(resource, namespace)
        return Watch(
            self,
            resource,
            ns,
            labels=labels,
            fields=fields,
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
            max_failures=max_failures,
        )

    # --- writes ------------------------------------------------------------------------------------

    def create(
        self,
        obj: Mapping[str, Any],
        *,
        resource: Resource | None = None,
        namespace: str | None = None,
        field_manager: str | None = None,
        dry_run: bool = False,
    ) -> JsonObject:
        res = self._resolver.of(obj, resource)
        ns = self._resolver.namespace(res, namespace, obj)
        return self._send(_wire.create(res, ns, obj, field_manager=field_manager, dry_run=dry_run))

    def replace(
        self,
        obj: Mapping[str, Any],
        *,
        resource: Resource | None = None,
        namespace: str | None = None,
        field_manager: str | None = None,
        dry_run: bool = False,
    ) -> JsonObject:
        """PUT the whole object. Its ``metadata.resourceVersion`` makes it conditional: a stale copy
        raises ``KubeConflict`` (use ``update`` to re-read and retry)."""
        res = self._resolver.of(obj, resource)
        ns = self._resolver.namespace(res, namespace, obj)
        return self._send(
            _wire.replace(res, name_of(obj), ns, obj, field_manager=field_manager, dry_run=dry_run)
        )

    def replace_status(
        self, obj: Mapping[str, Any], *, resource: Resource | None = None, namespace: str | None = None
    ) -> JsonObject:
        """PUT the status subresource: only ``status`` changes; spec and metadata are ignored by the API."""
        res = self._resolver.of(obj, resource)
        ns = self._resolver.namespace(res, namespace, obj)
        return self._send(
            _wire.replace(res, name_of(obj), ns, obj, field_manager=None, dry_run=False, subresource="status")
        )

    def patch(
        self,
        resource: Resource,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        patch_type: _wire.PatchType = _wire.PatchType.MERGE,
        field_manager: str | None = None,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> JsonObject:
        """Merge (default), strategic-merge or JSON patch (a list of operations)."""
        if patch_type is _wire.PatchType.APPLY:
            raise ValueError("use apply() for server-side apply")
        ns = self._resolver.namespace(resource, namespace)
        return self._send(
            _wire.patch(
                resource,
                name,
                ns,
                patch,
                patch_type=patch_type,
                field_manager=field_manager,
                force=False,
                dry_run=dry_run,
                subresource=subresource,
            )
        )

    def patch_status(
        self,
        resource: Resource,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        patch_type: _wire.PatchType = _wire.PatchType.MERGE,
    ) -> JsonObject:
        return self.patch(
            resource, name, patch, namespace=namespace, patch_type=patch_type, subresource="status"
        )

    def apply(
        self,
        obj: Mapping[str, Any],
        *,
        field_manager: str,
        force: bool = False,
        resource: Resource | None = None,
        namespace: str | None = None,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> JsonObject:
        """Server-side apply ``obj`` (the fields this manager owns) as ``field_manager``; ``force`` takes
        over fields another manager owns instead of raising ``KubeConflict``."""
        res = self._resolver.of(obj, resource)
        ns = self._resolver.namespace(res, namespace, obj)
        return self._send(
            _wire.patch(
                res,
                name_of(obj),
                ns,
                obj,
                patch_type=_wire.PatchType.APPLY,
                field_manager=field_manager,
                force=force,
                dry_run=dry_run,
                subresource=subresource,
            )
        )

    def delete(
        self,
        resource: Resource,
        name: str,
        *,
        namespace: str | None = None,
        propagation: str | None = "Background",
        grace_period: int | None = None,
        uid: str | None = None,
        resource_version: str | None = None,
        dry_run: bool = False,
    ) -> JsonObject:
        """Delete; ``uid``/``resource_version`` are preconditions (``KubeConflict`` when they no longer
        hold). Returns what the API answers (the object, or a Status)."""
        ns = self._resolver.namespace(resource, namespace)
        return self._send(
            _wire.delete(
                resource,
                name,
                ns,
                propagation=propagation,
                grace_period=grace_period,
                uid=uid,
                resource_version=resource_version,
                dry_run=dry_run,
            )
        )

    def update(
        self,
        resource: Resource,
        name: str,
        mutate: Callable[[JsonObject], JsonObject | None],
        *,
        namespace: str | None = None,
        status: bool = False,
        attempts: int = 5,
    ) -> JsonObject:
        """Read, ``mutate`` (return the new object, or None for no change) and write back; on 409 Conflict
        re-read and re-apply, with backoff, up to ``attempts`` times."""

        def once() -> JsonObject:
            current = self.get(resource, name, namespace=namespace)
            wanted = mutate(current)
            if wanted is None:
                return current
            if status:
                return self.replace_status(wanted, resource=resource, namespace=namespace)
            return self.replace(wanted, resource=resource, namespace=namespace)

        return retry_on_conflict(once, attempts=attempts, sleep=self._sleep, rng=self._rng)

    # --- events and reviews --------------------------------------------------------------------------

    def emit_event(
        self,
        involved: Mapping[str, Any],
        *,
        reason: str,
        message: str,
        type: str = "Normal",
        component: str = "kubeshield",
        action: str | None = None,
    ) -> JsonObject:
        """Record a core/v1 Event about ``involved``. The message is shown to anyone who can read events:
        never put secret data in it."""
        namespace, event = _reviews.event_body(
            involved, reason=reason, message=message, type_=type, component=component, action=action
        )
        return self.create(event, resource=EVENTS, namespace=namespace)

    def token_review(self, token: str, audiences: Sequence[str] = ()) -> _reviews.TokenReview:
        """Ask the API who ``token`` belongs to (TokenReview). Not authenticated is a result, not an error."""
        body = _reviews.token_review_body(token, audiences)
        answer = self._send(
            _wire.create(_reviews.TOKEN_REVIEWS, None, body, field_manager=None, dry_run=False)
        )
        return _reviews.parse_token_review(answer)

    def subject_access_review(
        self,
        *,
        user: str,
        verb: str,
        groups: Sequence[str] = (),
        uid: str | None = None,
        extra: Mapping[str, Sequence[str]] | None = None,
        resource: str | None = None,
        group: str = "",
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
        non_resource_path: str | None = None,
    ) -> _reviews.AccessReview:
        """May ``user`` (with ``groups``) do ``verb`` on ``resource`` (SubjectAccessReview)?"""
        body = _reviews.access_review_body(
            user=user,
            groups=groups,
            uid=uid,
            extra=extra,
            verb=verb,
            resource=resource,
            group=group,
            namespace=namespace,
            name=name,
            subresource=subresource,
            non_resource_path=non_resource_path,
        )
        answer = self._send(
            _wire.create(_reviews.ACCESS_REVIEWS, None, body, field_manager=None, dry_run=False)
        )
        return _reviews.parse_access_review(answer)

    def create_token(
        self,
        service_account: str,
        *,
        namespace: str | None = None,
        audiences: Sequence[str] = (),
        expiration_seconds: int = 3600,
        bound_pod: tuple[str, str] | None = None,
    ) -> tuple[str, str]:
        """TokenRequest: a ServiceAccount token for ``audiences``, optionally bound to a pod
        ``(name, uid)``. Returns ``(token, expirationTimestamp)``."""
        body = _reviews.token_request_body(audiences, expiration_seconds, bound_pod)
        ns = self._resolver.namespace(SERVICE_ACCOUNTS, namespace)
        answer = self._send(
            _wire.create(
                SERVICE_ACCOUNTS,
                ns,
                body,
                field_manager=None,
                dry_run=False,
                subresource_of=service_account,
                subresource="token",
            )
        )
        return _reviews.parse_token_request(answer)


class Watch(Iterator[WatchEvent]):
    """An iterator of ``WatchEvent`` that survives drops and 410 Gone (see ``_watch``).

    ``resource_version`` is the last version seen (an event's or a bookmark's); ``relists`` counts the
    re-lists a 410 forced. ``close()`` may be called from another thread to end the iteration."""

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        namespace: str | None,
        *,
        labels: _wire.LabelSelector | None,
        fields: _wire.FieldSelector | None,
        resource_version: str | None,
        timeout_seconds: int,
        max_failures: int,
    ) -> None:
        self._client = client
        self._resource = resource
        self._namespace = namespace
        self._labels = labels
        self._fields = fields
        self._timeout_seconds = timeout_seconds
        self._max_failures = max_failures
        self._state = WatchState(resource_version)
        self._closed = threading.Event()
        self._response: httpx2.Response | None = None
        self._lock = threading.Lock()
        self._events = self._run(listed=resource_version is not None)

    @property
    def resource_version(self) -> str | None:
        return self._state.resource_version

    @property
    def relists(self) -> int:
        return self._state.relists

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> WatchEvent:
        return next(self._events)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            response = self._response
        if response is not None:
            # a read blocked in another thread only wakes up when its socket is shut down
            stream = response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(httpx2.HTTPError, OSError, RuntimeError):
                response.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _list(self, *, initial: bool) -> list[WatchEvent]:
        listing = self._client.list(
            self._resource,
            namespace=self._namespace,
            all_namespaces=self._namespace is None,
            labels=self._labels,
            fields=self._fields,
        )
        return self._state.on_list(listing.items, listing.resource_version, initial=initial)

    def _run(self, *, listed: bool) -> Iterator[WatchEvent]:
        if not listed:
            yield from self._list(initial=True)
        failures = 0
        delays = backoff_delays(self._max_failures + 1, base=0.1, cap=5.0, rng=self._client._rng)
        while not self._closed.is_set():
            if self._state.resource_version is None:
                yield from self._list(initial=False)
                continue
            req = _wire.watch(
                self._resource,
                self._namespace,
                resource_version=self._state.resource_version,
                labels=self._labels,
                fields=self._fields,
                timeout_seconds=self._timeout_seconds,
            )
            try:
                with contextlib.closing(self._stream(req)) as stream:
                    for kind, obj in stream:
                        failures = 0
                        event = self._state.on_event(kind, obj)
                        if event is not None:
                            yield event
            except KubeGone:
                self._state.expired()
            except KubeUnavailable:
                if self._closed.is_set():
                    return
                failures += 1
                delay = next(delays, None)
                if failures > self._max_failures or delay is None:
                    raise
                self._client._sleep(delay)
            else:
                delays = backoff_delays(self._max_failures + 1, base=0.1, cap=5.0, rng=self._client._rng)

    def _stream(self, req: _wire.Request) -> Generator[tuple[str, JsonObject], None, None]:
        http = self._client._http
        timeout = httpx2.Timeout(self._client._timeout, read=self._timeout_seconds + 30)
        with transport_errors(req.target):
            request = http.build_request(
                req.method, req.path, params=list(req.params), headers=list(req.headers), timeout=timeout
            )
            response = http.send(request, stream=True)
        with self._lock:
            self._response = response
        try:
            if response.status_code != 200:
                with transport_errors(req.target):
                    content = response.read()
                _wire.decode(response.status_code, content, req.target)
            with transport_errors(req.target):
                for line in response.iter_lines():
                    if self._closed.is_set():
                        return
                    if line:
                        yield _wire.watch_line(line, req.target)
        finally:
            with self._lock:
                self._response = None
            response.close()
