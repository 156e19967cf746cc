"""``AsyncKubeClient``: the asyncio twin of ``KubeClient`` (for controllers and servers).

Same methods, same arguments, same errors, same watch semantics; every call is a coroutine and
``watch`` returns an async iterator. Requests and answers are built and read by the same I/O-free code
(``_wire``, ``_reviews``, ``_watch``) as the synchronous client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
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
from kubeshield.kube._retry import aretry_on_conflict, backoff_delays
from kubeshield.kube._watch import WatchEvent, WatchState
from kubeshield.kube.resources import EVENTS, SERVICE_ACCOUNTS, Resource

__all__ = ["AsyncKubeClient", "AsyncWatch"]

JsonObject = dict[str, Any]


class AsyncKubeClient:
    """See ``KubeClient``; this one is used with ``await`` and ``async for``."""

    def __init__(
        self,
        connection: _connect.Connection,
        *,
        timeout: float = 30.0,
        transport: httpx2.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._conn = connection
        self._timeout = timeout
        self._sleep = sleep
        self._rng = rng
        self._resolver = Resolver(connection.namespace)
        self._http = httpx2.AsyncClient(
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
    ) -> AsyncKubeClient:
        return cls(_connect.from_kubeconfig(path, context), **kwargs)

    @classmethod
    def in_cluster(
        cls, service_account_dir: str | os.PathLike[str] = _connect.SERVICE_ACCOUNT_DIR, **kwargs: Any
    ) -> AsyncKubeClient:
        return cls(_connect.in_cluster(service_account_dir), **kwargs)

    @property
    def namespace(self) -> str:
        return self._conn.namespace

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncKubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _send(self, req: _wire.Request) -> JsonObject:
        with transport_errors(req.target):
            resp = await self._http.request(
                req.method, req.path, params=list(req.params), headers=list(req.headers), content=req.body
            )
        return _wire.decode(
            resp.status_code, resp.content, req.target, retry_after=resp.headers.get("Retry-After")
        )

    def register(self, *resources: Resource) -> None:
        self._resolver.register(*resources)

    async def discover(self, api_version: str, kind: str) -> Resource:
        found = self._resolver.lookup(api_version, kind)
        if found is not None:
            return found
        probe = Resource.custom(api_version, kind)
        answer = await self._send(_wire.Request("GET", discovery_path(api_version), _wire.Target(probe)))
        resource = resource_from_discovery(api_version, kind, answer)
        self._resolver.register(resource)
        return resource

    async def get(self, resource: Resource, name: str, *, namespace: str | None = None) -> JsonObject:
        return await self._send(_wire.get(resource, name, self._resolver.namespace(resource, namespace)))

    async def list_page(
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
        ns = None if all_namespaces else self._resolver.namespace(resource, namespace)
        req = _wire.list_(
            resource, ns, labels=labels, fields=fields, limit=limit, continue_token=continue_token
        )
        return as_list(resource, await self._send(req))

    async def list(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        all_namespaces: bool = False,
        labels: _wire.LabelSelector | None = None,
        fields: _wire.FieldSelector | None = None,
        page_size: int | None = 500,
    ) -> ObjectList:
        for attempt in (1, 2):
            items: list[JsonObject] = []
            token: str | None = None
            first_rv = ""
            try:
                while True:
                    page = await self.list_page(
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
    ) -> AsyncWatch:
        ns = None if all_namespaces else self._resolver.namespace(resource, namespace)
        return AsyncWatch(
            self,
            resource,
            ns,
            labels=labels,
            fields=fields,
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
            max_failures=max_failures,
        )

    async def create(
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
        return await self._send(_wire.create(res, ns, obj, field_manager=field_manager, dry_run=dry_run))

    async def replace(
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
        return await self._send(
            _wire.replace(res, name_of(obj), ns, obj, field_manager=field_manager, dry_run=dry_run)
        )

    async def replace_status(
        self, obj: Mapping[str, Any], *, resource: Resource | None = None, namespace: str | None = None
    ) -> JsonObject:
        res = self._resolver.of(obj, resource)
        ns = self._resolver.namespace(res, namespace, obj)
        return await self._send(
            _wire.replace(res, name_of(obj), ns, obj, field_manager=None, dry_run=False, subresource="status")
        )

    async def patch(
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
        if patch_type is _wire.PatchType.APPLY:
            raise ValueError("use apply() for server-side apply")
        ns = self._resolver.namespace(resource, namespace)
        return await self._send(
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

    async def patch_status(
        self,
        resource: Resource,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        patch_type: _wire.PatchType = _wire.PatchType.MERGE,
    ) -> JsonObject:
        return await self.patch(
            resource, name, patch, namespace=namespace, patch_type=patch_type, subresource="status"
        )

    async def apply(
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
        res = self._resolver.of(obj, resource)
        ns = self._resolver.namespace(res, namespace, obj)
        return await self._send(
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

    async def delete(
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
        ns = self._resolver.namespace(resource, namespace)
        return await self._send(
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

    async def update(
        self,
        resource: Resource,
        name: str,
        mutate: Callable[[JsonObject], JsonObject | None],
        *,
        namespace: str | None = None,
        status: bool = False,
        attempts: int = 5,
    ) -> JsonObject:
        async def once() -> JsonObject:
            current = await self.get(resource, name, namespace=namespace)
            wanted = mutate(current)
            if wanted is None:
                return current
            if status:
                return await self.replace_status(wanted, resource=resource, namespace=namespace)
            return await self.replace(wanted, resource=resource, namespace=namespace)

        return await aretry_on_conflict(once, attempts=attempts, sleep=self._sleep, rng=self._rng)

    async def emit_event(
        self,
        involved: Mapping[str, Any],
        *,
        reason: str,
        message: str,
        type: str = "Normal",
        component: str = "kubeshield",
        action: str | None = None,
    ) -> JsonObject:
        namespace, event = _reviews.event_body(
            involved, reason=reason, message=message, type_=type, component=component, action=action
        )
        return await self.create(event, resource=EVENTS, namespace=namespace)

    async def token_review(self, token: str, audiences: Sequence[str] = ()) -> _reviews.TokenReview:
        body = _reviews.token_review_body(token, audiences)
        answer = await self._send(
            _wire.create(_reviews.TOKEN_REVIEWS, None, body, field_manager=None, dry_run=False)
        )
        return _reviews.parse_token_review(answer)

    async def subject_access_review(
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
        answer = await self._send(
            _wire.create(_reviews.ACCESS_REVIEWS, None, body, field_manager=None, dry_run=False)
        )
        return _reviews.parse_access_review(answer)

    async def create_token(
        self,
        service_account: str,
        *,
        namespace: str | None = None,
        audiences: Sequence[str] = (),
        expiration_seconds: int = 3600,
        bound_pod: tuple[str, str] | None = None,
    ) -> tuple[str, str]:
        body = _reviews.token_request_body(audiences, expiration_seconds, bound_pod)
        ns = self._resolver.namespace(SERVICE_ACCOUNTS, namespace)
        answer = await self._send(
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


class AsyncWatch(AsyncIterator[WatchEvent]):
    """The async ``Watch``: ``async for event in client.watch(...)``; ``await w.aclose()`` ends it."""

    def __init__(
        self,
        client: AsyncKubeClient,
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
        self._closed = False
        self._events: AsyncGenerator[WatchEvent, None] = self._run(listed=resource_version is not None)

    @property
    def resource_version(self) -> str | None:
        return self._state.resource_version

    @property
    def relists(self) -> int:
        return self._state.relists

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __anext__(self) -> WatchEvent:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        self._closed = True
        await self._events.aclose()

    async def _list(self, *, initial: bool) -> list[WatchEvent]:
        listing = await self._client.list(
            self._resource,
            namespace=self._namespace,
            all_namespaces=self._namespace is None,
            labels=self._labels,
            fields=self._fields,
        )
        return self._state.on_list(listing.items, listing.resource_version, initial=initial)

    async def _run(self, *, listed: bool) -> AsyncGenerator[WatchEvent, None]:
        if not listed:
            for listed_event in await self._list(initial=True):
                yield listed_event
        failures = 0
        delays = backoff_delays(self._max_failures + 1, base=0.1, cap=5.0, rng=self._client._rng)
        while not self._closed:
            if self._state.resource_version is None:
                for relisted in await self._list(initial=False):
                    yield relisted
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
                async with contextlib.aclosing(self._stream(req)) as stream:
                    async for kind, obj in stream:
                        failures = 0
                        event = self._state.on_event(kind, obj)
                        if event is not None:
                            yield event
            except KubeGone:
                self._state.expired()
            except KubeUnavailable:
                failures += 1
                delay = next(delays, None)
                if failures > self._max_failures or delay is None:
                    raise
                await self._client._sleep(delay)
            else:
                delays = backoff_delays(self._max_failures + 1, base=0.1, cap=5.0, rng=self._client._rng)

    async def _stream(self, req: _wire.Request) -> AsyncGenerator[tuple[str, JsonObject], None]:
        http = self._client._http
        timeout = httpx2.Timeout(self._client._timeout, read=self._timeout_seconds + 30)
        with transport_errors(req.target):
            request = http.build_request(
                req.method, req.path, params=list(req.params), headers=list(req.headers), timeout=timeout
            )
            response = await http.send(request, stream=True)
        try:
            if response.status_code != 200:
                with transport_errors(req.target):
                    content = await response.aread()
                _wire.decode(response.status_code, content, req.target)
            with transport_errors(req.target):
                async for line in response.aiter_lines():
                    if line:
                        yield _wire.watch_line(line, req.target)
        finally:
            await response.aclose()
