"""``LocalProxy`` against the Kubernetes API stand-in, with hand-written HTTP: the bearer check, what is
forwarded and what is not, refusals (401, 413, 400, 502), keep-alive and pooling, streaming watches and
a client going away mid-watch, the upgrade splice, redaction and the audit log."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubeshield.access.audit import AuditLog
from kubeshield.access.credential import ClusterCredential
from kubeshield.access.redact import DATA_MARKER
from tests.support.access_proxy import (
    ProxyThread,
    ServingPKI,
    UpgradeEcho,
    new_bearer,
    open_tls,
    raw_request,
    read_response,
    request_bytes,
    standin_credential,
)
from tests.support.kubeapi import KubeAPI
from tests.support.kubeapi import fixtures as _kubeapi_fixtures

kube_api = _kubeapi_fixtures.kube_api  # the stand-in fixtures, in this module only
kube_ns = _kubeapi_fixtures.kube_ns

DEADLINE = 60.0


@pytest.fixture(scope="module")
def pki() -> ServingPKI:
    return ServingPKI.make()


@pytest.fixture(scope="module")
def alice(kube_api: KubeAPI) -> ClusterCredential:
    return standin_credential(kube_api, user="alice", groups=("system:masters",))


@pytest.fixture
def bearer() -> bytes:
    return new_bearer()


@pytest.fixture
def proxy(alice: ClusterCredential, bearer: bytes, pki: ServingPKI) -> Iterator[ProxyThread]:
    with ProxyThread(credential=lambda: alice, bearer=bearer, pki=pki) as running:
        yield running


def _get(proxy: ProxyThread, pki: ServingPKI, path: str, bearer: bytes | None, **headers: str) -> Any:
    return raw_request(proxy.url, pki.ca_pem, request_bytes("GET", path, bearer=bearer, headers=headers))


def _status(resp: Any) -> dict[str, Any]:
    assert resp.headers["content-type"] == "application/json"
    doc: dict[str, Any] = resp.json()
    assert doc["kind"] == "Status" and doc["code"] == resp.status
    return doc


def _last_record(api: KubeAPI, path: str) -> Any:
    return next(r for r in reversed(api.requests) if r.path == path)


def _wait(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# --- the caller check ---------------------------------------------------------------------------------


def test_the_right_bearer_is_served_and_removed_before_forwarding(
    proxy: ProxyThread,
    pki: ServingPKI,
    bearer: bytes,
    kube_api: KubeAPI,
    kube_ns: str,
) -> None:
    resp = _get(proxy, pki, f"/api/v1/namespaces/{kube_ns}", bearer)
    assert resp.status == 200 and resp.json()["metadata"]["name"] == kube_ns
    # the stand-in authenticates a Bearer header before the client certificate: had the proxy forwarded
    # kubectl's bearer secret, the stand-in would have refused it; it saw the credential's user
    assert _last_record(kube_api, f"/api/v1/namespaces/{kube_ns}").user == "alice"


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-secret-of-some-length", "Basic YWxpY2U6cHc=", "Bearer ", "bearer"],
)
def test_a_missing_or_wrong_bearer_is_refused_with_401(
    proxy: ProxyThread,
    pki: ServingPKI,
    bearer: bytes,
    authorization: str | None,
    kube_api: KubeAPI,
) -> None:
    before = len(kube_api.requests)
    headers = {"Authorization": authorization} if authorization is not None else {}
    resp = raw_request(
        proxy.url, pki.ca_pem, request_bytes("GET", "/api/v1/namespaces", bearer=None, headers=headers)
    )
    assert resp.status == 401
    doc = _status(resp)
    assert doc["reason"] == "Unauthorized" and "bearer secret" in doc["message"]
    assert bearer.decode() not in resp.body.decode()
    assert not [r for r in list(kube_api.requests)[before:] if r.path == "/api/v1/namespaces"]
    # the proxy keeps serving the right caller
    assert _get(proxy, pki, "/api/v1/namespaces", bearer).status == 200


def test_a_prefix_or_an_extension_of_the_bearer_is_refused(
    proxy: ProxyThread, pki: ServingPKI, bearer: bytes
) -> None:
    for wrong in (bearer[:-1], bearer + b"x", bearer.upper() if bearer.upper() != bearer else bearer + b"A"):
        assert _get(proxy, pki, "/version", wrong).status == 401


def test_two_authorization_headers_are_refused(proxy: ProxyThread, pki: ServingPKI, bearer: bytes) -> None:
    raw = request_bytes(
        "GET", "/version", bearer=bearer, headers={"Authorization": f"Bearer {bearer.decode()}"}
    )
    assert raw_request(proxy.url, pki.ca_pem, raw).status == 401


def test_a_token_credential_authenticates_upstream(
    kube_api: KubeAPI,
    pki: ServingPKI,
    bearer: bytes,
    kube_ns: str,
) -> None:
    cred = standin_credential(kube_api, user="bob", token=kube_api.add_token("bob", ("system:masters",)))
    with ProxyThread(credential=lambda: cred, bearer=bearer, pki=pki) as proxy:
        resp = _get(proxy, pki, f"/api/v1/namespaces/{kube_ns}/configmaps", bearer)
    assert resp.status == 200
    assert _last_record(kube_api, f"/api/v1/namespaces/{kube_ns}/configmaps").user == "bob"


def test_impersonation_headers_are_forwarded(
    proxy: ProxyThread,
    pki: ServingPKI,
    bearer: bytes,
    kube_api: KubeAPI,
    kube_ns: str,
) -> None:
    resp = _get(proxy, pki, f"/api/v1/namespaces/{kube_ns}/pods", bearer, **{"Impersonate-User": "carol"})
    assert resp.status == 200
    assert _last_record(kube_api, f"/api/v1/namespaces/{kube_ns}/pods").user == "carol"


def test_impersonation_is_authorized_against_the_real_user(
    kube_api: KubeAPI,
    pki: ServingPKI,
    bearer: bytes,
    kube_ns: str,
) -> None:
    dave = standin_credential(kube_api, user="dave", groups=())
    kube_api.deny(user="dave", verb="impersonate")
    try:
        with ProxyThread(credential=lambda: dave, bearer=bearer, pki=pki) as proxy:
            resp = _get(
                proxy, pki, f"/api/v1/namespaces/{kube_ns}/pods", bearer, **{"Impersonate-User": "admin"}
            )
    finally:
        kube_api.clear_denies()
    assert resp.status == 403


def test_an_expired_credential_is_refused_with_a_message_naming_login(
    kube_api: KubeAPI,
    pki: ServingPKI,
    bearer: bytes,
) -> None:
    fresh = standin_credential(kube_api, user="erin")
    old = ClusterCredential(
        context="old",
        server=fresh.server,
        ca_pem=fresh.ca_pem,
        client_cert_pem=fresh.client_cert_pem,
        client_key_pem=fresh.client_key_pem,
        expires_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    with ProxyThread(credential=lambda: old, bearer=bearer, pki=pki) as proxy:
        resp = _get(proxy, pki, "/version", bearer)
    assert resp.status == 401 and "log in again" in _status(resp)["message"]


# --- refusals -----------------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_read(
    alice: ClusterCredential,
    pki: ServingPKI,
    bearer: bytes,
    kube_ns: str,
) -> None:
    with ProxyThread(credential=lambda: alice, bearer=bearer, pki=pki, max_request_bytes=1000) as proxy:
        head = (
            f"POST /api/v1/namespaces/{kube_ns}/configmaps HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {bearer.decode()}\r\nContent-Length: 5000000\r\n\r\n"
        ).encode()
        resp = raw_request(proxy.url, pki.ca_pem, head)  # no body sent at all: refused on the head
        assert resp.status == 413 and _status(resp)["reason"] == "RequestEntityTooLarge"
        chunked = (
            (
                f"POST /api/v1/namespaces/{kube_ns}/configmaps HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {bearer.decode()}\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
            + b"400\r\n"
            + b"x" * 1024
            + b"\r\n0\r\n\r\n"
        )
        assert raw_request(proxy.url, pki.ca_pem, chunked).status == 413
        # under the limit goes through
        body = json.dumps({"metadata": {"name": "small"}, "data": {"k": "v"}}).encode()
        ok = raw_request(
            proxy.url,
            pki.ca_pem,
            request_bytes("POST", f"/api/v1/namespaces/{kube_ns}/configmaps", bearer=bearer, body=body),
        )
        assert ok.status == 201


@pytest.mark.parametrize(
    "framing",
    [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: 4\r\nContent-Length: 4\r\n",
        "X-Folded: a\r\n b\r\nContent-Length: 4\r\n",
        "Transfer-Encoding: identity, chunked\r\n",
    ],
)
def test_ambiguous_framing_is_refused_and_never_forwarded(
    proxy: ProxyThread,
    pki: ServingPKI,
    bearer: bytes,
    kube_api: KubeAPI,
    kube_ns: str,
    framing: str,
) -> None:
    path = f"/api/v1/namespaces/{kube_ns}/configmaps"
    raw = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer.decode()}\r\n{framing}\r\n"
        "4\r\nabcd\r\n0\r\n\r\n"
    ).encode()
    resp = raw_request(proxy.url, pki.ca_pem, raw)
    assert resp.status in (400, 501)
    assert resp.headers.get("connection") == "close"
    _status(resp)
    assert not [r for r in kube_api.requests if r.path == path and r.method == "POST"]


def test_a_malformed_request_gets_400_and_the_proxy_keeps_serving(
    proxy: ProxyThread, pki: ServingPKI, bearer: bytes
) -> None:
    resp = raw_request(proxy.url, pki.ca_pem, b"GET /version HTTP/1.1\nHost: x\n\r\n\r\n")
    assert resp.status == 400 and "CR or LF" in _status(resp)["message"]
    with open_tls(proxy.url, pki.ca_pem) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        assert read_response(sock).status == 400
    assert _get(proxy, pki, "/version", bearer).status == 200


def test_an_untrusted_apiserver_certificate_is_refused_with_502(
    kube_api: KubeAPI,
    pki: ServingPKI,
    bearer: bytes,
) -> None:
    other_ca = ServingPKI.make("some-other-ca").ca_pem
    cred = standin_credential(kube_api, user="frank", ca_pem=other_ca)
    with ProxyThread(credential=lambda: cred, bearer=bearer, pki=pki) as proxy:
        resp = _get(proxy, pki, "/api/v1/namespaces", bearer)
        named = ClusterCredential(
            context="named",
            server=kube_api.url,
            ca_pem=kube_api.ca_path.read_bytes(),
            tls_server_name="not-the-apiserver.example",
            token="t0ken-value",
        )
    assert resp.status == 502
    doc = _status(resp)
    assert "the apiserver's certificate is not trusted" in doc["message"]
    for secret in (b"PRIVATE KEY", bearer, b"CERTIFICATE"):
        assert secret not in resp.body
    with ProxyThread(credential=lambda: named, bearer=bearer, pki=pki) as proxy:
        wrong_name = _get(proxy, pki, "/version", bearer)
    assert wrong_name.status == 502 and "not trusted" in _status(wrong_name)["message"]
    assert b"t0ken-value" not in wrong_name.body


def test_an_apiserver_that_is_not_there_gets_502(pki: ServingPKI, bearer: bytes) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cred = ClusterCredential(context="gone", server=f"https://127.0.0.1:{port}", token="x" * 20)
    with ProxyThread(credential=lambda: cred, bearer=bearer, pki=pki) as proxy:
        resp = _get(proxy, pki, "/version", bearer)
    assert resp.status == 502 and "cannot be reached" in _status(resp)["message"]


def test_the_proxy_listens_on_loopback_only(alice: ClusterCredential, pki: ServingPKI, bearer: bytes) -> None:
    import asyncio

    from kubeshield.access.proxy import LocalProxy

    async def start_on(host: str) -> None:
        proxy = LocalProxy(
            credential=lambda: alice,
            bearer=bearer,
            serving_cert_pem=pki.cert_pem,
            serving_key_pem=pki.key_pem,
        )
        await proxy.start(host)

    for host in ("0.0.0.0", "192.0.2.1", "localhost", "::"):
        with pytest.raises(ValueError, match="loopback"):
            asyncio.run(start_on(host))


def test_a_short_or_non_ascii_bearer_is_refused_at_construction(
    alice: ClusterCredential, pki: ServingPKI
) -> None:
    from kubeshield.access.proxy import LocalProxy

    for bad in (b"short", b"x" * 20 + b" y", b"\xff" * 32):
        with pytest.raises(ValueError, match="bearer"):
            LocalProxy(
                credential=lambda: alice,
                bearer=bad,
                serving_cert_pem=pki.cert_pem,
                serving_key_pem=pki.key_pem,
            )


# --- forwarding ---------------------------------------------------------------------------------------


def test_keep_alive_requests_share_one_client_and_one_upstream_connection(
    proxy: ProxyThread,
    pki: ServingPKI,
    bearer: bytes,
    kube_ns: str,
) -> None:
    with open_tls(proxy.url, pki.ca_pem) as sock:
        for _ in range(5):
            sock.sendall(request_bytes("GET", f"/api/v1/namespaces/{kube_ns}", bearer=bearer))
            assert read_response(sock).status == 200
    running = proxy.proxy
    assert running is not None
    _wait(lambda: len(running._upstream._idle) == 1, "the upstream connection back in the pool")


def test_a_chunked_request_body_is_forwarded(
    proxy: ProxyThread,
    pki: ServingPKI,
    bearer: bytes,
    kube_api: KubeAPI,
    kube_ns: str,
) -> None:
    body = json.dumps({"metadata": {"name": "chunky"}, "data": {"k": "v" * 3000}}).encode()
    pieces = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 700]), body[i : i + 700]) for i in range(0, len(body), 700)
    )
    raw = (
        (
            f"POST /api/v1/namespaces/{kube_ns}/configmaps HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {bearer.decode()}\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: application/json\r\n\r\n"
        ).encode()
        + pieces
        + b"0\r\n\r\n"
    )
    resp = raw_request(proxy.url, pki.ca_pem, raw)
    assert resp.status == 201, resp.body
    stored = kube_api.store.get(kube_api.store.type_of("", "v1", "configmaps"), kube_ns, "chunky")
    assert stored["data"]["k"] == "v" * 3000


def test_a_large_list_arrives_whole(
    proxy: ProxyThread, pki: ServingPKI, bearer: bytes, kube_api: KubeAPI, kube_ns: str
) -> None:
    rtype = kube_api.store.type_of("", "v1", "configmaps")
    for i in range(300):
        kube_api.store.create(rtype, kube_ns, {"metadata": {"name": f"cm-{i}"}, "data": {"v": "x" * 2000}})
    resp = _get(proxy, pki, f"/api/v1/namespaces/{kube_ns}/configmaps", bearer)
    assert resp.status == 200 and len(resp.body) > 600_000
    assert sorted(i["metadata"]["name"] for i in resp.json()["items"]) == sorted(
        f"cm-{i}" for i in range(300)
    )


def _open_watch(url: str, pki: ServingPKI, bearer: bytes, path: str) -> ssl.SSLSocket:
    sock = open_tls(url, pki.ca_pem)
    sock.sendall(request_bytes("GET", path, bearer=bearer))
    return sock


def _watch_head(sock: ssl.SSLSocket) -> bytes:
    """The watch's response head (the stand-in sends it with the first event); returns what follows."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "the watch closed before its head"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"transfer-encoding: chunked" in head.lower()
    return rest


