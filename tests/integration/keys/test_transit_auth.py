"""Transit authentication against a real OpenBao: token files, revocation, AppRole login and renewal."""

# ruff: noqa: F811  (pytest fixtures imported from tests.support.openbao are re-bound as arguments)

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest

from kubeshield.errors import BackendAuthError
from kubeshield.keys.transit import AppRoleAuth, TokenAuth, TransitKeyBackend
from tests.support.openbao import BaoServer, openbao, transit_key, write_secret_file  # noqa: F401


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def closing():
    made: list[TransitKeyBackend] = []
    yield made.append
    for b in made:
        b.close()


def _approle(server: BaoServer, key: str, *, token_ttl: str, token_max_ttl: str) -> tuple[str, str]:
    """Enable approle (once), create a role bound to a transit policy; return (role_id, secret_id)."""
    auths = server.api("GET", "sys/auth")
    if "approle/" not in auths["data"]:
        server.api("POST", "sys/auth/approle", {"type": "approle"})
    policy = f"p-{key}"
    server.transit_policy(policy, key=key)
    role = "r-" + secrets.token_hex(4)
    server.api(
        "POST",
        f"auth/approle/role/{role}",
        {"token_policies": [policy], "token_ttl": token_ttl, "token_max_ttl": token_max_ttl},
    )
    role_id = server.api("GET", f"auth/approle/role/{role}/role-id")["data"]["role_id"]
    secret_id = server.api("POST", f"auth/approle/role/{role}/secret-id")["data"]["secret_id"]
    return role_id, secret_id


class TestTokenAuth:
    def test_revoked_token_is_an_auth_error_and_a_new_file_token_recovers(
        self, openbao: BaoServer, transit_key: str, tmp_path: Path, closing
    ) -> None:
        openbao.transit_policy(f"p-{transit_key}", key=transit_key)
        token = openbao.create_token(policies=[f"p-{transit_key}"])
        token_file = tmp_path / "token"
        write_secret_file(token_file, token)
        backend = TransitKeyBackend(address=openbao.address, key=transit_key, auth=TokenAuth(str(token_file)))
        closing(backend)
        wrapped = backend.wrap(b"a" * 32)
        openbao.revoke_token(token)
        with pytest.raises(BackendAuthError) as caught:
            backend.unwrap(wrapped)
        assert token not in str(caught.value) and token not in repr(caught.value)
        assert not backend.check_health().ok
        # an agent writes a fresh token into the file: the backend follows it without restart
        write_secret_file(token_file, openbao.create_token(policies=[f"p-{transit_key}"]))
        assert backend.unwrap(wrapped) == b"a" * 32

    def test_token_without_rights_on_the_key_is_an_auth_error(
        self, openbao: BaoServer, transit_key: str, tmp_path: Path
    ) -> None:
        token = openbao.create_token(policies=["default"])
        with pytest.raises(BackendAuthError):
            TransitKeyBackend(
                address=openbao.address,
                key=transit_key,
                auth=TokenAuth(write_secret_file(tmp_path / "t", token)),
            )

    def test_renewable_token_is_renewed_when_two_thirds_of_its_lease_passed(
        self, openbao: BaoServer, transit_key: str, tmp_path: Path, closing
    ) -> None:
        openbao.transit_policy(f"p-{transit_key}", key=transit_key)
        token = openbao.create_token(policies=[f"p-{transit_key}"], ttl="60s")
        clock = _Clock()
        backend = TransitKeyBackend(
            address=openbao.address,
            key=transit_key,
            auth=TokenAuth(write_secret_file(tmp_path / "t", token)),
            clock=clock,
        )
        closing(backend)
        assert backend.auth_status().renewals == 0
        clock.now += 41
        backend.wrap(b"r" * 32)
        status = backend.auth_status()
        assert status.renewals == 1 and status.logins == 1
        ttl = openbao.api("POST", "auth/token/lookup", {"token": token})["data"]["ttl"]
        assert ttl > 30  # renewed back towards a full lease (real time has barely moved)


class TestAppRole:
    def test_login_and_renewal(self, openbao: BaoServer, transit_key: str, tmp_path: Path, closing) -> None:
        role_id, secret_id = _approle(openbao, transit_key, token_ttl="60s", token_max_ttl="600s")
        clock = _Clock()
        backend = TransitKeyBackend(
            address=openbao.address,
            key=transit_key,
            auth=AppRoleAuth(role_id=role_id, secret_id_file=write_secret_file(tmp_path / "sid", secret_id)),
            clock=clock,
        )
        closing(backend)
        wrapped = backend.wrap(b"p" * 32)
        status = backend.auth_status()
        assert (status.method, status.logins, status.renewals) == ("approle", 1, 0)
        assert status.expires_at == pytest.approx(clock.now + 60, abs=2)
        clock.now += 45  # past 2/3 of the lease: renew-self
        assert backend.unwrap(wrapped) == b"p" * 32
        assert backend.auth_status().renewals == 1
        assert backend.check_health().ok

    def test_expired_token_is_replaced_by_a_new_login(
        self, openbao: BaoServer, transit_key: str, tmp_path: Path, closing
    ) -> None:
        role_id, secret_id = _approle(openbao, transit_key, token_ttl="2s", token_max_ttl="2s")
        frozen = _Clock()  # our clock does not move, so no renewal is attempted: the server expires it
        backend = TransitKeyBackend(
            address=openbao.address,
            key=transit_key,
            auth=AppRoleAuth(role_id=role_id, secret_id_file=write_secret_file(tmp_path / "sid", secret_id)),
            clock=frozen,
        )
        closing(backend)
        wrapped = backend.wrap(b"e" * 32)
        time.sleep(3)  # let the real lease expire (not a timed assertion)
        assert backend.unwrap(wrapped) == b"e" * 32
        assert backend.auth_status().logins == 2

    def test_wrong_secret_id_is_an_auth_error_without_the_secret(
        self, openbao: BaoServer, transit_key: str, tmp_path: Path
    ) -> None:
        role_id, _ = _approle(openbao, transit_key, token_ttl="60s", token_max_ttl="90s")
        wrong = secrets.token_hex(16)
        with pytest.raises(BackendAuthError) as caught:
            TransitKeyBackend(
                address=openbao.address,
                key=transit_key,
                auth=AppRoleAuth(role_id=role_id, secret_id_file=write_secret_file(tmp_path / "sid", wrong)),
            )
        assert wrong not in str(caught.value)
        assert role_id not in repr(AppRoleAuth(role_id=role_id, secret_id_file="f"))
