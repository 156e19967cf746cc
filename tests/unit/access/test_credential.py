"""ClusterCredential is logged by the agent (``holding %r``): its repr must never carry a secret."""

from __future__ import annotations

import datetime as dt
import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeshield.access.credential import ClusterCredential


@given(token=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=12, max_size=64))
def test_repr_and_str_hold_no_token(token: str) -> None:
    cred = ClusterCredential(context="prod", server="https://api.example:6443", token=token)
    assert token not in repr(cred) and token not in str(cred)
    assert "kind=token" in repr(cred)


def test_repr_holds_no_client_key_or_certificate() -> None:
    key = b"KEYBODY-" + secrets.token_hex(16).encode()
    cert = b"CERTBODY-" + secrets.token_hex(16).encode()
    cred = ClusterCredential(
        context="prod",
        server="https://api.example:6443",
        client_cert_pem=cert,
        client_key_pem=key,
        expires_at=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
    )
    text = repr(cred)
    assert key.decode() not in text and cert.decode() not in text
    assert "kind=client-certificate" in text and "2030-01-01" in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"server": "http://api:6443", "token": "t" * 16}, "must be https://"),
        ({"server": "https://api:6443"}, "exactly one"),
        (
            {
                "server": "https://api:6443",
                "token": "t" * 16,
                "client_cert_pem": b"c",
                "client_key_pem": b"k",
            },
            "exactly one",
        ),
        ({"server": "https://api:6443", "client_cert_pem": b"c"}, "needs both"),
        (
            {"server": "https://api:6443", "token": "t" * 16, "expires_at": dt.datetime(2030, 1, 1)},
            "timezone-aware",
        ),
    ],
)
def test_bad_credentials_are_refused_naming_the_problem(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        ClusterCredential(context="prod", **kwargs)  # type: ignore[arg-type]
    assert "t" * 16 not in str(info.value)
