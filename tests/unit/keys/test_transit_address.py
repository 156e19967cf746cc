"""keys.transit.address: https anywhere, http only to loopback (issue 16 item 12); call budgets."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from kubeshield.errors import BackendTimeout, ConfigError
from kubeshield.keys._transit_http import TransitHTTP
from kubeshield.keys.transit import TokenAuth, TransitKeyBackend, check_address


@pytest.mark.parametrize(
    "address",
    [
        "https://openbao:8200",
        "https://10.0.0.7:8200",
        "http://127.0.0.1:8200",
        "http://127.1.2.3:8200",
        "http://[::1]:8200",
        "http://localhost:8200",
        "http://LOCALHOST:8200/",
    ],
)
def test_allowed_addresses(address: str) -> None:
    check_address(address)


@pytest.mark.parametrize(
    "address",
    ["http://openbao:8200", "http://10.0.0.7:8200", "http://[2001:db8::1]:8200", "http://localhost.evil:1"],
)
def test_http_to_anything_but_loopback_is_refused_naming_the_field(address: str) -> None:
    with pytest.raises(ConfigError, match=r"keys\.transit\.address: http:// is allowed for loopback"):
        check_address(address)


@pytest.mark.parametrize("address", ["openbao:8200", "ftp://openbao", "https://", "http:///x"])
def test_malformed_addresses_are_refused(address: str) -> None:
    with pytest.raises(ConfigError, match=r"keys\.transit\.address"):
        check_address(address)


def _recording(sent: list[httpx.Request], response: httpx.Response) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return response

    return httpx.MockTransport(handle)


def test_the_backend_refuses_before_any_request(tmp_path: Path) -> None:
    sent: list[httpx.Request] = []
    transport = _recording(sent, httpx.Response(500))
    (tmp_path / "t").write_text("s.token\n")
    with pytest.raises(ConfigError, match="loopback"):
        TransitKeyBackend(
            address="http://openbao:8200", key="k", auth=TokenAuth(str(tmp_path / "t")), transport=transport
        )
    assert sent == []


def test_a_call_with_no_budget_left_is_a_timeout_and_is_not_sent() -> None:
    sent: list[httpx.Request] = []
    transport = _recording(sent, httpx.Response(200, json={}))
    http = TransitHTTP(address="http://127.0.0.1:1", ca_file=None, timeout=2.0, transport=transport)
    try:
        with pytest.raises(BackendTimeout, match="budget"):
            http.request("GET", "transit/keys/k", op="read key", token="t", deadline=time.monotonic() - 1)
        assert sent == []
        assert (
            http.request("GET", "transit/keys/k", op="read key", token="t", deadline=time.monotonic() + 5)
            == {}
        )
        assert len(sent) == 1
    finally:
        http.close()
