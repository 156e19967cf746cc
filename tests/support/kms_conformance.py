"""The apiserver-emulating conformance suite, runnable against any KMS socket (a plugin or a relay).

``check_v2(socket, rotate=...)`` drives the socket like one kube-apiserver (``EmulatedAPIServer``):
prime, store, rotate the KEK while serving, restart the apiserver, read everything back (stale values
through Decrypt with their old key_id), and the failure modes the apiserver relies on (a value moved
to another etcd key, a tampered encrypted DEK source, an unknown key_id, an empty ciphertext).
``check_v1(socket)`` does the v1 Version/Encrypt/Decrypt round trip. Each raises AssertionError with
what differed; they return a small report for the caller's own assertions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from kubeshield.errors import InvalidCiphertext, InvalidRequest, KeyNotFound, KubeshieldError
from kubeshield.kms.client import KMSv1Client, KMSv2Client
from tests.support.apiserver import EmulatedAPIServer, RotationRefusedError

__all__ = ["V2Report", "check_v1", "check_v2", "wait_for_status_key_change"]


@dataclass
class V2Report:
    key_ids: list[str]
    stored: int
    decrypt_calls: int


def wait_for_status_key_change(client: KMSv2Client, old: str, *, bound: float = 60.0) -> str:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        key_id = client.status().key_id
        if key_id != old:
            return key_id
        time.sleep(0.05)
    raise AssertionError(f"Status key_id did not change within {bound}s")


def check_v2(socket: str, *, rotate: Callable[[], object], timeout: float = 3.0) -> V2Report:
    """The v2 flow (module docstring). ``rotate`` makes the KEK change behind the socket."""
    with KMSv2Client(socket, timeout=timeout) as client:
        api = EmulatedAPIServer(client)
        first = api.probe()
        secrets = {f"/registry/secrets/conf/s{i}": os.urandom(64) for i in range(8)}
        for key, value in secrets.items():
            stored = api.store(key, value)
            assert stored.startswith(b"k8s:enc:kms:v2:kubeshield:"), "wrong storage prefix"
            assert value not in stored, "plaintext visible in the stored value"
        api.probe()
        assert api.encrypt_calls == 1, "a probe with an unchanged key_id must not Encrypt"

        rotate()
        new = wait_for_status_key_change(client, first.key_id)
        assert new not in api.key_ids_seen, "a rotated key_id must be new"
        for _ in range(50):  # the apiserver retries a refused rotation on its next probe
            try:
                api.probe()
                break
            except RotationRefusedError:
                time.sleep(0.1)
        assert api.state is not None and api.state.key_id == new, "the apiserver did not move to the new key"
        api.store("/registry/secrets/conf/after", b"after-rotation")

        api.restart()
        api.probe()
        for key, value in secrets.items():
            plaintext, stale = api.read(key)
            assert plaintext == value, "wrong plaintext after rotation"
            assert stale, "an old value must read as stale"
        assert api.read("/registry/secrets/conf/after") == (b"after-rotation", False)

        api.etcd["/registry/secrets/conf/moved"] = api.etcd["/registry/secrets/conf/s0"]
        try:
            api.read("/registry/secrets/conf/moved")
        except KubeshieldError as exc:
            assert "invalid ciphertext" in str(exc) or isinstance(exc, InvalidCiphertext)
        else:
            raise AssertionError("a value moved to another etcd key must not decrypt")

        state = api.state
        assert state is not None
        tampered = bytearray(state.encrypted_dek_source)
        tampered[-1] ^= 1
        _expect(
            InvalidCiphertext,
            lambda: client.decrypt(bytes(tampered), key_id=state.key_id, annotations=state.annotations),
        )
        _expect(KeyNotFound, lambda: client.decrypt(state.encrypted_dek_source, key_id="local:v99:00"))
        _expect(InvalidRequest, lambda: client.decrypt(b"", key_id=state.key_id))
        return V2Report(key_ids=list(api.key_ids_seen), stored=len(api.etcd), decrypt_calls=api.decrypt_calls)


def check_v1(socket: str, *, timeout: float = 3.0) -> None:
    with KMSv1Client(socket, timeout=timeout) as client:
        assert client.version().version == "v1beta1"
        dek = os.urandom(32)
        cipher = client.encrypt(dek)
        assert dek not in cipher
        assert client.decrypt(cipher) == dek
        _expect(InvalidCiphertext, lambda: client.decrypt(cipher[:-1] + bytes([cipher[-1] ^ 1])))


def _expect(kind: type[BaseException], call: Callable[[], object]) -> None:
    try:
        call()
    except kind:
        return
    except Exception as exc:
        raise AssertionError(f"expected {kind.__name__}, got {type(exc).__name__}") from exc
    raise AssertionError(f"expected {kind.__name__}, the call succeeded")
