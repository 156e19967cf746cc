"""EtcdClient against a real etcd: paging, puts, guarded Txn, errors."""

from __future__ import annotations

import pytest

from kubeshield.errors import ConfigError, EtcdError
from kubeshield.etcd.client import EtcdClient
from tests.support.etcd import EtcdServer, TLSFiles, free_port


def test_paged_range_returns_every_key_once_in_order(etcd: EtcdClient, prefix: str) -> None:
    keys = [f"{prefix}/secrets/ns/s{i:04d}".encode() for i in range(257)]
    assert etcd.put_many((k, b"v" + k) for k in reversed(keys)) == 257
    etcd.put(f"{prefix}/secrets0".encode(), b"outside the prefix")
    seen = list(etcd.iter_prefix(f"{prefix}/secrets/".encode(), page_size=10))
    assert [kv.key for kv in seen] == keys
    assert all(kv.value == b"v" + kv.key for kv in seen)


def test_pinned_walk_does_not_see_writes_made_during_it(etcd: EtcdClient, prefix: str) -> None:
    base = f"{prefix}/secrets/ns/".encode()
    etcd.put_many((base + b"a%03d" % i, b"old") for i in range(30))
    walk = etcd.iter_prefix(base, page_size=5)
    first = next(walk)
    etcd.put(base + b"a029", b"new")
    etcd.put(base + b"a100", b"added")
    rest = list(walk)
    assert first.key == base + b"a000"
    assert [kv.value for kv in rest] == [b"old"] * 29


def test_compare_and_put_refuses_a_stale_mod_revision(etcd: EtcdClient, prefix: str) -> None:
    key = f"{prefix}/secrets/ns/x".encode()
    etcd.put(key, b"one")
    kv = etcd.get(key)
    assert kv is not None
    etcd.put(key, b"two")
    written, current = etcd.compare_and_put(key, b"three", mod_revision=kv.mod_revision)
    assert not written
    assert current is not None and current.value == b"two"
    written, _ = etcd.compare_and_put(key, b"three", mod_revision=current.mod_revision)
    assert written
    got = etcd.get(key)
    assert got is not None and got.value == b"three"


def test_compare_and_put_on_a_deleted_key_reports_none(etcd: EtcdClient, prefix: str) -> None:
    key = f"{prefix}/secrets/ns/gone".encode()
    etcd.put(key, b"x")
    kv = etcd.get(key)
    assert kv is not None
    assert etcd.delete(key) == 1
    assert etcd.compare_and_put(key, b"y", mod_revision=kv.mod_revision) == (False, None)
    assert etcd.get(key) is None


def test_unreachable_etcd_is_a_clear_error() -> None:
    with pytest.raises(EtcdError, match="UNAVAILABLE") as info:
        EtcdClient([f"http://127.0.0.1:{free_port()}"], timeout=2)
    assert "127.0.0.1" in str(info.value)


def test_tls_against_a_plaintext_etcd_is_a_clear_error(etcd_server: EtcdServer) -> None:
    with pytest.raises(EtcdError, match="no etcd endpoint answered"):
        EtcdClient([etcd_server.endpoint.replace("http://", "https://")], timeout=2)


def test_second_endpoint_is_used_when_the_first_is_down(etcd_server: EtcdServer) -> None:
    with EtcdClient([f"http://127.0.0.1:{free_port()}", etcd_server.endpoint], timeout=2) as client:
        assert client.endpoint == etcd_server.endpoint
        assert client.revision() >= 1


def test_cert_without_key_is_a_config_error(tmp_path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="--cert and --key"):
        EtcdClient(["http://127.0.0.1:1"], cert=str(cert))


def test_missing_ca_file_is_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match="--cacert"):
        EtcdClient(["https://127.0.0.1:1"], cacert=str(tmp_path / "nope.pem"))


def test_tls_with_client_certificates(tls_etcd: EtcdServer, prefix: str, capsys) -> None:
    tls = tls_etcd.tls
    assert tls is not None
    with EtcdClient(
        [tls_etcd.endpoint], cacert=str(tls.ca), cert=str(tls.client_cert), key=str(tls.client_key)
    ) as client:
        client.put(f"{prefix}/secrets/ns/s".encode(), b"k8s\x00x")
    from kubeshield.cli import main

    code = main(
        [
            "etcd",
            "audit",
            "--endpoints",
            tls_etcd.endpoint,
            "--cacert",
            str(tls.ca),
            "--cert",
            str(tls.client_cert),
            "--key",
            str(tls.client_key),
            "--prefix",
            prefix,
            "-o",
            "json",
        ]
    )
    assert code == 0
    assert '"format": "plaintext"' in capsys.readouterr().out


def test_tls_without_a_client_certificate_is_refused(tls_etcd: EtcdServer) -> None:
    tls = tls_etcd.tls
    assert tls is not None
    with pytest.raises(EtcdError, match="no etcd endpoint answered"):
        EtcdClient([tls_etcd.endpoint], cacert=str(tls.ca), timeout=3)


def test_tls_with_the_wrong_ca_is_refused(tls_etcd: EtcdServer, tmp_path) -> None:
    tls = tls_etcd.tls
    assert tls is not None
    other = TLSFiles(tmp_path / "other")
    with pytest.raises(EtcdError, match="UNAVAILABLE"):
        EtcdClient(
            [tls_etcd.endpoint],
            cacert=str(other.ca),
            cert=str(tls.client_cert),
            key=str(tls.client_key),
            timeout=3,
        )


def test_plaintext_client_against_a_tls_etcd_is_refused(tls_etcd: EtcdServer) -> None:
    with pytest.raises(EtcdError):
        EtcdClient([tls_etcd.endpoint.replace("https://", "http://")], timeout=3)
