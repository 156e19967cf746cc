"""Endpoint parsing like kube-apiserver, and safe socket-path preparation."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeshield.errors import ConfigError
from kubeshield.kms._socket import grpc_address, parse_endpoint, prepare_socket_path, socket_endpoint_url


@pytest.mark.parametrize(
    ("endpoint", "path"),
    [
        ("unix:///var/run/kms.sock", "/var/run/kms.sock"),
        ("unix:/var/run/kms.sock", "/var/run/kms.sock"),
        ("unix:///@kms", "@kms"),
        ("/abs/kms.sock", "/abs/kms.sock"),
    ],
)
def test_parse_endpoint(endpoint: str, path: str) -> None:
    assert parse_endpoint(endpoint) == path


def test_relative_plain_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_endpoint("sub/kms.sock") == str(tmp_path / "sub" / "kms.sock")


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("unix://var/run/kms.sock", "three slashes"),
        ("tcp://127.0.0.1:80", "only unix"),
        ("http:/x", "only unix"),
        ("", "empty"),
        ("unix:///@", "no name"),
    ],
)
def test_parse_endpoint_rejects(endpoint: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_endpoint(endpoint)


@given(
    st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1), min_size=1, max_size=5)
)
def test_url_round_trip(parts: list[str]) -> None:
    path = "/" + "/".join(parts)
    if path.startswith("/@"):
        return
    assert parse_endpoint(socket_endpoint_url(path)) == os.path.abspath(path)
    assert socket_endpoint_url(path).startswith("unix:///")


def test_grpc_address() -> None:
    assert grpc_address("/a/b.sock") == "unix:/a/b.sock"
    assert grpc_address("@kms") == "unix-abstract:kms"


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        prepare_socket_path(str(tmp_path / "nope" / "kms.sock"))


def test_regular_file_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "kms.sock"
    path.write_bytes(b"important")
    with pytest.raises(ConfigError, match="not a socket"):
        prepare_socket_path(str(path))
    assert path.read_bytes() == b"important"


def test_stale_socket_is_removed(tmp_path: Path) -> None:
    path = str(tmp_path / "kms.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.close()  # file stays, nobody listens
    assert os.path.exists(path)
    prepare_socket_path(path)
    assert not os.path.exists(path)


def test_live_socket_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "kms.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(1)
        with pytest.raises(ConfigError, match="already listening"):
            prepare_socket_path(path)
        assert os.path.exists(path)
    finally:
        sock.close()


@pytest.mark.parametrize("endpoint", ["unix:///@kubeshield", "unix:///@kms-v1"])
def test_abstract_sockets_are_never_served(endpoint: str) -> None:
    """Issue 15 item 2: an abstract name has no permissions and the pods run with hostNetwork."""
    with pytest.raises(ConfigError, match="abstract sockets have no filesystem permissions"):
        prepare_socket_path(parse_endpoint(endpoint))


def test_the_plugin_and_the_relay_refuse_abstract_sockets_before_binding(tmp_path: Path) -> None:
    from kubeshield.keys.testing import InMemoryBackend
    from kubeshield.kms.relay_server import RelayServer
    from kubeshield.kms.server import KMSServer
    from kubeshield.kms.service import KMSService

    service = KMSService(InMemoryBackend())
    try:
        with pytest.raises(ConfigError, match="socket '@kms' refused"):
            KMSServer(service, socket="unix:///@kms")
        with pytest.raises(ConfigError, match="v1 socket '@kms-v1' refused"):
            KMSServer(service, socket=str(tmp_path / "kms.sock"), v1_socket="unix:///@kms-v1")
    finally:
        service.close()
    with pytest.raises(ConfigError, match="socket '@relay' refused"):
        RelayServer(None, socket="unix:///@relay")  # type: ignore[arg-type]  # refused before it is used
    assert list(tmp_path.iterdir()) == []