def _read_events(sock: ssl.SSLSocket, pending: bytes, count: int) -> tuple[list[dict[str, Any]], bytes]:
    """Decode chunked watch events until ``count`` arrived (chunks are decoded, lines split)."""
    from kubeshield.access._http1 import ChunkedScanner

    scanner = ChunkedScanner(decode=True)
    text = b""
    events: list[dict[str, Any]] = []
    data = pending
    while True:
        if data:
            scanner.feed(data)
            text += scanner.take()
            *lines, text = text.split(b"\n")
            events += [json.loads(line) for line in lines if line.strip()]
        if len(events) >= count:
            return events, text
        data = sock.recv(65536)
        assert data, "the watch ended early"


def test_a_watch_streams_events_as_they_happen_and_a_client_leaving_harms_no_one(
    proxy: ProxyThread,
    pki: ServingPKI,
    bearer: bytes,
    kube_api: KubeAPI,
    kube_ns: str,
) -> None:
    rtype = kube_api.store.type_of("", "v1", "configmaps")
    path = f"/api/v1/namespaces/{kube_ns}/configmaps?watch=true&timeoutSeconds=120"
    watches_before = kube_api.open_watches()
    leaver = _open_watch(proxy.url, pki, bearer, path)
    stayer = _open_watch(proxy.url, pki, bearer, path)
    _wait(lambda: kube_api.open_watches() >= watches_before + 2, "both watches upstream")
    kube_api.store.create(rtype, kube_ns, {"metadata": {"name": "first"}})
    rest_a, rest_b = _watch_head(leaver), _watch_head(stayer)
    events, _ = _read_events(leaver, rest_a, 1)
    assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == "first"
    # the leaver goes away mid-stream, abruptly (RST, no TLS close)
    leaver.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    leaver.close()
    # its upstream watch ends at once, without waiting for the next event
    _wait(lambda: kube_api.open_watches() <= watches_before + 1, "the leaver's upstream watch to end")
    for i in range(20):
        kube_api.store.create(rtype, kube_ns, {"metadata": {"name": f"later-{i}"}})
    got, _ = _read_events(stayer, rest_b, 21)
    assert [e["object"]["metadata"]["name"] for e in got] == ["first", *(f"later-{i}" for i in range(20))]
    # and other clients are served meanwhile
    assert _get(proxy, pki, f"/api/v1/namespaces/{kube_ns}", bearer).status == 200
    stayer.close()
    _wait(lambda: kube_api.open_watches() <= watches_before, "the stayer's upstream watch to end")


