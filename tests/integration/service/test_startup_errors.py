"""Bad TLS material or flags at startup: a clear error naming the file and the problem, exit 1 (or 2)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from kubeshield.cli import main
from tests.support.service import Certs, make_certs


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "pki")


def _serve(tmp_path: Path, *, cert: Path, key: Path, ca: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        "kms", "serve", "--keyring", str(tmp_path / "keyring"), "--create-keyring", "--health-addr", "",
        "--listen", "tcp://127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key),
        "--client-ca", str(ca), "--allow", "dns:relay.kubeshield.test",
        *extra,
    ]  # fmt: skip


def _case(tmp_path: Path, certs: Certs, case: str) -> tuple[list[str], str]:
    server, ca = certs.server, certs.ca.path
    if case == "missing-cert":
        return _serve(
            tmp_path, cert=tmp_path / "nope.crt", key=server.key, ca=ca
        ), "cannot read TLS certificate"
    if case == "cert-not-pem":
        bad = tmp_path / "bad.crt"
        bad.write_text("hello\n")
        return _serve(tmp_path, cert=bad, key=server.key, ca=ca), "holds no PEM certificate"
    if case == "key-mismatch":
        return _serve(
            tmp_path, cert=server.cert, key=certs.relay.key, ca=ca
        ), "does not match the certificate"
    if case == "key-not-a-key":
        return _serve(
            tmp_path, cert=server.cert, key=server.cert, ca=ca
        ), "not an unencrypted PEM private key"
    if case == "expired":
        now = dt.datetime.now(dt.UTC)
        old = certs.ca.issue("old", ips=("127.0.0.1",), server=True, valid_from=now - dt.timedelta(days=3),
                             valid_until=now - dt.timedelta(days=1))  # fmt: skip
        return _serve(tmp_path, cert=old.cert, key=old.key, ca=ca), "expired at"
    if case == "ca-is-a-leaf":
        return _serve(tmp_path, cert=server.cert, key=server.key, ca=certs.relay.cert), "not a CA"
    if case == "bad-listen":
        args = _serve(tmp_path, cert=server.cert, key=server.key, ca=ca)
        args[args.index("tcp://127.0.0.1:0")] = "127.0.0.1:9443"
        return args, "must be tcp://HOST:PORT"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "missing-cert",
        "cert-not-pem",
        "key-mismatch",
        "key-not-a-key",
        "expired",
        "ca-is-a-leaf",
        "bad-listen",
    ],
)
def test_bad_tls_material_is_a_clear_startup_error(
    tmp_path: Path, certs: Certs, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args, message = _case(tmp_path, certs, case)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "PRIVATE KEY" not in err  # never echo key material
    assert not (tmp_path / "keyring").exists()  # nothing was created


def test_listen_needs_all_three_tls_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["kms", "serve", "--keyring", str(tmp_path / "k"), "--listen", "tcp://127.0.0.1:0"])
    assert code == 2
    assert "--tls-cert, --tls-key, --client-ca" in capsys.readouterr().err


def test_relay_with_bad_upstream_url(
    tmp_path: Path, certs: Certs, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([
        "kms", "relay", "--socket", str(tmp_path / "r.sock"), "--upstream", "http://127.0.0.1:1",
        "--tls-cert", str(certs.relay.cert), "--tls-key", str(certs.relay.key), "--ca", str(certs.ca.path),
    ])  # fmt: skip
    assert code == 1
    assert "must be https://HOST:PORT" in capsys.readouterr().err


def _allow_case(args: list[str], case: str) -> list[str]:
    i = args.index("--allow")
    if case == "none":
        return args[:i] + args[i + 2 :]
    if case == "both":
        return [*args, "--allow-any-client-cert"]
    if case == "untyped":
        return [*args[: i + 1], "relay.kubeshield.test", *args[i + 2 :]]
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("none", 2, "--listen requires --allow IDENTITIES"),
        ("both", 2, "contradict each other"),
        ("untyped", 1, "has no type: write dns:NAME"),
    ],
)
def test_service_mode_needs_an_explicit_allow_list_or_the_opt_in_flag(
    tmp_path: Path, certs: Certs, capsys: pytest.CaptureFixture[str], case: str, code: int, message: str
) -> None:
    """Regression: no --allow used to mean "any certificate the CA signed", silently."""
    args = _allow_case(_serve(tmp_path, cert=certs.server.cert, key=certs.server.key, ca=certs.ca.path), case)
    assert main(args) == code
    err = capsys.readouterr().err
    assert message in err
    if case == "none":
        assert "--allow-any-client-cert" in err  # the opt-in is named
    assert not (tmp_path / "keyring").exists()  # refused before anything was created
