"""Reading a kubeconfig's credential in every form a user entry can hold it (kubeconfig_import)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeshield.access.kubeconfig_import import read_kubeconfig_credentials
from kubeshield.errors import ConfigError
from tests.support.access_agent import cert_and_key


def _write(
    path: Path,
    users: dict[str, dict[str, Any]],
    *,
    cluster: dict[str, Any] | None = None,
    current: str | None = None,
) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster or {"server": "https://10.0.0.1:6443"}}],
        "users": [{"name": name, "user": body} for name, body in users.items()],
        "contexts": [
            {"name": f"ctx-{name}", "context": {"cluster": "c", "user": name, "namespace": "ns"}}
            for name in users
        ],
        "current-context": current or f"ctx-{next(iter(users))}",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_inline_certificate_and_key_data(tmp_path: Path) -> None:
    cert, key = cert_and_key("alice")
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    ca, _ = cert_and_key("ca")
    path = _write(
        tmp_path / "kc",
        {"u": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}},
        cluster={
            "server": "https://10.0.0.1:6443",
            "certificate-authority-data": b64(ca),
            "tls-server-name": "api.internal",
        },
    )
    found = read_kubeconfig_credentials(path)
    (item,) = found.contexts
    c = item.credential
    assert (c.context, c.server, c.kind, c.subject) == (
        "ctx-u",
        "https://10.0.0.1:6443",
        "client-certificate",
        "alice",
    )
    assert c.client_cert_pem == cert and c.client_key_pem == key and c.ca_pem == ca
    assert c.tls_server_name == "api.internal" and c.expires_at is not None
    assert item.secret_files == () and item.namespace == "ns"


def test_certificate_and_key_files_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    cert, key = cert_and_key("bob")
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "bob.crt").write_bytes(cert)
    (tmp_path / "pki" / "bob.key").write_bytes(key)
    (tmp_path / "pki" / "ca.crt").write_bytes(cert)
    path = _write(
        tmp_path / "kc",
        {"u": {"client-certificate": "pki/bob.crt", "client-key": "pki/bob.key"}},
        cluster={"server": "https://h:6443", "certificate-authority": "pki/ca.crt"},
    )
    (item,) = read_kubeconfig_credentials(path).contexts
    assert item.credential.client_key_pem == key and item.credential.ca_pem == cert
    assert item.secret_files == (tmp_path / "pki" / "bob.key",)
    assert set(item.public_files) == {tmp_path / "pki" / "bob.crt", tmp_path / "pki" / "ca.crt"}


def _jwt(claims: str) -> str:
    enc = lambda s: base64.urlsafe_b64encode(s.encode()).decode().rstrip("=")  # noqa: E731
    header = enc('{"alg":"RS256"}')
    return f"{header}.{enc(claims)}.c2ln"


def test_a_token_and_its_jwt_expiry_and_subject(tmp_path: Path) -> None:
    token = _jwt('{"sub":"system:serviceaccount:a:b","exp":1893456000}')
    (item,) = read_kubeconfig_credentials(_write(tmp_path / "kc", {"u": {"token": token}})).contexts
    assert item.credential.token == token and item.credential.kind == "token"
    assert item.credential.subject == "system:serviceaccount:a:b"
    assert item.credential.expires_at is not None and item.credential.expires_at.year == 2030


def test_an_opaque_token_file_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("opaque-token-value\n")
    (item,) = read_kubeconfig_credentials(_write(tmp_path / "kc", {"u": {"tokenFile": "tok"}})).contexts
    assert item.credential.token == "opaque-token-value"
    assert item.credential.expires_at is None and item.secret_files == (tmp_path / "tok",)


@pytest.mark.parametrize(
    ("user", "cluster", "reason"),
    [
        ({"exec": {"command": "aws"}}, None, "exec plugin"),
        ({"auth-provider": {"name": "oidc"}}, None, "auth-provider \\(oidc\\)"),
        ({"username": "a", "password": "b"}, None, "basic authentication"),
        ({}, None, "holds no credential"),
        ({"token": "t"}, {"server": "http://h"}, "must be an https:// URL"),
        (
            {"token": "t"},
            {"server": "https://h", "insecure-skip-tls-verify": True},
            "insecure-skip-tls-verify",
        ),
        ({"client-certificate-data": "bm90"}, None, "client-key\\(-data\\) is missing"),
        ({"client-key-data": "***"}, None, "not valid base64"),
        ({"tokenFile": "missing"}, None, "cannot read"),
    ],
)
def test_what_cannot_be_imported_is_named(
    tmp_path: Path, user: dict[str, Any], cluster: Any, reason: str
) -> None:
    path = _write(tmp_path / "kc", {"u": user}, cluster=cluster)
    with pytest.raises(ConfigError, match=reason) as caught:
        read_kubeconfig_credentials(path)
    assert str(path) in str(caught.value)


def test_a_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    cert, _ = cert_and_key()
    _, other_key = cert_and_key()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    path = _write(
        tmp_path / "kc", {"u": {"client-certificate-data": b64(cert), "client-key-data": b64(other_key)}}
    )
    with pytest.raises(ConfigError, match="does not belong") as caught:
        read_kubeconfig_credentials(path)
    assert "PRIVATE" not in str(caught.value)


def test_contexts_by_name_and_the_ones_left_behind(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "kc", {"a": {"token": "ta"}, "b": {"token": "tb"}, "x": {"exec": {"command": "x"}}}
    )
    found = read_kubeconfig_credentials(path)
    assert [c.credential.context for c in found.contexts] == ["ctx-a"]
    assert found.other_secret_contexts == ("ctx-b", "ctx-x")
    both = read_kubeconfig_credentials(path, contexts=["ctx-a", "ctx-b"])
    assert [c.credential.token for c in both.contexts] == ["ta", "tb"]
    with pytest.raises(ConfigError, match="no context 'nope'"):
        read_kubeconfig_credentials(path, contexts=["nope"])


def test_not_a_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "kc").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="not a kubeconfig"):
        read_kubeconfig_credentials(tmp_path / "kc")
    (tmp_path / "kc").write_text("a: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_kubeconfig_credentials(tmp_path / "kc")
