"""HierarchicalBackend over a real OpenBao Transit key, including a kill-and-restart fault test."""

# ruff: noqa: F811  (pytest fixtures imported from tests.support.openbao are re-bound as arguments)

from __future__ import annotations

import base64
import re
import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeshield.errors import BackendTimeout, BackendUnavailable, InvalidCiphertext, KeyNotFound
from kubeshield.keys.base import Wrapped
from kubeshield.keys.hierarchy import LOCAL_KEK_ANNOTATION, HierarchicalBackend
from kubeshield.keys.transit import TokenAuth, TransitKeyBackend
from tests.contract.backend_contract import BackendContractTests
from tests.support.openbao import (  # noqa: F401
    BaoServer,
    openbao,
    start_persistent_server,
    transit_key,
    write_secret_file,
)


def _transit(server: BaoServer, key: str, tmp_path: Path, **kwargs) -> TransitKeyBackend:
    token = write_secret_file(tmp_path / f"t-{secrets.token_hex(3)}", server.root_token)
    return TransitKeyBackend(address=server.address, key=key, auth=TokenAuth(token), **kwargs)


class TestHierarchyOverTransitContract(BackendContractTests):
    # The hierarchy needs its annotation (KMS v2 only); the suite's re-made Wrapped values drop
    # annotations, so without them an unknown key_id is an invalid ciphertext, and empty key_id is out.
    unknown_key_id_errors = (KeyNotFound, InvalidCiphertext)
    supports_empty_key_id = False

    @pytest.fixture
    def backend(self, openbao: BaoServer, tmp_path: Path) -> Iterator[HierarchicalBackend]:
        key = "k-" + secrets.token_hex(6)
        openbao.api("POST", f"transit/keys/{key}", {"type": "aes256-gcm96", "exportable": True})
        self._server, self._key = openbao, key
        backend = HierarchicalBackend(_transit(openbao, key, tmp_path), max_uses=5)
        yield backend
        backend.close()

    def key_material(self, backend: HierarchicalBackend) -> list[bytes]:  # type: ignore[override]
        keys = self._server.api("GET", f"transit/export/encryption-key/{self._key}")["data"]["keys"]
        return [base64.b64decode(v) for v in keys.values()]


def test_hierarchy_over_transit_saves_remote_calls(
    openbao: BaoServer, transit_key: str, tmp_path: Path
) -> None:
    remote = _transit(openbao, transit_key, tmp_path)
    try:
        writer = HierarchicalBackend(remote)
        seeds = [secrets.token_bytes(32) for _ in range(200)]
        wrapped = [writer.wrap(s, aad=b"k") for s in seeds]
        assert {w.key_id for w in wrapped} == {remote.key_id()}
        assert len({w.annotations[LOCAL_KEK_ANNOTATION] for w in wrapped}) == 1
        assert wrapped[0].annotations[LOCAL_KEK_ANNOTATION].startswith(b"vault:v1:")
        replica = HierarchicalBackend(remote)
        assert [replica.unwrap(w, aad=b"k") for w in wrapped] == seeds
        assert replica.stats().remote_unwraps == 1
        tampered = Wrapped(
            wrapped[0].ciphertext,
            wrapped[0].key_id,
            {LOCAL_KEK_ANNOTATION: wrapped[0].annotations[LOCAL_KEK_ANNOTATION][:-4] + b"AAA="},
        )
        with pytest.raises(InvalidCiphertext):
            HierarchicalBackend(remote).unwrap(tampered, aad=b"k")
        # a rotation in Bao shows up as a new key_id and a new local KEK after refresh
        openbao.api("POST", f"transit/keys/{transit_key}/rotate")
        assert remote.refresh(force=True) is True
        assert re.search(r":v2-[0-9]+$", writer.key_id())
        after = writer.wrap(b"n" * 32)
        assert after.key_id == writer.key_id()
        assert after.annotations[LOCAL_KEK_ANNOTATION].startswith(b"vault:v2:")
        assert HierarchicalBackend(remote).unwrap(wrapped[5], aad=b"k") == seeds[5]
    finally:
        remote.close()


@pytest.mark.slow
def test_openbao_killed_under_load_and_restarted(tmp_path: Path) -> None:
    """No wrong plaintext ever; cached local KEKs decrypt while Bao is down; recovery by itself."""
    server = start_persistent_server(tmp_path / "bao")
    try:
        server.enable_transit()
        server.create_key("kek")
        remote = _transit(server, "kek", tmp_path, timeout=0.5, refresh_interval=0.2)
        plugin = HierarchicalBackend(remote, max_uses=25)  # local KEKs rotate often under load
        other = HierarchicalBackend(_transit(server, "kek", tmp_path))
        warm = [(s, plugin.wrap(s, aad=b"w")) for s in (secrets.token_bytes(32) for _ in range(20))]
        cold = [(s, other.wrap(s, aad=b"c")) for s in (secrets.token_bytes(32) for _ in range(5))]
        other.close()

        stop = threading.Event()
        lock = threading.Lock()
        outcomes: Counter[str] = Counter()
        wrong: list[str] = []
        written: list[tuple[bytes, Wrapped]] = []

        def load(worker: int) -> None:
            n = 0
            while not stop.is_set() and n < 20_000:
                n += 1
                seed = secrets.token_bytes(32)
                try:
                    w = plugin.wrap(seed, aad=b"l")
                    got = plugin.unwrap(w, aad=b"l")
                    with lock:
                        written.append((seed, w))
                    if got != seed:
                        wrong.append("wrap/unwrap")
                    expected, old = warm[n % len(warm)]
                    if plugin.unwrap(old, aad=b"w") != expected:
                        wrong.append("warm unwrap")
                    outcome = "ok"
                except (BackendUnavailable, BackendTimeout) as exc:
                    outcome = type(exc).__name__
                except Exception as exc:  # anything else is a failure of this test
                    outcome = f"unexpected {type(exc).__name__}"
                with lock:
                    outcomes[outcome] += 1
                time.sleep(0.002)

        threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        server.stop(sig=signal.SIGKILL)
        # down: every cached local KEK still decrypts, cold ones fail with an availability error
        for seed, w in warm:
            assert plugin.unwrap(w, aad=b"w") == seed
        for _, w in cold:
            with pytest.raises((BackendUnavailable, BackendTimeout)):
                plugin.unwrap(w, aad=b"c")
        assert not plugin.check_health().ok
        time.sleep(1.0)
        server.restart()
        deadline = time.monotonic() + 30  # wait for recovery (a bound on the test, not an assertion)
        while not plugin.check_health().ok and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(timeout=30)

        assert plugin.check_health().ok
        assert wrong == []
        assert set(outcomes) <= {"ok", "BackendUnavailable", "BackendTimeout"}, outcomes
        assert outcomes["ok"] > 0 and outcomes["BackendUnavailable"] + outcomes["BackendTimeout"] > 0
        for seed, w in cold:
            assert plugin.unwrap(w, aad=b"c") == seed
        # everything written before, during and after the outage decrypts on a cold replica
        replica = HierarchicalBackend(remote)
        for seed, w in written:
            assert replica.unwrap(w, aad=b"l") == seed
        assert replica.stats().remote_unwraps == len(
            {w.annotations[LOCAL_KEK_ANNOTATION] for _, w in written}
        )
        plugin.close()
    finally:
        server.stop()
