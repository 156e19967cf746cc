"""Reloading TLS material and the expiry readiness check, with real certificates and an injected clock."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kubeshield.errors import ConfigError
from kubeshield.kms.tls import ReloadingClientCredentials, ReloadingServerCredentials
from tests.support.tls import CA, Issued

HOUR = 3600.0


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return CA(tmp_path / "pki")


def _install(src: Issued, live: Path) -> None:
    for name, path in (("tls.crt", src.cert), ("tls.key", src.key)):
        tmp = live / f".{name}.tmp"
        shutil.copy(path, tmp)
        os.replace(tmp, live / name)


def _live(tmp_path: Path, ca: CA, issued: Issued) -> Path:
    live = tmp_path / "live"
    live.mkdir()
    _install(issued, live)
    shutil.copy(ca.path, live / "ca.crt")
    return live


def test_client_credentials_reload_only_a_complete_new_set(tmp_path: Path, ca: CA) -> None:
    live = _live(tmp_path, ca, ca.issue("relay", dns=("relay.test",)))
    creds = ReloadingClientCredentials(ca=live / "ca.crt", cert=live / "tls.crt", key=live / "tls.key")
    first = creds.credentials
    assert creds.poll() is None  # nothing changed
    renewed = ca.issue("relay-2", dns=("relay.test",))
    shutil.copy(renewed.cert, live / "tls.crt")  # half an update: new cert, old key
    assert creds.poll() is None and creds.failed_reloads == 1 and creds.credentials is first
    assert creds.poll() is None and creds.failed_reloads == 2  # retried, still refused
    shutil.copy(renewed.key, live / "tls.key")
    new = creds.poll()
    assert new is not None and new is creds.credentials and new is not first and creds.reloads == 1
    assert creds.poll() is None  # handed out once


def test_readiness_fails_within_the_margin_and_recovers_with_a_renewed_certificate(
    tmp_path: Path, ca: CA
) -> None:
    now = dt.datetime.now(dt.UTC)
    expiring = ca.issue("replica", ips=("127.0.0.1",), server=True, valid_until=now + dt.timedelta(hours=30))
    live = _live(tmp_path, ca, expiring)
    clock = [now.timestamp()]
    server = ReloadingServerCredentials(
        cert=live / "tls.crt", key=live / "tls.key", client_ca=live / "ca.crt",
        clock=lambda: clock[0], expiry_margin=24 * HOUR,
    )  # fmt: skip
    assert server.readiness() == (True, "ok")  # 30 h left
    clock[0] += 7 * HOUR  # 23 h left: inside the 24 h margin
    ok, why = server.readiness()
    assert not ok and "TLS serving certificate" in why and "expires at" in why and "renew it" in why
    clock[0] += 24 * HOUR
    ok, why = server.readiness()
    assert not ok and "expired at" in why
    # a renewed certificate counts as soon as it is on disk and checks out (no handshake needed)
    clock[0] = now.timestamp()
    _install(ca.issue("replica-2", ips=("127.0.0.1",), server=True), live)
    clock[0] += 31 * HOUR
    assert server.readiness() == (True, "ok")
    assert server.reloads == 1
    registry = CollectorRegistry()
    server.register_metrics(registry)
    text = generate_latest(registry).decode()
    assert 'kubeshield_tls_certificate_expiry_timestamp_seconds{role="serving"}' in text


def test_margin_zero_only_fails_once_expired_and_a_negative_margin_is_refused(tmp_path: Path, ca: CA) -> None:
    now = dt.datetime.now(dt.UTC)
    live = _live(tmp_path, ca, ca.issue("relay", valid_until=now + dt.timedelta(hours=1)))
    creds = ReloadingClientCredentials(
        ca=live / "ca.crt", cert=live / "tls.crt", key=live / "tls.key", expiry_margin=0
    )
    assert creds.readiness() == (True, "ok")
    with pytest.raises(ValueError):
        ReloadingClientCredentials(
            ca=live / "ca.crt", cert=live / "tls.crt", key=live / "tls.key", expiry_margin=-1
        )
    with pytest.raises(ConfigError, match="does not match"):  # bad material at start: fail closed
        shutil.copy(ca.issue("other").key, live / "tls.key")
        ReloadingClientCredentials(ca=live / "ca.crt", cert=live / "tls.crt", key=live / "tls.key")