# --- upgrades -----------------------------------------------------------------------------------------


def test_an_upgrade_is_spliced_both_ways(pki: ServingPKI, bearer: bytes) -> None:
    echo_pki = ServingPKI.make("echo-ca")
    with UpgradeEcho(echo_pki) as echo:
        cred = ClusterCredential(
            context="echo", server=echo.url, ca_pem=echo_pki.ca_pem, token="upstream-token-1"
        )
        with ProxyThread(credential=lambda: cred, bearer=bearer, pki=pki) as proxy:
            with open_tls(proxy.url, pki.ca_pem) as sock:
                sock.sendall(
                    request_bytes(
                        "GET",
                        "/api/v1/namespaces/a/pods/p/exec?command=sh",
                        bearer=bearer,
                        headers={
                            "Connection": "Upgrade",
                            "Upgrade": "websocket",
                            "Sec-WebSocket-Protocol": "v5.channel.k8s.io",
                        },
                    )
                )
                buf = b""
                while b"hello\n" not in buf:
                    data = sock.recv(65536)
                    assert data
                    buf += data
                head, _, rest = buf.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 101")
                assert b"upgrade: echo" in head.lower()
                assert rest == b"hello\n"
                payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
                sent = 0
                got = bytearray()
                sock.setblocking(False)
                while len(got) < len(payload):
                    if sent < len(payload):
                        try:
                            sent += sock.send(payload[sent : sent + 65536])
                        except (ssl.SSLWantWriteError, BlockingIOError):
                            pass
                    try:
                        got += sock.recv(65536)
                    except (ssl.SSLWantReadError, BlockingIOError):
                        time.sleep(0.001)
                assert bytes(got) == payload
                sock.setblocking(True)
            # the upstream saw the credential's token and the upgrade, never the proxy's bearer
            up = echo.heads[-1]
            assert b"Authorization: Bearer upstream-token-1\r\n" in up
            assert bearer not in up
            assert b"Connection: Upgrade\r\n" in up and b"Upgrade: websocket\r\n" in up
            assert b"Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n" in up
            # not an upgrade any more: the next client is served normally
            resp = _get(proxy, pki, "/plain", bearer)
            assert resp.status == 400  # the echo server's answer to a non-upgrade, relayed


