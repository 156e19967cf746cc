"""The KMS endpoint check that runs before a walk, the endpoint override, abstract sockets for writes."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeshield.config.encryption import parse_encryption_config
from kubeshield.errors import ConfigError
from kubeshield.etcd.kms_check import (
    KMSUnreachable,
    check_kms_providers,
    client_endpoint,
    endpoint_problem,
    kms_providers_for,
    refuse_abstract_for_writes,
)
from kubeshield.etcd.transformers import ChainSet
from tests.support.etcd import short_socket_dir


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = short_socket_dir()
    yield path
    shutil.rmtree(path)


def _listening(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(4)
    return sock


def test_each_problem_is_named(sockdir: Path) -> None:
    assert endpoint_problem(f"unix://{sockdir}/none.sock") == f"socket {sockdir}/none.sock does not exist"
    regular = sockdir / "file.sock"
    regular.write_bytes(b"")
    assert endpoint_problem(f"unix://{regular}") == f"{regular} exists but is not a socket"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sockdir / "stale.sock"))
    stale.close()  # the file stays, nobody listens
    assert "connection refused" in (endpoint_problem(f"unix:{sockdir}/stale.sock") or "")
    live = _listening(str(sockdir / "live.sock"))
    try:
        assert endpoint_problem(f"unix://{sockdir}/live.sock") is None
    finally:
        live.close()


def test_abstract_endpoints_are_probed_too() -> None:
    name = f"ks-test-{uuid.uuid4().hex[:12]}"
    assert "abstract socket @" in (endpoint_problem(f"unix:///@{name}") or "")
    live = _listening("\0" + name)
    try:
        assert endpoint_problem(f"unix:///@{name}") is None
    finally:
        live.close()


def test_endpoints_are_dialled_as_the_apiserver_reads_them() -> None:
    assert client_endpoint("unix:///var/run/kms.sock") == "unix:///var/run/kms.sock"
    assert client_endpoint("unix:/var/run/kms.sock") == "unix:///var/run/kms.sock"
    assert client_endpoint("unix://var/run/kms.sock") == "unix:///run/kms.sock"  # Go: 'var' is the host
    assert client_endpoint("unix:///@kms") == "unix:///@kms"


def _config(endpoint: str, *, other: str = "unix:///nonexistent/other.sock"):
    key = base64.b64encode(bytes(32)).decode()
    return parse_encryption_config(
        {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "EncryptionConfiguration",
            "resources": [
                {
                    "resources": ["secrets"],
                    "providers": [
                        {"kms": {"apiVersion": "v2", "name": "kubeshield", "endpoint": endpoint}},
                        {"aesgcm": {"keys": [{"name": "k", "secret": key}]}},
                    ],
                },
                {
                    "resources": ["configmaps"],
                    "providers": [{"kms": {"apiVersion": "v2", "name": "other", "endpoint": other}}],
                },
            ],
        }
    )


def test_only_the_providers_of_the_walk_are_checked(sockdir: Path) -> None:
    live = _listening(str(sockdir / "kms.sock"))
    try:
        config = _config(f"unix://{sockdir}/kms.sock")
        check_kms_providers(kms_providers_for(config, ["secrets"]))  # 'other' is not needed
        with pytest.raises(KMSUnreachable) as caught:
            check_kms_providers(kms_providers_for(config, None))
        message = str(caught.value)
        assert (
            "KMS provider 'other' (unix:///nonexistent/other.sock): "
            "socket /nonexistent/other.sock does not exist" in message
        )
        assert "kubeshield" not in message.split(".")[0]
        assert "--kms-endpoint other=unix:///PATH" in message and "--skip-kms" in message
        check_kms_providers(kms_providers_for(config, None), skip=["other"])
    finally:
        live.close()


def test_the_endpoint_override_keeps_the_name_and_moves_the_socket(sockdir: Path) -> None:
    config = _config("unix:///var/run/kubeshield/kms.sock")
    moved = config.with_kms_endpoints({"kubeshield": f"unix://{sockdir}/kms.sock"})
    providers = {p.name: p for p in moved.kms_providers()}
    assert providers["kubeshield"].endpoint == f"unix://{sockdir}/kms.sock"
    assert providers["other"].endpoint == "unix:///nonexistent/other.sock"
    assert config.kms_providers()[0].endpoint == "unix:///var/run/kubeshield/kms.sock"  # unchanged
    assert moved.providers_for("secrets")[0].endpoint == f"unix://{sockdir}/kms.sock"
    with pytest.raises(ConfigError, match=r"no KMS provider named 'kms' \(have: kubeshield, other\)"):
        config.with_kms_endpoints({"kms": "unix:///x.sock"})
    with pytest.raises(ConfigError, match="only unix is supported"):
        config.with_kms_endpoints({"kubeshield": "tcp://127.0.0.1:1"})


def test_writing_through_an_abstract_socket_is_refused() -> None:
    config = _config("unix:///@kubeshield")
    provider = config.kms_providers()[0]
    with pytest.raises(ConfigError, match="refusing to write through the abstract socket"):
        refuse_abstract_for_writes(provider)
    chains = ChainSet(config)
    with pytest.raises(ConfigError, match="plaintext DEK seed"):
        chains.writer("secrets", "kubeshield")  # before any Encrypt is sent
    refuse_abstract_for_writes(_config("unix:///var/run/k.sock").kms_providers()[0])  # a path is fine


def test_permission_denied_is_named_for_another_user(sockdir: Path) -> None:
    """Run as uid 65534: a root-only socket directory is 'permission denied', not a timeout."""
    private = sockdir / "private"
    private.mkdir(mode=0o700)
    live = _listening(str(private / "kms.sock"))
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.setgid(65534)
                os.setuid(65534)
                os.write(write, (endpoint_problem(f"unix://{private}/kms.sock") or "none").encode())
            finally:
                os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        with os.fdopen(read) as fh:
            answer = fh.read()
        assert "permission denied" in answer
    finally:
        live.close()


def test_the_range_allocations_need_the_services_providers() -> None:
    config = parse_encryption_config(
        {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "EncryptionConfiguration",
            "resources": [
                {
                    "resources": ["services"],
                    "providers": [{"kms": {"apiVersion": "v2", "name": "svc", "endpoint": "unix:///x.sock"}}],
                }
            ],
        }
    )
    assert [p.name for p in kms_providers_for(config, ["serviceipallocations"])] == ["svc"]
    assert kms_providers_for(config, ["secrets"]) == ()
