"""Certificates and reasons with real processes and real sockets: the relay reloads its client certificate,
``/readyz`` (never ``/livez``) fails before a certificate expires on the relay and on a replica, and the
relay logs why each replica is unreachable (dns, refused, tls, denied) and when one dies or returns."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubeshield.keys.keyring import Argon2Params
from kubeshield.keys.local import LocalKeyBackend
from kubeshield.kms.client import KMSv2Client
from kubeshield.kms.server import KMSServer
from kubeshield.kms.service import KMSService
from kubeshield.kms.tls import AllowList, ReloadingServerCredentials
from tests.support.etcd import short_socket_dir
from tests.support.service import (
    RELAY_ALLOW,
    RELAY_ID,
    Certs,
    Proc,
    free_port,
    make_certs,
    upstream_client,
    wait_until,
)
from tests.support.tls import Issued

RENEWED = "relay-renewed.kubeshield.test"


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "pki")


@pytest.fixture
def keyring(tmp_path: Path) -> Path:
    path = tmp_path / "keyring"
    LocalKeyBackend.create(path=path, argon2=Argon2Params(1, 1, 8)).close()
    return path


class InProcessReplica:
    """A replica on a fixed 127.0.0.1 port that can be stopped and started again on the same port."""

    def __init__(self, keyring: Path, certs: Certs, *, allow: tuple[str, ...], server: Issued | None = None):
        self.keyring, self.certs, self.allow = keyring, certs, allow
        self.server_cert = server or certs.server
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self._running: tuple[KMSService, KMSServer] | None = None

    def start(self) -> InProcessReplica:
        service = KMSService(LocalKeyBackend(path=self.keyring), health_interval=0.5)
        tls = ReloadingServerCredentials(
            cert=self.server_cert.cert, key=self.server_cert.key, client_ca=self.certs.ca.path
        )
        server = KMSServer(service, listen=f"tcp://{self.target}", tls=tls, allow=AllowList(self.allow))
        service.start()
        server.start()
        self._running = (service, server)
        return self

    def stop(self) -> None:
        if self._running is not None:
            service, server = self._running
            server.stop(None).wait(10)
            service.close()
            self._running = None


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _events(proc: Proc, msg: str) -> list[dict[str, Any]]:
    out = []
    for line in proc.output().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record["msg"] == msg:
                out.append(record["fields"])
    return out


def _install(src: Issued, live: Path) -> None:
    """What cert-manager's kubelet-projected secret update looks like: each file replaced atomically."""
    for name, path in (("tls.crt", src.cert), ("tls.key", src.key)):
        tmp = live / f".{name}.tmp"
        shutil.copy(path, tmp)
        os.replace(tmp, live / name)


def _relay(tmp: Path, certs: Certs, live: Path, upstreams: list[str], health: int, *extra: str) -> Proc:
    sock = str(short_socket_dir() / "relay.sock")
    return Proc(
        ["kms", "relay", "--socket", sock, "--upstream", ",".join(f"https://{u}" for u in upstreams),
         "--tls-cert", str(live / "tls.crt"), "--tls-key", str(live / "tls.key"),
         "--ca", str(live / "ca.crt"),
         "--check-interval", "0.2", "--health-addr", f"127.0.0.1:{health}", *extra],
        tmp / "relay.log",
    )  # fmt: skip


