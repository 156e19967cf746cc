"""The PKCS#11 backend against a real SoftHSM2 token: contract behaviour, faults and rotation."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from pkcs11 import Attribute, ObjectClass

from kubeshield.config.settings import Pkcs11Settings
from kubeshield.errors import (
    BackendAuthError,
    BackendUnavailable,
    ConfigError,
    InvalidCiphertext,
    KeyNotFound,
)
from kubeshield.keys.base import Refreshable, Rotatable, Wrapped
from kubeshield.keys.pkcs11 import PIN_ENV, Pkcs11KeyBackend, read_pin
from tests.support.softhsm import SoftHsm, run_python, unique_label

DEK = bytes(range(32))


# -- contract behaviour (until tests/contract/backend_contract.py lands) -----------------------------------


def test_round_trip_binds_aad_and_key_id(pkcs11_backend_factory: Any) -> None:
    backend = pkcs11_backend_factory()
    wrapped = backend.wrap(DEK, aad=b"/registry/secrets/ns/a")
    assert wrapped.key_id == backend.key_id()
    assert backend.unwrap(wrapped, aad=b"/registry/secrets/ns/a") == DEK
    # KMS v1 sends no key_id: the version in the header finds the key
    assert backend.unwrap(Wrapped(wrapped.ciphertext, ""), aad=b"/registry/secrets/ns/a") == DEK
    with pytest.raises(InvalidCiphertext):
        backend.unwrap(wrapped, aad=b"/registry/secrets/ns/b")
    with pytest.raises(InvalidCiphertext):
        backend.unwrap(wrapped)


def test_key_id_shape_and_ciphertext_layout(pkcs11_backend_factory: Any, softhsm: SoftHsm) -> None:
    label = unique_label()
    backend = pkcs11_backend_factory(key_label=label)
    key_id = backend.key_id()
    parts = key_id.split(":")
    assert parts[0] == "pkcs11" and parts[2] == label and re.fullmatch(r"v1-[0-9a-f]{16}", parts[3])
    assert parts[1] and parts[1] != "ks-main"  # the token serial, not its label
    assert key_id.isascii() and key_id.isprintable() and len(key_id) <= 1024
    assert softhsm.tokens["ks-main"].pin.decode() not in key_id
    ct = backend.wrap(DEK).ciphertext
    assert ct[0] == 0x01 and int.from_bytes(ct[1:5], "big") == 1
    assert ct[5:13].hex() == parts[3][3:]  # the key object's tag
    assert len(ct) == 1 + 4 + 8 + 12 + len(DEK) + 16
    # fresh IV each time
    assert backend.wrap(DEK).ciphertext[13:25] != ct[13:25]


def test_iv_comes_from_injected_rng(pkcs11_backend_factory: Any) -> None:
    calls: list[int] = []

    def rng(n: int) -> bytes:
        calls.append(n)
        return bytes([len(calls)]) * n

    backend = pkcs11_backend_factory(rng=rng)
    assert calls == [8]  # the first key object's tag
    assert backend.key_id().endswith(":v1-" + "01" * 8)
    ct = backend.wrap(DEK).ciphertext
    assert calls == [8, 12]
    assert ct[13:25] == b"\x02" * 12
    assert backend.unwrap(Wrapped(ct, backend.key_id())) == DEK


def test_every_tampered_byte_is_invalid_ciphertext(pkcs11_backend_factory: Any) -> None:
    backend = pkcs11_backend_factory()
    wrapped = backend.wrap(DEK, aad=b"x")
    ct = wrapped.ciphertext
    for i in range(len(ct)):
        bad = ct[:i] + bytes([ct[i] ^ 0x01]) + ct[i + 1 :]
        with pytest.raises(InvalidCiphertext):
            backend.unwrap(Wrapped(bad, wrapped.key_id), aad=b"x")
    for bad in (ct[:-1], ct + b"\x00", b"", ct[:25]):
        with pytest.raises(InvalidCiphertext):
            backend.unwrap(Wrapped(bad, wrapped.key_id), aad=b"x")
    assert backend.unwrap(wrapped, aad=b"x") == DEK  # the session survived every failure


def test_health_is_a_real_round_trip(pkcs11_backend_factory: Any) -> None:
    backend = pkcs11_backend_factory()
    health = backend.check_health()
    assert health.ok and health.key_id == backend.key_id() and health.detail == "ok"
    backend.close()
    after = backend.check_health()
    assert not after.ok and after.key_id is None
    with pytest.raises(BackendUnavailable):
        backend.wrap(DEK)


def test_threads_share_one_backend(pkcs11_backend_factory: Any) -> None:
    backend = pkcs11_backend_factory()
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(20):
                pt = bytes([i, j]) * 16
                aad = f"{i}/{j}".encode()
                assert backend.unwrap(backend.wrap(pt, aad=aad), aad=aad) == pt
        except BaseException as exc:  # collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_key_objects_are_sensitive_and_never_extractable(
    pkcs11_backend_factory: Any, softhsm: SoftHsm
) -> None:
    label = unique_label()
    pkcs11_backend_factory(key_label=label)
    token = pkcs11.lib(softhsm.module).get_token(token_label="ks-main")
    with token.open() as session:  # login state is per process: the backend's login covers us
        (key,) = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}))
        assert re.fullmatch(rb"kubeshield:v1:[0-9a-f]{16}", key[Attribute.ID])
        assert key[Attribute.SENSITIVE] is True and key[Attribute.ALWAYS_SENSITIVE] is True
        assert key[Attribute.EXTRACTABLE] is False and key[Attribute.NEVER_EXTRACTABLE] is True
        assert key[Attribute.VALUE_LEN] == 32 and key[Attribute.TOKEN] is True
        assert key[Attribute.WRAP] is False and key[Attribute.DERIVE] is False
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[Attribute.VALUE]


# -- rotation ---------------------------------------------------------------------------------------------


def test_rotate_keeps_old_versions_and_never_reuses_ids(pkcs11_backend_factory: Any) -> None:
    backend: Pkcs11KeyBackend = pkcs11_backend_factory()
    assert isinstance(backend, Rotatable)
    assert isinstance(backend, Refreshable)
    seen = [backend.key_id()]
    wrapped = [backend.wrap(DEK, aad=b"0")]
    for i in range(1, 4):
        new_id = backend.rotate()
        assert new_id == backend.key_id() and new_id not in seen
        assert f":v{i + 1}-" in new_id
        seen.append(new_id)
        wrapped.append(backend.wrap(DEK, aad=str(i).encode()))
    for i, w in enumerate(wrapped):
        assert w.key_id == seen[i]
        assert backend.unwrap(w, aad=str(i).encode()) == DEK
    # a ciphertext relabelled with another version's key_id fails
    with pytest.raises(InvalidCiphertext):
        backend.unwrap(Wrapped(wrapped[0].ciphertext, seen[1]), aad=b"0")
    assert [v.state for v in backend.key_versions()] == ["active", "active", "active", "primary"]


def test_rotation_by_another_process_is_seen_by_refresh(
    pkcs11_backend_factory: Any, softhsm: SoftHsm
) -> None:
    label = unique_label()
    running = pkcs11_backend_factory(key_label=label)
    before = running.key_id()
    old = running.wrap(DEK, aad=b"a")
    pin = softhsm.tokens["ks-main"].pin
    out = run_python(
        f"""
        from kubeshield.keys.pkcs11 import Pkcs11KeyBackend
        b = Pkcs11KeyBackend(module={softhsm.module!r}, token="ks-main", pin={pin!r}, key_label={label!r})
        w = b.wrap(b"\\x07" * 32, aad=b"child")
        print(b.rotate())
        print(w.ciphertext.hex())
        b.close()
        """
    )
    new_id, child_ct = out.split()
    assert ":v2-" in new_id and new_id != before
    assert running.key_id() == before  # not seen until refresh
    assert running.refresh() is True
    assert running.key_id() == new_id
    assert running.refresh() is False
    assert running.unwrap(old, aad=b"a") == DEK
    assert running.unwrap(Wrapped(bytes.fromhex(child_ct), before), aad=b"child") == b"\x07" * 32
    # a second in-process instance (as a second replica) agrees
    second = pkcs11_backend_factory(key_label=label, init=False)
    assert second.key_id() == new_id
    assert second.unwrap(running.wrap(DEK, aad=b"z"), aad=b"z") == DEK


def test_unwrap_of_a_version_not_yet_listed_relists(pkcs11_backend_factory: Any) -> None:
    label = unique_label()
    a = pkcs11_backend_factory(key_label=label)
    b = pkcs11_backend_factory(key_label=label, init=False)
    b.rotate()
    wrapped = b.wrap(DEK)
    assert a.unwrap(wrapped) == DEK  # a learnt v2 on demand
    assert a.key_id() == b.key_id()


def test_concurrent_rotations_never_share_a_version(
    pkcs11_backend_factory: Any, softhsm: SoftHsm, tmp_path: Path
) -> None:
    """Four processes rotate the same key label at once: every returned key_id is distinct and no
    version is left with two key objects."""
    label = unique_label()
    backend = pkcs11_backend_factory(key_label=label)
    old = backend.wrap(DEK)
    pin = softhsm.tokens["ks-main"].pin
    code = f"""
