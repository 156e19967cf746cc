"""Fixtures for the key backends against real components. Each fixture is self-contained.

- ``softhsm``/``pkcs11_backend_factory``: SoftHSM2 tokens in a temp dir (tests/support/softhsm.py).
- ``moto_server``/``aws_env``/``kms_key_arn``/``awskms_backend_factory``: moto in server mode on
  127.0.0.1 (tests/support/moto.py), dummy AWS credentials in the environment of each test only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.moto import MotoServer, create_kms_key, dummy_aws_env
from tests.support.softhsm import SoftHsm, start_softhsm, unique_label

PKCS11_TOKENS = ["ks-main", "ks-other", "ks-pin"]


# -- SoftHSM2 / PKCS#11 ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    """One SoftHSM2 token directory for the session, with the tokens in PKCS11_TOKENS.

    ``ks-pin`` is reserved for wrong-PIN tests: PKCS#11 login is per process, so no other test may be
    logged in to it when a wrong PIN is tried.
    """
    return start_softhsm(tmp_path_factory.mktemp("softhsm"), PKCS11_TOKENS)


@pytest.fixture
def pkcs11_backend_factory(softhsm: SoftHsm) -> Iterator[Callable[..., Any]]:
    """``make(token="ks-main", key_label=<fresh>, pin=<the token's>, init=True, **kw)``; closes them all."""
    from kubeshield.keys.pkcs11 import Pkcs11KeyBackend

    made: list[Pkcs11KeyBackend] = []

    def make(
        *,
        token: str = "ks-main",
        key_label: str | None = None,
        pin: bytes | None = None,
        init: bool = True,
        **kw: Any,
    ) -> Pkcs11KeyBackend:
        kwargs: dict[str, Any] = {
            "module": softhsm.module,
            "token": token,
            "pin": softhsm.tokens[token].pin if pin is None and token in softhsm.tokens else (pin or b"0000"),
            "key_label": key_label or unique_label(),
            **kw,
        }
        backend = Pkcs11KeyBackend.init(**kwargs) if init else Pkcs11KeyBackend(**kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


# -- moto / AWS KMS -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A moto server shared by the session (tests that kill or freeze a server start their own)."""
    server = MotoServer(log_dir=Path(tmp_path_factory.mktemp("moto")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_moto_server(tmp_path: Path) -> Iterator[MotoServer]:
    """A moto server for one test, free to be killed, frozen and restarted."""
    server = MotoServer(log_dir=tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials and no shared AWS config, for this test only."""
    for name, value in dummy_aws_env().items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


@pytest.fixture
def kms_key_arn(moto_server: MotoServer, aws_env: None) -> str:
    """A fresh symmetric KMS key on the shared moto server."""
    return create_kms_key(moto_server.endpoint)


@pytest.fixture
def awskms_backend_factory(aws_env: None) -> Iterator[Callable[..., Any]]:
    """``make(endpoint=..., key_id=..., **kw)`` -> AwsKmsKeyBackend; closes them all."""
    from kubeshield.keys.awskms import AwsKmsKeyBackend

    made: list[AwsKmsKeyBackend] = []

    def make(*, endpoint: str, key_id: str, region: str = "us-east-1", **kw: Any) -> AwsKmsKeyBackend:
        backend = AwsKmsKeyBackend(key_id=key_id, region=region, endpoint_url=endpoint, **kw)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()
