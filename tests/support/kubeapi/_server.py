"""``KubeAPI``: a stateful Kubernetes API server on 127.0.0.1 over HTTPS, for tests.

    api = KubeAPI(tmp_path).start()
    api.url, api.ca_path, api.admin_kubeconfig           # where it is, whom to trust, a cluster-admin
    api.kubeconfig(tmp_path / "kc", user="alice", groups=("dev",))       # client certificate
    api.kubeconfig(tmp_path / "kt", token=api.add_token("bob"))          # static bearer token
    token = api.mint_sa_token("ns", "app", audiences=["kubeshield"], pod=("p", uid))
    api.store.put({...}); api.store.objects("", "secrets")             # arrange and inspect state
    api.deny(user="mallory", resource="secrets")                       # authorization deny-list
    api.trust_client_ca(relay_ca_pem)                                 # a second client CA
    api.drop_watches(); api.compact(); api.bookmark()                   # watch failure modes
    api.stop()

Authentication: client certificates signed by its CA (CN = user, O = groups), static bearer tokens, and
ServiceAccount JWTs it signs itself (also answered by TokenReview). Authorization: every authenticated
user may do everything, except what the deny-list or a ``policy`` function refuses; SubjectAccessReview
answers from the same decision. Impersonation headers are honoured for users allowed to impersonate.

Extension point: ``register_subresource(plural, name, handler)`` serves ``<object>/<name>`` with an
aiohttp handler that receives a ``SubresourceContext``; ``api.pods`` (``_streams.PodRuntime``) serves
pods/exec, attach and portforward that way, for real, over WebSocket and SPDY.

Not a kube-apiserver (none can be installed here): no admission chain, no defaulting beyond a few
fields, no schema validation (``fieldValidation`` is accepted, not enforced), no protobuf.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import socket
import ssl
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from kubeshield.envelope.objects import ObjectDecodeError, decode_object, to_manifest
from tests.support.kubeapi import _discovery, _protobuf
from tests.support.kubeapi._auth import (
    Attributes,
    Decision,
    TokenAuthority,
    User,
    allow_all,
    forbidden_status,
    user_from_peercert,
)
from tests.support.kubeapi._pki import Authority, Credential
from tests.support.kubeapi._selectors import parse_field_selector, parse_label_selector
from tests.support.kubeapi._status import (
    ApiStatus,
    bad_request,
    method_not_allowed,
    not_found_path,
    unauthorized,
)
from tests.support.kubeapi._store import Event, Store, Watcher
from tests.support.kubeapi._streams import PodRuntime
from tests.support.kubeapi._types import ResourceType

__all__ = ["KubeAPI", "RequestRecord", "SubresourceContext"]

Obj = dict[str, Any]
_PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
    "application/apply-patch+cbor": "apply-cbor",
}
_HEALTH = {"/healthz", "/livez", "/readyz"}


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: str
    user: str
    content_type: str
    accept: str
    user_agent: str


@dataclass(frozen=True)
class SubresourceContext:
    api: KubeAPI
    user: User
    rtype: ResourceType
    namespace: str | None
    name: str
    subpath: tuple[str, ...]


SubresourceHandler = Callable[[web.Request, SubresourceContext], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class _Deny:
    user: str | None
    group: str | None
    verb: str | None
    resource: str | None
    namespace: str | None
    name: str | None

    def matches(self, a: Attributes) -> bool:
        return (
            (self.user is None or self.user == a.user)
            and (self.group is None or self.group in a.groups)
            and (self.verb is None or self.verb == a.verb)
            and (self.resource is None or self.resource in (a.resource, f"{a.resource}/{a.subresource}"))
            and (self.namespace is None or self.namespace == a.namespace)
            and (self.name is None or self.name == a.name)
        )


def _json(obj: Any, status: int = 200, content_type: str = "application/json") -> web.Response:
    return web.Response(body=json.dumps(obj).encode(), status=status, headers={"Content-Type": content_type})


class KubeAPI:
    def __init__(
        self,
        directory: Path,
        *,
        history: int = 1000,
        bookmark_interval: float | None = 5.0,
        gone_as_http: bool = False,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.store = Store(history=history, clock=clock)
        self.tokens = TokenAuthority(clock=clock)
        self.policy: Callable[[Attributes], Decision] = allow_all
        self.bookmark_interval = bookmark_interval
        self.gone_as_http = gone_as_http
        self.requests: deque[RequestRecord] = deque(maxlen=5000)
        self._clock = clock
        self._static_tokens: dict[str, User] = {}
        self._denies: list[_Deny] = []
        self._subresources: dict[tuple[str, str], tuple[SubresourceHandler, tuple[str, ...], str]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._watches: dict[asyncio.Transport, asyncio.Queue[Event | None]] = {}
        self._pki: Authority | None = None
        self._tls: ssl.SSLContext | None = None
        self._client_cas: list[bytes] = []
        self._sock: socket.socket | None = None
        self._hold = threading.Event()
        self._held = 0  # watch requests waiting in hold_watches()
        self._connections: weakref.WeakSet[asyncio.Transport] = weakref.WeakSet()
        self.url = ""
        self.port = 0
        self.pods = PodRuntime(self)  # pods/exec, attach, portforward (see _streams)

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> KubeAPI:
        self._pki = Authority(self.directory / "pki")
        serving = self._pki.issue("apiserver", "kube-apiserver", server=True)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(serving.cert, serving.key)
        ctx.load_verify_locations(cafile=str(self._pki.path))
        for pem in self._client_cas:
            ctx.load_verify_locations(cadata=pem.decode("ascii"))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        self._tls = ctx
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._sock = sock
        self.url = f"https://127.0.0.1:{self.port}"
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                app = web.Application(client_max_size=16 * 1024 * 1024)
                app.router.add_route("*", "/{tail:.*}", self._handle)
                # handler_cancellation: a watch whose client went away ends, as in the apiserver
                self._runner = web.AppRunner(
                    app,
                    handle_signals=False,
                    access_log=None,
                    handler_cancellation=True,
                    shutdown_timeout=2.0,
                )
                loop.run_until_complete(self._runner.setup())
                site = web.SockSite(self._runner, sock, ssl_context=ctx)
                loop.run_until_complete(site.start())
            except BaseException as exc:  # pragma: no cover - reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="kubeapi-standin", daemon=True)
        self._thread.start()
        if not ready.wait(30) or failure:
            raise RuntimeError(f"the Kubernetes API stand-in did not start: {failure}")
        self.admin = self.mint_client_cert("kubernetes-admin", ("system:masters",))
        self.admin_kubeconfig = self.kubeconfig(self.directory / "admin.kubeconfig", credential=self.admin)
        return self

    def stop(self) -> None:
        loop, runner = self._loop, self._runner
        if loop is None or runner is None:
            return
        self.drop_watches()

        async def shutdown() -> None:
            await self.pods.aclose()
            await runner.cleanup()
            for transport in list(self._connections):  # keep-alive connections cleanup left open
                transport.abort()
            await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(30)
        if self._sock is not None:
            self._sock.close()
        self._loop = self._runner = None

    def __enter__(self) -> KubeAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def ca_path(self) -> Path:
        assert self._pki is not None, "start() first"
        return self._pki.path

    # --- identities --------------------------------------------------------------------------------

    def trust_client_ca(self, pem: bytes) -> None:
        """Also accept client certificates signed by ``pem`` (kube-apiserver's ``--client-ca-file``
        holding a second CA, such as the kubeshield login relay's). Works before and after start()."""
        self._client_cas.append(pem)
        if self._tls is not None:
            self._tls.load_verify_locations(cadata=pem.decode("ascii"))

    def mint_client_cert(
        self, user: str, groups: Sequence[str] = (), *, stem: str | None = None
    ) -> Credential:
        assert self._pki is not None, "start() first"
        safe = stem or "client-" + "".join(c if c.isalnum() else "-" for c in user)
        return self._pki.issue(safe, user, organizations=tuple(groups))

    def add_token(self, user: str, groups: Sequence[str] = (), *, token: str | None = None) -> str:
        """A static bearer token for ``user`` (made here when not given)."""
        import secrets

        value = token or secrets.token_urlsafe(32)
        self._static_tokens[value] = User(user, (*groups, "system:authenticated"))
        return value

    def mint_sa_token(
        self,
        namespace: str,
        service_account: str,
        *,
        audiences: Sequence[str] = (),
        pod: tuple[str, str] | None = None,
        expiration_seconds: int = 3600,
        signing_key: Any = None,
        issued_at: dt.datetime | None = None,
    ) -> str:
        """A ServiceAccount JWT as TokenRequest makes it; the ServiceAccount is created when missing."""
        sa = self._ensure_service_account(namespace, service_account)
        token, _ = self.tokens.mint(
            namespace=namespace,
            service_account=service_account,
            sa_uid=sa["metadata"]["uid"],
            audiences=audiences,
            expiration_seconds=expiration_seconds,
            pod=pod,
            signing_key=signing_key,
            issued_at=issued_at,
        )
        return token

    def _ensure_service_account(self, namespace: str, name: str) -> Obj:
        rtype = self.store.type_of("", "v1", "serviceaccounts")
        with self.store.lock:
            try:
                return self.store.get(rtype, namespace, name)
            except ApiStatus:
                return self.store.create(rtype, namespace, {"metadata": {"name": name}})

    def kubeconfig(
        self,
        path: Path,
        *,
        credential: Credential | None = None,
        user: str | None = None,
        groups: Sequence[str] = (),
        token: str | None = None,
        namespace: str | None = None,
        embed: bool = False,
    ) -> Path:
        """Write a kubeconfig for a client certificate (given, or minted for ``user``/``groups``) or a
        bearer ``token``. ``embed`` puts the certificate and key inline (``*-data``)."""
        import base64

        if credential is None and token is None:
            if user is None:
                raise ValueError("give a credential, a user or a token")
            credential = self.mint_client_cert(user, groups)
        entry: Obj = {}
        if token is not None:
            entry["token"] = token
        elif credential is not None and embed:
            entry["client-certificate-data"] = base64.b64encode(credential.cert.read_bytes()).decode()
            entry["client-key-data"] = base64.b64encode(credential.key.read_bytes()).decode()
        elif credential is not None:
            entry["client-certificate"] = str(credential.cert)
            entry["client-key"] = str(credential.key)
        context: Obj = {"cluster": "standin", "user": "me"}
        if namespace:
            context["namespace"] = namespace
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "standin",
                    "cluster": {"server": self.url, "certificate-authority": str(self.ca_path)},
                }
            ],
            "users": [{"name": "me", "user": entry}],
            "contexts": [{"name": "standin", "context": context}],
            "current-context": "standin",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(doc))
        return path

    # --- authorization -----------------------------------------------------------------------------

    def deny(
        self,
        *,
        user: str | None = None,
        group: str | None = None,
        verb: str | None = None,
        resource: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
    ) -> None:
        """Refuse every request matching all the given attributes (None matches anything)."""
        self._denies.append(_Deny(user, group, verb, resource, namespace, name))

    def clear_denies(self) -> None:
        self._denies.clear()

    def authorize(self, attrs: Attributes) -> Decision:
        if "system:masters" in attrs.groups:
            return Decision(True, "system:masters")
        if any(d.matches(attrs) for d in self._denies):
            return Decision(False, "denied by the stand-in's deny-list")
        return self.policy(attrs)

    def register_subresource(
        self,
        plural: str,
        name: str,
        handler: SubresourceHandler,
        *,
        verbs: Sequence[str] = ("create", "get"),
        kind: str = "",
    ) -> None:
        """Serve ``.../<plural>/<object>/<name>[/...]`` with ``handler`` (after authentication and
        authorization); it is also listed in discovery."""
        self._subresources[(plural, name)] = (handler, tuple(verbs), kind or name.capitalize())

    def unregister_subresource(self, plural: str, name: str) -> None:
        self._subresources.pop((plural, name), None)

    def _extra_subresources(self, plural: str) -> list[tuple[str, tuple[str, ...], str]]:
        out = list(_discovery.SUBRESOURCES.get(plural, []))
        out += [
            (sub, verbs, kind) for (p, sub), (_, verbs, kind) in self._subresources.items() if p == plural
        ]
        return out

    # --- failure modes -----------------------------------------------------------------------------

    def drop_watches(self) -> int:
        """Abort every open watch connection (as a load balancer or a restarting apiserver would)."""
        loop = self._loop
        if loop is None:
            return 0
        watches = list(self._watches.items())
        for transport, pending in watches:
            loop.call_soon_threadsafe(pending.put_nowait, None)  # wakes the handler: it ends at once
            loop.call_soon_threadsafe(transport.abort)
        return len(watches)

    @contextlib.contextmanager
    def hold_watches(self) -> Iterator[None]:
        """Within this block, new watch requests wait (unanswered) until it ends: arrange a window
        in which a dropped watch cannot reconnect, e.g. to compact the history under it."""
        self._hold.set()
        try:
            yield
        finally:
            self._hold.clear()

    def open_watches(self) -> int:
        return len(self._watches)

    def held_watches(self) -> int:
        """Watch requests received and waiting for a hold_watches() block to end."""
        return self._held

    def compact(self) -> None:
        self.store.compact()

    def bookmark(self) -> None:
        self.store.bookmark()

    # --- HTTP --------------------------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> User | None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            token = header[len("Bearer ") :].strip()
            user = self._static_tokens.get(token)
            if user is not None:
                return user
            found, _, _ = self.tokens.review(token, (), lookup=self._lookup)
            return found
        transport = request.transport
        ssl_obj = transport.get_extra_info("ssl_object") if transport else None
        peercert = ssl_obj.getpeercert() if ssl_obj is not None else None
        return user_from_peercert(peercert)

    def _lookup(self, plural: str, namespace: str, name: str) -> Obj | None:
        try:
            return self.store.get(self.store.type_of("", "v1", plural), namespace, name)
        except ApiStatus:
            return None

    def _impersonate(self, request: web.Request, user: User) -> User:
        target = request.headers.get("Impersonate-User")
        groups = request.headers.getall("Impersonate-Group", [])
        if not target and not groups:
            return user
        if not target:
            raise bad_request("requested impersonation of groups without impersonating a user")
        checks = [Attributes(user.name, user.groups, "impersonate", "", "users", name=target)]
        checks += [Attributes(user.name, user.groups, "impersonate", "", "groups", name=g) for g in groups]
        for attrs in checks:
            if not self.authorize(attrs).allowed:
                raise ApiStatus(
                    403,
                    "Forbidden",
                    f'{attrs.resource} "{attrs.name}" is forbidden: User "{user.name}" cannot '
                    f"impersonate resource "
                    f'"{attrs.resource}" in API group "" at the cluster scope',
                    {"name": attrs.name, "kind": attrs.resource},
                )
        extra = {
            k[len("Impersonate-Extra-") :].lower(): tuple(request.headers.getall(k))
            for k in request.headers
            if k.startswith("Impersonate-Extra-")
        }
        return User(
            target, (*groups, "system:authenticated"), request.headers.get("Impersonate-Uid", ""), extra
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        user_name = ""
        if request.transport is not None:
            self._connections.add(request.transport)
        try:
            if request.path in _HEALTH:
                return web.Response(text="ok")
            user = self._authenticate(request)
            if user is None:
                raise unauthorized()
            user = self._impersonate(request, user)
            user_name = user.name
            return await self._route(request, user)
        except ApiStatus as exc:
            return _json(exc.status, exc.code)
        finally:
            self.requests.append(
                RequestRecord(
                    request.method,
                    request.path,
                    request.query_string,
                    user_name,
                    request.headers.get("Content-Type", ""),
                    request.headers.get("Accept", ""),
                    request.headers.get("User-Agent", ""),
                )
            )

    def _nonresource(self, user: User, path: str) -> None:
        attrs = Attributes(user.name, user.groups, "get", path=path)
        decision = self.authorize(attrs)
        if not decision.allowed:
            raise ApiStatus(403, "Forbidden", f'forbidden: User "{user.name}" cannot get path "{path}"', {})

    async def _route(self, request: web.Request, user: User) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        parts = [p for p in path.split("/") if p]
        accept = request.headers.get("Accept", "")
        types = [t for t in self.store.types()]
        if path == "/version":
            self._nonresource(user, path)
            return _json(_discovery.version_info())
        if path == "/openapi/v3":
            self._nonresource(user, path)
            return _json(_discovery.openapi_root(types))
        if parts[:2] == ["openapi", "v3"]:
            self._nonresource(user, path)
            rest = parts[2:]
            group, version = (
                ("", rest[1])
                if rest[:1] == ["api"] and len(rest) == 2
                else ((rest[1], rest[2]) if rest[:1] == ["apis"] and len(rest) == 3 else ("", ""))
            )
            doc = _discovery.openapi_v3(group, version, types) if version else None
            if doc is None:
                raise not_found_path()
            return _json(doc)
        if not parts or parts[0] not in ("api", "apis"):
            raise not_found_path()
        if parts[0] == "api":
            if len(parts) == 1:
                self._nonresource(user, path)
                if "as=APIGroupDiscoveryList" in accept:
                    return _json(
                        _discovery.aggregated(types, legacy=True, extra=self._extra_subresources),
                        content_type=_discovery.AGGREGATED_TYPE,
                    )
                return _json(_discovery.api_versions(f"127.0.0.1:{self.port}"))
            group, version, rest = "", parts[1], parts[2:]
        else:
            if len(parts) == 1:
                self._nonresource(user, path)
                if "as=APIGroupDiscoveryList" in accept:
                    return _json(
                        _discovery.aggregated(types, legacy=False, extra=self._extra_subresources),
                        content_type=_discovery.AGGREGATED_TYPE,
                    )
                return _json(_discovery.api_group_list(types))
            if len(parts) == 2:
                self._nonresource(user, path)
                listing = _discovery.api_group_list(types)
                group_doc = next((g for g in listing["groups"] if g["name"] == parts[1]), None)
                if group_doc is None:
                    raise not_found_path()
                return _json({"kind": "APIGroup", "apiVersion": "v1", **group_doc})
            group, version, rest = parts[1], parts[2], parts[3:]
        if not rest:
            self._nonresource(user, path)
            doc = _discovery.api_resource_list(group, version, types, self._extra_subresources)
            if doc is None:
                raise not_found_path()
            return _json(doc)
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            inner = self.store.find_type(group, version, rest[2])
            if inner is not None and inner.namespaced:
                namespace, rest = rest[1], rest[2:]
        rtype = self.store.find_type(group, version, rest[0])
        if rtype is None:
            raise not_found_path()
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        subpath = tuple(rest[3:])
        if rtype.namespaced and namespace is None and name and request.method != "GET":
            raise not_found_path()
        return await self._resource(request, user, rtype, namespace, name, sub, subpath)

    def _verb(self, request: web.Request, name: str) -> str:
        method = request.method
        watch = request.query.get("watch") in ("true", "1")
        if method == "GET":
            return "watch" if watch else ("get" if name else "list")
        return {
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection",
        }.get(method, method.lower())

    async def _body(self, request: web.Request, *, yaml_ok: bool = False) -> Any:
        raw = await request.read()
        if not raw:
            raise bad_request("the request body is empty")
        if request.headers.get("Content-Type", "").startswith("application/vnd.kubernetes.protobuf"):
            # kubectl's typed clients (create secret/configmap/namespace/serviceaccount) send protobuf;
            # kubeshield's own decoder reads Secret and ConfigMap in full, other kinds' metadata
            try:
                return _protobuf.decode(raw) or to_manifest(decode_object(raw))
            except (ObjectDecodeError, ValueError, UnicodeDecodeError) as exc:
                raise bad_request(f"the protobuf body cannot be decoded: {exc}") from None
        try:
            return yaml.safe_load(raw) if yaml_ok else json.loads(raw)
        except (ValueError, yaml.YAMLError):
            raise bad_request(
                "the request body is not valid JSON" + (" or YAML" if yaml_ok else "")
            ) from None

    async def _resource(
        self,
        request: web.Request,
        user: User,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        sub: str,
        subpath: tuple[str, ...],
    ) -> web.StreamResponse:
        verb = self._verb(request, name)
        if rtype.namespaced and not name and namespace is None and verb not in ("list", "watch", "create"):
            raise not_found_path()
        attrs = Attributes(
            user.name, user.groups, verb, rtype.group, rtype.plural, sub, namespace or "", name
        )
        decision = self.authorize(attrs)
        if not decision.allowed:
            raise forbidden_status(
                attrs, decision.reason if decision.reason != "denied by the stand-in's deny-list" else ""
            )
        if verb not in rtype.verbs and not sub:
            raise method_not_allowed()
        query = request.query
        dry_run = query.get("dryRun") == "All"
        manager = query.get("fieldManager", "") or _manager_from_agent(request.headers.get("User-Agent", ""))
        if sub and (rtype.plural, sub) in self._subresources:
            handler = self._subresources[(rtype.plural, sub)][0]
            self.store.get(rtype, namespace, name)  # 404 before any upgrade
            return await handler(request, SubresourceContext(self, user, rtype, namespace, name, subpath))
        if rtype.plural in (
            "tokenreviews",
            "subjectaccessreviews",
            "selfsubjectaccessreviews",
            "localsubjectaccessreviews",
            "selfsubjectreviews",
        ):
            return _json(self._review(rtype, user, namespace, await self._body(request)), 201)
        if sub == "token" and rtype.plural == "serviceaccounts" and request.method == "POST":
            return _json(self._token_request(namespace or "", name, await self._body(request)), 201)
        if sub and sub != "status":
            raise not_found_path()
        if request.method == "GET":
            if not name:
                if verb == "watch":
                    return await self._watch(request, rtype, namespace)
                return self._list(request, rtype, namespace)
            return self._render(request, rtype, self.store.get(rtype, namespace, name))
        if request.method == "POST":
            if name:
                raise method_not_allowed()
            body = await self._body(request)
            obj = self.store.create(rtype, namespace, body, dry_run=dry_run, manager=manager)
            return _json(obj, 201)
        if request.method == "PUT":
            body = await self._body(request)
            return _json(
                self.store.update(
                    rtype, namespace, name, body, subresource=sub or None, dry_run=dry_run, manager=manager
                )
            )
        if request.method == "PATCH":
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            kind = _PATCH_TYPES.get(content_type)
            if kind is None or kind == "apply-cbor":
                raise ApiStatus(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types "
                    f"include: {', '.join(k for k in _PATCH_TYPES if 'cbor' not in k)}",
                )
            body = await self._body(request, yaml_ok=kind == "apply")
            force = query.get("force") in ("true", "1")
            existed = True
            if kind == "apply":
                try:
                    self.store.get(rtype, namespace, name)
                except ApiStatus:
                    existed = False
            obj = self.store.patch(
                rtype,
                namespace,
                name,
                kind,
                body,
                subresource=sub or None,
                dry_run=dry_run,
                manager=manager if kind == "apply" else (query.get("fieldManager") or manager),
                force=force,
            )
            return _json(obj, 200 if existed else 201)
        if request.method == "DELETE":
            raw = await request.read()
            options: Obj = {}
            if raw:
                try:
                    options = json.loads(raw)
                except ValueError:
                    raise bad_request("the DeleteOptions body is not valid JSON") from None
            propagation = options.get("propagationPolicy") or query.get("propagationPolicy")
            if options.get("orphanDependents") is True:
                propagation = "Orphan"
            dry = dry_run or "All" in (options.get("dryRun") or ())
            if not name:
                labels = parse_label_selector(query.get("labelSelector"))
                fields = parse_field_selector(query.get("fieldSelector"), rtype.plural)
                self.store.delete_collection(rtype, namespace, labels=labels, fields=fields)
                return _json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
            code, obj = self.store.delete(
                rtype,
                namespace,
                name,
                propagation=propagation,
                preconditions=options.get("preconditions"),
                dry_run=dry,
            )
            return _json(obj, code)
        raise method_not_allowed()

    def _render(self, request: web.Request, rtype: ResourceType, obj: Obj) -> web.Response:
        accept = request.headers.get("Accept", "")
        if "as=Table" in accept:
            include = request.query.get("includeObject", "Metadata")
            return _json(_discovery.table(rtype, [obj], include=include, now=self._clock()))
        if "as=PartialObjectMetadata" in accept:
            return _json(
                {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}
            )
        return _json(obj)

    def _list(self, request: web.Request, rtype: ResourceType, namespace: str | None) -> web.Response:
        query = request.query
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(query.get("fieldSelector"), rtype.plural)
        limit = _int(query.get("limit"), "limit")
        items, rv, token, remaining = self.store.list(
            rtype,
            namespace,
            labels=labels,
            fields=fields,
            limit=limit or None,
            continue_token=query.get("continue"),
        )
        meta: Obj = {"resourceVersion": rv}
        if token:
            meta["continue"] = token
            meta["remainingItemCount"] = remaining
        accept = request.headers.get("Accept", "")
        if "as=Table" in accept:
            include = query.get("includeObject", "Metadata")
            return _json(_discovery.table(rtype, items, include=include, now=self._clock(), list_meta=meta))
        if "as=PartialObjectMetadataList" in accept:
            return _json(
                {
                    "kind": "PartialObjectMetadataList",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": meta,
                    "items": [
                        {
                            "kind": "PartialObjectMetadata",
                            "apiVersion": "meta.k8s.io/v1",
                            "metadata": i["metadata"],
                        }
                        for i in items
                    ],
                }
            )
        for item in items:
            if not rtype.crd:  # the apiserver leaves TypeMeta off the items of built-in lists
                item.pop("apiVersion", None)
                item.pop("kind", None)
        return _json(
            {"kind": rtype.list_kind, "apiVersion": rtype.api_version, "metadata": meta, "items": items}
        )

    async def _watch(
        self, request: web.Request, rtype: ResourceType, namespace: str | None
    ) -> web.StreamResponse:
        if self._hold.is_set():  # hold_watches(): a new watch waits, unanswered, until the block ends
            self._held += 1
            try:
                while self._hold.is_set():
                    await asyncio.sleep(0.01)
            finally:
                self._held -= 1
        query = request.query
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event | None] = asyncio.Queue()

        def deliver(event: Event) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        watcher = Watcher(
            rtype.storage,
            deliver=deliver,
            namespace=namespace,
            labels=parse_label_selector(query.get("labelSelector")),
            fields=parse_field_selector(query.get("fieldSelector"), rtype.plural),
        )
        rv_text = query.get("resourceVersion", "")
        initial = query.get("sendInitialEvents") in ("true", "1")
        since: int | None = None
        if rv_text not in ("", "0") and not initial:
            since = _int(rv_text, "resourceVersion")
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        timeout = _int(query.get("timeoutSeconds"), "timeoutSeconds") or 1800
        table = "as=Table" in request.headers.get("Accept", "")
        include = query.get("includeObject", "Metadata")
        try:
            backlog = self.store.subscribe(watcher, since)
        except ApiStatus as exc:
            if self.gone_as_http:
                return _json(exc.status, exc.code)
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            await response.write(json.dumps({"type": "ERROR", "object": exc.status}).encode() + b"\n")
            await response.write_eof()
            return response
        response = web.StreamResponse(
            headers={"Content-Type": "application/json", "Cache-Control": "no-cache"}
        )
        response.enable_chunked_encoding()
        transport = request.transport
        if transport is not None:
            self._watches[transport] = queue
        first = True

        async def send(event: Event) -> None:
            nonlocal first
            if event.type == "BOOKMARK" and not bookmarks:
                return
            obj: Any = event.object
            if table and event.type != "BOOKMARK":
                obj = _discovery.table(
                    rtype, [event.object], include=include, now=self._clock(), headers=first
                )
                first = False
            await response.write(json.dumps({"type": event.type, "object": obj}).encode() + b"\n")

        async def ticker() -> None:
            while self.bookmark_interval:
                await asyncio.sleep(self.bookmark_interval)
                self.store.bookmark(watcher)

        tick = asyncio.ensure_future(ticker()) if bookmarks and self.bookmark_interval else None
        try:
            await response.prepare(request)
            for past in backlog:
                await send(past)
            if initial and bookmarks:
                self.store.bookmark(watcher, initial_events_end=True)
            deadline = loop.time() + timeout
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
                if event is None:  # dropped by drop_watches()
                    return response
                await send(event)
            await response.write_eof()
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.store.unsubscribe(watcher)
            if tick is not None:
                tick.cancel()
            if transport is not None:
                self._watches.pop(transport, None)
        return response

    # --- reviews and tokens ------------------------------------------------------------------------

    def _review(self, rtype: ResourceType, user: User, namespace: str | None, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise bad_request("the review must be an object")
        spec = body.get("spec") or {}
        out: Obj = {
            "kind": rtype.kind,
            "apiVersion": rtype.api_version,
            "metadata": {"creationTimestamp": None},
            "spec": spec,
        }
        if rtype.plural == "tokenreviews":
            token = str(spec.get("token") or "")
            audiences = tuple(spec.get("audiences") or ())
            status: Obj = {"user": {}}
            static = self._static_tokens.get(token)
            if static is not None and (not audiences or set(audiences) & set(self.tokens.api_audiences)):
                status.update(
                    authenticated=True,
                    user=static.info(),
                    audiences=list(audiences or self.tokens.api_audiences),
                )
            elif static is None and token:
                found, matched, error = self.tokens.review(token, audiences, lookup=self._lookup)
                if found is not None:
                    status.update(authenticated=True, user=found.info(), audiences=list(matched))
                else:
                    status["error"] = error
            else:
                status["error"] = "[invalid bearer token, token lookup failed]"
            out["status"] = status
            return out
        if rtype.plural == "selfsubjectreviews":
            out["status"] = {"userInfo": user.info()}
            return out
        if rtype.plural == "selfsubjectaccessreviews":
            subject = (user.name, user.groups)
        else:
            subject = (str(spec.get("user") or ""), tuple(spec.get("groups") or ()))
            if not subject[0] and not subject[1]:
                raise ApiStatus(
                    422,
                    "Invalid",
                    f'{rtype.kind}.authorization.k8s.io "" is invalid: spec.user: Invalid value: '
                    f'"": at least one of user or group must be specified',
                    {
                        "group": "authorization.k8s.io",
                        "kind": rtype.kind,
                        "causes": [
                            {
                                "reason": "FieldValueInvalid",
                                "message": "at least one of user or group must be specified",
                                "field": "spec.user",
                            }
                        ],
                    },
                )
        res = spec.get("resourceAttributes")
        nonres = spec.get("nonResourceAttributes")
        if res:
            attrs = Attributes(
                subject[0],
                subject[1],
                str(res.get("verb", "")),
                str(res.get("group", "")),
                str(res.get("resource", "")),
                str(res.get("subresource", "")),
                str(namespace if rtype.plural == "localsubjectaccessreviews" else res.get("namespace", "")),
                str(res.get("name", "")),
            )
        elif nonres:
            attrs = Attributes(
                subject[0], subject[1], str(nonres.get("verb", "")), path=str(nonres.get("path", ""))
            )
        else:
            raise ApiStatus(
                422,
                "Invalid",
                f"{rtype.kind} is invalid: spec.resourceAttributes: Invalid value: exactly one of "
                f"nonResourceAttributes or resourceAttributes must be specified",
                {"kind": rtype.kind},
            )
        decision = self.authorize(attrs)
        status = {"allowed": decision.allowed}
        if not decision.allowed:
            status["denied"] = True
        if decision.reason:
            status["reason"] = decision.reason
        out["status"] = status
        return out

    def _token_request(self, namespace: str, name: str, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise bad_request("the TokenRequest must be an object")
        sa_type = self.store.type_of("", "v1", "serviceaccounts")
        sa = self.store.get(sa_type, namespace, name)
        spec = body.get("spec") or {}
        expiration = int(spec.get("expirationSeconds") or 3600)
        if expiration < 600:
            raise ApiStatus(
                422,
                "Invalid",
                'TokenRequest.authentication.k8s.io "" is invalid: spec.expirationSeconds: Invalid '
                "value: may not specify a duration less than 10 minutes",
                {
                    "group": "authentication.k8s.io",
                    "kind": "TokenRequest",
                    "causes": [
                        {
                            "reason": "FieldValueInvalid",
                            "message": "may not specify a duration less than 10 minutes",
                            "field": "spec.expirationSeconds",
                        }
                    ],
                },
            )
        pod = None
        ref = spec.get("boundObjectRef")
        if ref:
            if ref.get("kind") != "Pod":
                raise bad_request("the stand-in binds tokens to pods only")
            pod_obj = self.store.get(self.store.type_of("", "v1", "pods"), namespace, str(ref.get("name")))
            if ref.get("uid") and ref["uid"] != pod_obj["metadata"]["uid"]:
                raise ApiStatus(
                    409,
                    "Conflict",
                    f"the UID in the bound object reference ({ref['uid']}) does not match the UID "
                    f"in record. The object might have been deleted and then recreated",
                    {"name": name, "kind": "serviceaccounts"},
                )
            pod = (pod_obj["metadata"]["name"], pod_obj["metadata"]["uid"])
        token, expires = self.tokens.mint(
            namespace=namespace,
            service_account=name,
            sa_uid=sa["metadata"]["uid"],
            audiences=tuple(spec.get("audiences") or ()),
            expiration_seconds=expiration,
            pod=pod,
        )
        return {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": None},
            "spec": {
                **spec,
                "audiences": list(spec.get("audiences") or self.tokens.api_audiences),
                "expirationSeconds": expiration,
            },
            "status": {"token": token, "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")},
        }


def _int(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise bad_request(f"invalid {name} {value!r}: not an integer") from None


def _manager_from_agent(agent: str) -> str:
    """The apiserver's default field manager: the User-Agent up to the first '/'."""
    return agent.split("/", 1)[0][:128] if agent else "unknown"