# --- redaction and audit ------------------------------------------------------------------------------


@pytest.fixture
def audited(
    alice: ClusterCredential, bearer: bytes, pki: ServingPKI, tmp_path: Path
) -> Iterator[tuple[ProxyThread, Path]]:
    path = tmp_path / "audit" / "secrets.jsonl"
    log = AuditLog(path)
    try:
        with ProxyThread(
            credential=lambda: alice, bearer=bearer, pki=pki, audit=log, redact_secrets=True
        ) as running:
            yield running, path
    finally:
        log.close()


def _audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_secrets_are_redacted_unless_revealed_and_every_access_is_audited(
    audited: tuple[ProxyThread, Path],
    pki: ServingPKI,
    bearer: bytes,
    kube_api: KubeAPI,
    kube_ns: str,
) -> None:
    proxy, audit_path = audited
    rtype = kube_api.store.type_of("", "v1", "secrets")
    kube_api.store.create(rtype, kube_ns, {"metadata": {"name": "db"}, "data": {"password": "aHVudGVyMg=="}})
    one = f"/api/v1/namespaces/{kube_ns}/secrets/db"
    hidden = _get(proxy, pki, one, bearer, Accept="application/vnd.kubernetes.protobuf, application/json")
    assert hidden.status == 200
    assert hidden.json()["data"] == {"password": DATA_MARKER}
    assert b"aHVudGVyMg==" not in hidden.body
    # upstream was asked for JSON only
    assert _last_record(kube_api, one).accept == "application/json"
    shown = _get(proxy, pki, one, bearer, **{"X-Kubeshield-Reveal": "1"})
    assert shown.json()["data"] == {"password": "aHVudGVyMg=="}
    listing = _get(proxy, pki, f"/api/v1/namespaces/{kube_ns}/secrets", bearer)
    assert [i["data"] for i in listing.json()["items"]] == [{"password": DATA_MARKER}]
    table = _get(
        proxy,
        pki,
        f"/api/v1/namespaces/{kube_ns}/secrets?includeObject=Object",
        bearer,
        Accept="application/json;as=Table;v=v1;g=meta.k8s.io",
    )
    assert b"aHVudGVyMg==" not in table.body
    missing = _get(proxy, pki, f"/api/v1/namespaces/{kube_ns}/secrets/nope", bearer)
    assert missing.status == 404
    configmaps = _get(proxy, pki, f"/api/v1/namespaces/{kube_ns}/configmaps", bearer)
    assert configmaps.status == 200
    lines = _audit_lines(audit_path)
    assert [(e["verb"], e["name"], e["status"], e["revealed"]) for e in lines] == [
        ("get", "db", 200, False),
        ("get", "db", 200, True),
        ("list", "", 200, False),
        ("list", "", 200, False),
        ("get", "nope", 404, False),
    ]
    assert all(
        e["subject"] == "alice" and e["context"] == "standin" and e["namespace"] == kube_ns for e in lines
    )
    assert b"aHVudGVyMg==" not in audit_path.read_bytes()