import os, time
from kubeshield.errors import BackendError
from kubeshield.keys.pkcs11 import Pkcs11KeyBackend
while not os.path.exists({str(tmp_path / "go")!r}):  # start together
    time.sleep(0.005)
try:
    b = Pkcs11KeyBackend(module={softhsm.module!r}, token="ks-main", pin={pin!r}, key_label={label!r})
    print(b.rotate())
    b.close()
except BackendError:  # allowed: SoftHSM2 reports GeneralError while another process rewrites its files
    print("retry")
"""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    (tmp_path / "go").touch()
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err[-2000:]
        outputs.append(out.strip())
    results = [o for o in outputs if o != "retry"]
    assert results
    assert backend.refresh() is True
    versions = backend.key_versions()
    ids = [v.key_id for v in versions]
    assert len(ids) == len(set(ids)) == 1 + len(results)  # every created key object is distinct
    primary = [v for v in versions if v.state == "primary"]
    assert len(primary) == 1 and primary[0].key_id == backend.key_id() == ids[-1]
    # every process agrees on the primary once it sees the same objects
    assert pkcs11_backend_factory(key_label=label, init=False).key_id() == backend.key_id()
    for kid in results:  # a key_id returned by a concurrent rotate is still a key we can use
        assert kid in ids
    assert backend.unwrap(old) == DEK


# -- faults ----------------------------------------------------------------------------------------------


def test_wrong_pin_is_backend_auth_error(pkcs11_backend_factory: Any, softhsm: SoftHsm) -> None:
    with pytest.raises(BackendAuthError) as info:
        pkcs11_backend_factory(token="ks-pin", pin=b"not-the-pin")
    assert "not-the-pin" not in str(info.value)
    good = pkcs11_backend_factory(token="ks-pin")  # the right PIN still works afterwards
    assert good.unwrap(good.wrap(DEK)) == DEK


def test_second_instance_with_wrong_pin_is_refused_while_logged_in(pkcs11_backend_factory: Any) -> None:
    label = unique_label()
    pkcs11_backend_factory(key_label=label)
    with pytest.raises(BackendAuthError):
        pkcs11_backend_factory(key_label=label, pin=b"wrong-pin", init=False)


def test_missing_token_is_backend_unavailable(pkcs11_backend_factory: Any) -> None:
    with pytest.raises(BackendUnavailable):
        pkcs11_backend_factory(token="no-such-token", pin=b"1234")


def test_missing_module_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="module"):
        Pkcs11KeyBackend(module=str(tmp_path / "nope.so"), token="ks-main", pin=b"1", key_label="kek")


def test_no_key_without_init_is_key_not_found(pkcs11_backend_factory: Any) -> None:
    with pytest.raises(KeyNotFound, match="keys init"):
        pkcs11_backend_factory(init=False)


def test_init_is_idempotent(pkcs11_backend_factory: Any) -> None:
    label = unique_label()
    first = pkcs11_backend_factory(key_label=label)
    again = pkcs11_backend_factory(key_label=label)
    assert again.key_id() == first.key_id()
    assert len(again.key_versions()) == 1


def test_deleted_key_is_key_not_found(pkcs11_backend_factory: Any, softhsm: SoftHsm) -> None:
    label = unique_label()
    backend = pkcs11_backend_factory(key_label=label)
    wrapped = backend.wrap(DEK)
    pin = softhsm.tokens["ks-main"].pin.decode()
    run_python(
        f"""
        import pkcs11
        from pkcs11 import Attribute, ObjectClass
        s = pkcs11.lib({softhsm.module!r}).get_token(token_label="ks-main").open(rw=True, user_pin={pin!r})
        for o in s.get_objects({{Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: {label!r}}}):
            o.destroy()
        s.close()
        """
    )
    with pytest.raises(KeyNotFound):
        backend.unwrap(wrapped)
    with pytest.raises(InvalidCiphertext):  # without a key_id (KMS v1) it cannot be told from a forgery
        backend.unwrap(Wrapped(wrapped.ciphertext, ""))
    with pytest.raises(KeyNotFound):
        backend.wrap(DEK)
    assert not backend.check_health().ok


def test_ciphertext_from_another_key_label(pkcs11_backend_factory: Any) -> None:
    a = pkcs11_backend_factory()
    b = pkcs11_backend_factory()
    wrapped = b.wrap(DEK)
    with pytest.raises(InvalidCiphertext):
        a.unwrap(wrapped)
    with pytest.raises(InvalidCiphertext):  # no key_id: the header names a key object a does not have
        a.unwrap(Wrapped(wrapped.ciphertext, ""))


def test_ciphertext_from_another_token(pkcs11_backend_factory: Any) -> None:
    label = unique_label()
    main = pkcs11_backend_factory(token="ks-main", key_label=label)
    other = pkcs11_backend_factory(token="ks-other", key_label=label)
    assert main.key_id() != other.key_id()  # same label and version, different token serial
    wrapped = other.wrap(DEK)
    with pytest.raises(InvalidCiphertext):
        main.unwrap(wrapped)
    with pytest.raises(InvalidCiphertext):
        main.unwrap(Wrapped(wrapped.ciphertext, ""))


# -- settings and PIN sources ----------------------------------------------------------------------------


def test_from_settings_reads_pin_file_or_env(softhsm: SoftHsm, tmp_path: Path) -> None:
    label = unique_label()
    pin = softhsm.tokens["ks-main"].pin
    pin_file = tmp_path / "pin"
    pin_file.write_bytes(pin + b"\n")
    pin_file.chmod(0o600)
    settings = Pkcs11Settings(
        module=Path(softhsm.module), token="ks-main", pin_file=pin_file, key_label=label
    )
    backend = Pkcs11KeyBackend.from_settings(settings, environ={}, create_if_missing=True)
    try:
        key_id = backend.key_id()
    finally:
        backend.close()
    no_file = Pkcs11Settings(module=Path(softhsm.module), token="ks-main", key_label=label)
    again = Pkcs11KeyBackend.from_settings(no_file, environ={PIN_ENV: pin.decode()})
    try:
        assert again.key_id() == key_id
    finally:
        again.close()


def test_read_pin_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pinFile"):
        read_pin(pin_file=None, environ={})
    with pytest.raises(ConfigError, match="pinFile"):
        read_pin(pin_file=tmp_path / "missing", environ={})
    (tmp_path / "empty").write_bytes(b"\n")
    with pytest.raises(ConfigError, match="pinFile"):
        read_pin(pin_file=tmp_path / "empty", environ={})
    (tmp_path / "p").write_bytes(b"12 34\r\n")
    assert read_pin(pin_file=tmp_path / "p", environ={PIN_ENV: "env"}) == b"12 34"
    assert read_pin(pin_file=None, environ={PIN_ENV: "env"}) == b"env"