def _healthy_metric(health: int, upstream: str) -> float | None:
    _code, text = _get(health, "/metrics")
    for line in text.splitlines():
        if line.startswith(f'kubeshield_relay_upstream_healthy{{upstream="{upstream}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def replicas(keyring: Path, certs: Certs) -> Iterator[list[InProcessReplica]]:
    started: list[InProcessReplica] = []
    yield started
    for replica in started:
        replica.stop()


def test_the_relay_reloads_its_client_certificate_and_readyz_warns_before_expiry(
    tmp_path: Path, certs: Certs, keyring: Path, replicas: list[InProcessReplica]
) -> None:
    """Regression: the relay built its client credentials once and never reloaded them."""
    now = dt.datetime.now(dt.UTC)
    expiring = certs.ca.issue("relay-old", dns=(RELAY_ID,),
                              valid_until=now + dt.timedelta(hours=2))  # fmt: skip
    renewed = certs.ca.issue("relay-new", dns=(RENEWED,))
    live = tmp_path / "live"
    live.mkdir()
    _install(expiring, live)
    shutil.copy(certs.ca.path, live / "ca.crt")
    # r1 accepts both identities; r2 only the renewed one, so r2 answers only after a reload
    r1 = InProcessReplica(keyring, certs, allow=(RELAY_ALLOW, f"dns:{RENEWED}")).start()
    r2 = InProcessReplica(keyring, certs, allow=(f"dns:{RENEWED}",)).start()
    replicas += [r1, r2]
    health = free_port()
    relay = _relay(tmp_path, certs, live, [r1.target, r2.target], health).start()
    try:
        wait_until(lambda: _healthy_metric(health, r1.target) == 1.0, bound=30)
        code, body = _get(health, "/readyz")
        assert code == 503 and "expires at" in body and "renew it" in body, body
        assert _get(health, "/livez")[0] == 200  # never a restart for a certificate
        assert _healthy_metric(health, r2.target) == 0.0
        assert {"upstream": r2.target, "reason": "denied"}.items() <= _events(relay, "replica down")[
            -1
        ].items()

        _install(renewed, live)  # cert-manager renewed it: new key, new name
        wait_until(lambda: _healthy_metric(health, r2.target) == 1.0, bound=30)
        wait_until(lambda: _get(health, "/readyz")[0] == 200, bound=30)
        with KMSv2Client(relay.args[relay.args.index("--socket") + 1], timeout=5) as client:
            assert client.status().key_id
    finally:
        assert relay.stop() == 0, relay.output()
    assert _events(relay, "relay TLS material reloaded")
    back = [e for e in _events(relay, "replica back") if e["upstream"] == r2.target]
    assert back and back[0]["down_seconds"] > 0
    assert "PRIVATE KEY" not in relay.output()


def test_a_replica_readyz_fails_before_its_serving_certificate_expires(
    tmp_path: Path, certs: Certs, keyring: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    expiring = certs.ca.issue("replica-old", ips=("127.0.0.1",), server=True,
                              valid_until=now + dt.timedelta(hours=3))  # fmt: skip
    renewed = certs.ca.issue("replica-new", ips=("127.0.0.1",), server=True)
    live = tmp_path / "live"
    live.mkdir()
    _install(expiring, live)
    port, health = free_port(), free_port()
    replica = Proc(
        ["kms", "serve", "--keyring", str(keyring), "--listen", f"tcp://127.0.0.1:{port}",
         "--tls-cert", str(live / "tls.crt"), "--tls-key", str(live / "tls.key"),
         "--client-ca", str(certs.ca.path), "--allow", RELAY_ALLOW, "--tls-expiry-margin", "24h",
         "--health-addr", f"127.0.0.1:{health}"],
        tmp_path / "replica.log",
    ).start()  # fmt: skip
    try:
        wait_until(lambda: _get(health, "/livez")[0] == 200, bound=30)
        code, body = _get(health, "/readyz")
        assert code == 503 and "TLS serving certificate" in body and "expires at" in body, body
        assert _get(health, "/healthz")[0] == 200  # the backend is fine; only readiness says "renew"
        client = upstream_client(f"127.0.0.1:{port}", certs)
        try:
            assert client.status(timeout=5).key_id  # still serving while it is valid
        finally:
            client.close()
        _install(renewed, live)
        wait_until(lambda: _get(health, "/readyz")[0] == 200, bound=30)  # no handshake needed
        _c, metrics = _get(health, "/metrics")
        assert 'kubeshield_tls_certificate_expiry_timestamp_seconds{role="serving"}' in metrics
    finally:
        assert replica.stop() == 0, replica.output()
    assert "PRIVATE KEY" not in replica.output()


def test_the_relay_logs_why_each_replica_is_unreachable_and_when_it_returns(
    tmp_path: Path, certs: Certs, keyring: Path, replicas: list[InProcessReplica]
) -> None:
    """Regression: an unreachable replica showed only as ``healthy 0``; the reason was in no log line."""
    good = InProcessReplica(keyring, certs, allow=(RELAY_ALLOW,)).start()
    foreign = certs.foreign_ca.issue("replica-foreign", ips=("127.0.0.1",), server=True)
    wrong_ca = InProcessReplica(keyring, certs, allow=(RELAY_ALLOW,), server=foreign).start()
    replicas += [good, wrong_ca]
    refused = f"127.0.0.1:{free_port()}"  # nothing listens there
    unresolvable = "no-such-replica.invalid:9443"
    live = tmp_path / "live"
    live.mkdir()
    _install(certs.relay, live)
    shutil.copy(certs.ca.path, live / "ca.crt")
    health = free_port()
    relay = _relay(
        tmp_path, certs, live, [good.target, unresolvable, refused, wrong_ca.target], health
    ).start()
    expected = {unresolvable: "dns", refused: "refused", wrong_ca.target: "tls"}
    try:
        wait_until(lambda: _healthy_metric(health, good.target) == 1.0, bound=30)
        wait_until(
            lambda: expected.keys() <= {e["upstream"] for e in _events(relay, "replica down")}, bound=30
        )
        good.stop()  # the replica dies
        wait_until(lambda: good.target in {e["upstream"] for e in _events(relay, "replica down")}, bound=30)
        good.start()  # and returns on the same address
        wait_until(lambda: good.target in {e["upstream"] for e in _events(relay, "replica back")}, bound=30)
        _c, metrics = _get(health, "/metrics")
    finally:
        assert relay.stop() == 0, relay.output()
    down: dict[str, dict[str, Any]] = {}
    for event in _events(relay, "replica down"):
        down.setdefault(event["upstream"], event)
    for upstream, reason in expected.items():
        assert down[upstream]["reason"] == reason, down[upstream]
    assert "does not resolve" in down[unresolvable]["detail"]
    assert "connection refused" in down[refused]["detail"]
    assert "TLS handshake failed" in down[wrong_ca.target]["detail"]
    assert down[good.target]["reason"] in ("refused", "closed", "unhealthy")  # it was stopped under load
    back = next(e for e in _events(relay, "replica back") if e["upstream"] == good.target)
    assert back["down_seconds"] > 0
    assert f'kubeshield_relay_upstream_failures_total{{reason="dns",upstream="{unresolvable}"}}' in metrics
    # each state change is logged once, not on every check round (0.2 s)
    assert len([e for e in _events(relay, "replica down") if e["upstream"] == unresolvable]) == 1