def test_a_secrets_watch_is_redacted_event_by_event(
    audited: tuple[ProxyThread, Path],
    pki: ServingPKI,
    bearer: bytes,
    kube_api: KubeAPI,
    kube_ns: str,
) -> None:
    proxy, audit_path = audited
    rtype = kube_api.store.type_of("", "v1", "secrets")
    before = kube_api.open_watches()
    sock = _open_watch(proxy.url, pki, bearer, f"/api/v1/namespaces/{kube_ns}/secrets?watch=1")
    with sock:
        _wait(lambda: kube_api.open_watches() > before, "the watch upstream")
        values = [uuid.uuid4().hex for _ in range(5)]
        for i, value in enumerate(values):
            kube_api.store.create(rtype, kube_ns, {"metadata": {"name": f"s{i}"}, "stringData": {"v": value}})
        events, _ = _read_events(sock, _watch_head(sock), 5)
    _wait(lambda: kube_api.open_watches() <= before, "the watch to end upstream")  # leaves none behind
    assert [e["object"]["metadata"]["name"] for e in events] == [f"s{i}" for i in range(5)]
    for event in events:
        assert event["object"].get("data", {"v": DATA_MARKER}) == {"v": DATA_MARKER}
        assert all(v not in json.dumps(event) for v in values)
    assert [(e["verb"], e["revealed"]) for e in _audit_lines(audit_path)] == [("watch", False)]


def test_without_redaction_every_secret_read_is_audited_as_revealed(
    alice: ClusterCredential,
    pki: ServingPKI,
    bearer: bytes,
    kube_api: KubeAPI,
    kube_ns: str,
    tmp_path: Path,
) -> None:
    rtype = kube_api.store.type_of("", "v1", "secrets")
    kube_api.store.create(rtype, kube_ns, {"metadata": {"name": "plain"}, "data": {"k": "dg=="}})
    with AuditLog(tmp_path / "a.jsonl") as log:
        with ProxyThread(credential=lambda: alice, bearer=bearer, pki=pki, audit=log) as proxy:
            resp = _get(proxy, pki, f"/api/v1/namespaces/{kube_ns}/secrets/plain", bearer)
            assert resp.json()["data"] == {"k": "dg=="}
            refused = _get(proxy, pki, f"/api/v1/namespaces/{kube_ns}/secrets/plain", b"wrong" * 8)
            assert refused.status == 401
    # the refused request never reached the apiserver, so it is not a Secret access
    assert [(e["verb"], e["status"], e["revealed"]) for e in _audit_lines(tmp_path / "a.jsonl")] == [
        ("get", 200, True)
    ]


# --- deadlines ----------------------------------------------------------------------------------------


def test_an_apiserver_that_never_answers_gets_504(
    pki: ServingPKI, bearer: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubeshield.access import proxy as proxy_module

    monkeypatch.setattr(proxy_module, "_RESPONSE_TIMEOUT", 1.0)
    upstream_pki = ServingPKI.make("silent-ca")
    with UpgradeEcho(upstream_pki, silent=True) as silent:
        cred = ClusterCredential(
            context="silent", server=silent.url, ca_pem=upstream_pki.ca_pem, token="t" * 20
        )
        with ProxyThread(credential=lambda: cred, bearer=bearer, pki=pki) as proxy:
            resp = _get(proxy, pki, "/version", bearer)
            assert resp.status == 504 and "did not answer in time" in _status(resp)["message"]
            assert len(silent.heads) == 1  # asked once, not retried


def test_an_idle_client_connection_is_closed(
    proxy: ProxyThread, pki: ServingPKI, bearer: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubeshield.access import proxy as proxy_module

    monkeypatch.setattr(proxy_module, "_IDLE_TIMEOUT", 1.0)
    with open_tls(proxy.url, pki.ca_pem) as sock:
        sock.sendall(request_bytes("GET", "/version", bearer=bearer))
        assert read_response(sock).status == 200
        sock.settimeout(DEADLINE)
        assert sock.recv(1) == b""  # closed by the proxy once idle, not by us


def test_http10_is_refused_with_505(proxy: ProxyThread, pki: ServingPKI, bearer: bytes) -> None:
    raw = f"GET /version HTTP/1.0\r\nAuthorization: Bearer {bearer.decode()}\r\n\r\n".encode()
    resp = raw_request(proxy.url, pki.ca_pem, raw)
    assert resp.status == 505 and "HTTP/1.1" in _status(resp)["message"]


def test_requests_survive_the_apiserver_closing_pooled_connections(
    proxy: ProxyThread, pki: ServingPKI, bearer: bytes, kube_api: KubeAPI, kube_ns: str
) -> None:
    assert _get(proxy, pki, f"/api/v1/namespaces/{kube_ns}", bearer).status == 200
    running = proxy.proxy
    assert running is not None
    _wait(lambda: len(running._upstream._idle) == 1, "a pooled upstream connection")
    loop = kube_api._loop
    assert loop is not None
    for transport in list(kube_api._connections):  # the apiserver restarts / its idle timeout fires
        loop.call_soon_threadsafe(transport.abort)
    assert _get(proxy, pki, f"/api/v1/namespaces/{kube_ns}", bearer).status == 200
    body = json.dumps({"metadata": {"name": "after-drop"}}).encode()
    created = raw_request(
        proxy.url,
        pki.ca_pem,
        request_bytes("POST", f"/api/v1/namespaces/{kube_ns}/configmaps", bearer=bearer, body=body),
    )
    assert created.status == 201


def test_a_credential_source_that_refuses_or_fails_gets_a_clear_status(
    pki: ServingPKI, bearer: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    from kubeshield.access.upstream import UpstreamError

    def locked() -> ClusterCredential:
        raise UpstreamError(401, "the agent holds no valid credential for context 'c': run unlock")

    def broken() -> ClusterCredential:
        raise RuntimeError("internal detail with a s3cret-value")

    with ProxyThread(credential=locked, bearer=bearer, pki=pki) as proxy:
        resp = _get(proxy, pki, "/version", bearer)
        assert resp.status == 401 and "run unlock" in _status(resp)["message"]
    with ProxyThread(credential=broken, bearer=bearer, pki=pki) as proxy:
        resp = _get(proxy, pki, "/version", bearer)
        assert resp.status == 503 and "could not provide" in _status(resp)["message"]
        assert _get(proxy, pki, "/version", bearer).status == 503  # and it keeps answering
    assert b"s3cret-value" not in resp.body
    assert "s3cret-value" not in caplog.text


def test_a_renewed_credential_is_used_from_the_next_request_on(
    kube_api: KubeAPI, pki: ServingPKI, bearer: bytes, kube_ns: str
) -> None:
    holder = {"now": standin_credential(kube_api, user="before-renewal")}
    with ProxyThread(credential=lambda: holder["now"], bearer=bearer, pki=pki) as proxy:
        path = f"/api/v1/namespaces/{kube_ns}/configmaps"
        with open_tls(proxy.url, pki.ca_pem) as sock:  # one kubectl connection across the renewal
            sock.sendall(request_bytes("GET", path, bearer=bearer))
            assert read_response(sock).status == 200
            assert _last_record(kube_api, path).user == "before-renewal"
            holder["now"] = standin_credential(kube_api, user="after-renewal")
            sock.sendall(request_bytes("GET", path, bearer=bearer))
            assert read_response(sock).status == 200
            # the pooled connection made with the old certificate was not reused
            assert _last_record(kube_api, path).user == "after-renewal"


# --- the running proxy under arbitrary requests ---------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_proxy(alice: ClusterCredential, pki: ServingPKI) -> Iterator[tuple[ProxyThread, bytes]]:
    secret = new_bearer()
    with ProxyThread(credential=lambda: alice, bearer=secret, pki=pki, max_request_bytes=4096) as running:
        yield running, secret


_PIECES = st.sampled_from(
    [
        b"GET /version HTTP/1.1\r\n",
        b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\n",
        b"GET /api/v1/namespaces/default/secrets?watch=1 HTTP/1.1\r\n",
        b"Host: x\r\n",
        b"AUTH",
        b"Content-Length: 5\r\n",
        b"Content-Length: 99999\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n",
        b"Expect: 100-continue\r\n",
        b" folded\r\n",
        b"\r\n",
        b"\n",
        b"\r",
        b"5\r\nhello\r\n0\r\n\r\n",
        b"hello",
        b"{}",
    ]
)


def _complete(received: bytes) -> bool:
    """A final (non-1xx) response head and its Content-Length body have arrived, or a stream began."""
    rest = received
    while b"\r\n\r\n" in rest:
        head, _, rest = rest.partition(b"\r\n\r\n")
        if head[9:10] == b"1":
            continue  # 100 Continue: the final answer follows
        fields = dict(line.split(b":", 1) for line in head.lower().split(b"\r\n")[1:] if b":" in line)
        if b"content-length" in fields:
            return len(rest) >= int(fields[b"content-length"])
        return True
    return False


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.sampled_from(
        [
            [b"GET /version HTTP/1.1\r\n", b"Host: x\r\n", b"AUTH"],
            [b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\n", b"Host: x\r\n", b"AUTH"],
            [b"GET /api/v1/namespaces/default/secrets/x HTTP/1.1\r\n", b"AUTH", b"Host: x\r\n"],
            [],
        ]
    ),
    pieces=st.lists(st.one_of(_PIECES, _PIECES, _PIECES, st.binary(max_size=16)), max_size=8),
)
def test_fuzz_the_running_proxy_answers_or_closes_and_keeps_serving(
    fuzz_proxy: tuple[ProxyThread, bytes], pki: ServingPKI, start: list[bytes], pieces: list[bytes]
) -> None:
    proxy, secret = fuzz_proxy
    auth = b"Authorization: Bearer " + secret + b"\r\n"
    raw = b"".join(auth if p == b"AUTH" else p for p in [*start, *pieces]) + b"\r\n\r\n"  # the head ends
    with open_tls(proxy.url, pki.ca_pem, timeout=DEADLINE) as sock:
        sock.sendall(raw)
        # an incomplete request leaves the proxy waiting for the rest (correct): stop reading after a
        # quiet second; this bounds the test's wait only, nothing is asserted on time
        sock.settimeout(0.5)
        received = b""
        with contextlib.suppress(TimeoutError, ssl.SSLError, ConnectionError):
            while not _complete(received) and (chunk := sock.recv(65536)):
                received += chunk
    if received:
        assert received.startswith(b"HTTP/1.1 "), received[:80]
        status = int(received[9:12])
        assert 100 <= status <= 599
        if status in (400, 401, 413, 431, 501, 505):
            _, _, body = received.partition(b"\r\n\r\n")
            assert json.loads(body)["kind"] == "Status"
    ok = raw_request(proxy.url, pki.ca_pem, request_bytes("GET", "/version", bearer=secret))
    assert ok.status == 200


def test_a_secret_request_the_apiserver_never_answered_is_audited_once_with_its_status(
    kube_api: KubeAPI, pki: ServingPKI, bearer: bytes, tmp_path: Path
) -> None:
    cred = standin_credential(kube_api, user="hank", ca_pem=ServingPKI.make("wrong-ca").ca_pem)
    with AuditLog(tmp_path / "a.jsonl") as log:
        with ProxyThread(
            credential=lambda: cred, bearer=bearer, pki=pki, audit=log, redact_secrets=True
        ) as proxy:
            assert _get(proxy, pki, "/api/v1/namespaces/app/secrets/db", bearer).status == 502
    assert [
        (e["subject"], e["verb"], e["name"], e["status"], e["revealed"])
        for e in _audit_lines(tmp_path / "a.jsonl")
    ] == [("hank", "get", "db", 502, False)]


def test_the_reveal_prefix_is_removed_before_forwarding(
    audited: tuple[ProxyThread, Path], pki: ServingPKI, bearer: bytes, kube_api: KubeAPI, kube_ns: str
) -> None:
    proxy, audit_path = audited
    rtype = kube_api.store.type_of("", "v1", "secrets")
    kube_api.store.create(rtype, kube_ns, {"metadata": {"name": "k"}, "data": {"v": "c2VjcmV0"}})
    assert _get(proxy, pki, "/kubeshield/reveal/version", bearer).status == 200
    assert _last_record(kube_api, "/version").path == "/version"
    shown = _get(proxy, pki, f"/kubeshield/reveal/api/v1/namespaces/{kube_ns}/secrets/k", bearer)
    assert shown.json()["data"] == {"v": "c2VjcmV0"}
    # only the Secret read is a reveal; /version touched no Secret and is not in the log
    assert [(e["verb"], e["name"], e["revealed"]) for e in _audit_lines(audit_path)] == [("get", "k", True)]


def test_a_percent_encoded_secrets_path_is_still_redacted_and_audited(
    audited: tuple[ProxyThread, Path], pki: ServingPKI, bearer: bytes, kube_api: KubeAPI, kube_ns: str
) -> None:
    proxy, audit_path = audited
    rtype = kube_api.store.type_of("", "v1", "secrets")
    kube_api.store.create(rtype, kube_ns, {"metadata": {"name": "enc"}, "data": {"v": "c2VjcmV0"}})
    resp = _get(proxy, pki, f"/api/v1/namespaces/{kube_ns}/%73ecrets/enc", bearer)
    assert resp.status == 200  # the apiserver (here the stand-in) decodes the path: it served the Secret
    assert resp.json()["data"] == {"v": DATA_MARKER}
    assert [(e["verb"], e["name"], e["revealed"]) for e in _audit_lines(audit_path)] == [
        ("get", "enc", False)
    ]


def test_interim_responses_are_skipped(pki: ServingPKI, bearer: bytes) -> None:
    upstream_pki = ServingPKI.make("hints-ca")
    reply = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )
    with UpgradeEcho(upstream_pki, reply=reply) as hints:
        cred = ClusterCredential(
            context="hints", server=hints.url, ca_pem=upstream_pki.ca_pem, token="t" * 20
        )
        with ProxyThread(credential=lambda: cred, bearer=bearer, pki=pki) as proxy:
            resp = _get(proxy, pki, "/version", bearer)
    assert (resp.status, resp.body) == (200, b"{}")


def test_stopping_the_proxy_ends_open_streams_and_splices(
    alice: ClusterCredential, pki: ServingPKI, bearer: bytes, kube_api: KubeAPI, kube_ns: str
) -> None:
    before = kube_api.open_watches()
    echo_pki = ServingPKI.make("echo-ca-2")
    with UpgradeEcho(echo_pki) as echo:
        proxy = ProxyThread(credential=lambda: alice, bearer=bearer, pki=pki).start()
        echo_cred = ClusterCredential(context="echo", server=echo.url, ca_pem=echo_pki.ca_pem, token="t" * 20)
        splicer = ProxyThread(credential=lambda: echo_cred, bearer=bearer, pki=pki).start()
        watch = _open_watch(proxy.url, pki, bearer, f"/api/v1/namespaces/{kube_ns}/configmaps?watch=1")
        upgraded = open_tls(splicer.url, pki.ca_pem)
        upgraded.sendall(
            request_bytes("GET", "/x", bearer=bearer, headers={"Connection": "Upgrade", "Upgrade": "echo"})
        )
        with watch, upgraded:
            _wait(lambda: kube_api.open_watches() > before, "the watch upstream")
            assert upgraded.recv(65536).startswith(b"HTTP/1.1 101")
            proxy.stop()
            splicer.stop()
            for sock in (watch, upgraded):
                sock.settimeout(DEADLINE)
                with contextlib.suppress(ssl.SSLError, ConnectionError):
                    while sock.recv(65536):
                        pass  # drained to the end: the proxy closed it
        _wait(lambda: kube_api.open_watches() <= before, "the watch to end upstream")
