"""The age v1 format of the kubeshield stanza, and the age plugin state machines over in-memory pipes."""

from __future__ import annotations

import io
import os

import pytest

from kubeshield.errors import InvalidCiphertext
from kubeshield.keys.testing import InMemoryBackend
from kubeshield.sops.masterkeys import _age_format
from kubeshield.sops.masterkeys import kubeshield as ks
from kubeshield.sops.masterkeys.plugin import Channel, run_plugin


def test_age_format_round_trip_and_tamper() -> None:
    file_key = os.urandom(16)
    stanza = _age_format.Stanza("kubeshield", ("v1",), os.urandom(100))
    blob = _age_format.encrypt(b"k" * 70000, file_key=file_key, stanzas=[stanza])
    armored = _age_format.armor(blob)
    assert armored.startswith("-----BEGIN AGE ENCRYPTED FILE-----\n")
    back = _age_format.dearmor(armored)
    assert back == blob
    assert _age_format.decrypt(back, unwrap=lambda s: file_key if s == stanza else None) == b"k" * 70000
    for i in (30, len(blob) // 2, len(blob) - 1):
        bad = bytearray(blob)
        bad[i] ^= 1
        with pytest.raises(InvalidCiphertext):
            _age_format.decrypt(bytes(bad), unwrap=lambda s: file_key)


def test_body_encoding_round_trips_annotations() -> None:
    from kubeshield.keys.base import Wrapped

    wrapped = Wrapped(ciphertext=b"\x01ct", key_id="local:v1:abc", annotations={"x.kubeshield.io": b"\x00v"})
    assert ks.decode_body(ks.encode_body(wrapped)) == wrapped
    with pytest.raises(InvalidCiphertext):
        ks.decode_body(b"\x02")


def _script(*stanzas: tuple[str, list[str], bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    for name, args, body in stanzas:
        buf.write(_age_format.Stanza(name, tuple(args), body).encode())
    buf.seek(0)
    return buf


def _run(machine: str, commands: list[tuple[str, list[str], bytes]], pool: ks.BackendPool, oks: int) -> list:
    replies: list[tuple[str, list[str], bytes]] = [("ok", [], b"")] * oks
    reader = _script(*commands, *replies)
    writer = io.BytesIO()
    assert run_plugin(machine, Channel(reader, writer), pool_factory=lambda: pool) == 0
    writer.seek(0)
    channel = Channel(writer, io.BytesIO())
    out = []
    while True:
        command = channel.read()
        out.append(command)
        if command.name == "done":
            return out


class _KeptBackend(InMemoryBackend):
    """Survives the plugin's close() so the second state machine sees the same KEK (one process each)."""

    def close(self) -> None:
        return None


def test_recipient_then_identity_state_machines(tmp_path) -> None:
    backend = _KeptBackend()
    config = str(tmp_path / "kubeshield.yaml")
    pool = ks.BackendPool(opener=lambda path: backend)
    recipient = ks.recipient_for(config)
    file_key = os.urandom(16)
    out = _run(
        "recipient-v1",
        [
            ("add-recipient", [recipient], b""),
            ("grease-x", ["a"], b"zz"),
            ("wrap-file-key", [], file_key),
            ("done", [], b""),
        ],
        pool,
        oks=1,
    )
    assert [c.name for c in out] == ["recipient-stanza", "done"]
    stanza = out[0]
    assert stanza.args[:3] == ["0", "kubeshield", "v1"]
    identity = ks.identity_for(config)
    out = _run(
        "identity-v1",
        [
            ("add-identity", [identity], b""),
            ("recipient-stanza", ["0", "X25519", "abc"], b"x" * 32),
            ("recipient-stanza", ["0", *stanza.args[1:]], stanza.body),
            ("done", [], b""),
        ],
        pool,
        oks=1,
    )
    assert [c.name for c in out] == ["file-key", "done"], out[0].body
    assert out[0].args == ["0"] and out[0].body == file_key


def test_identity_v1_ignores_stanzas_it_cannot_unwrap(tmp_path) -> None:
    pool = ks.BackendPool(opener=lambda path: InMemoryBackend())
    identity = ks.identity_for(tmp_path / "k.yaml")
    body = ks.encode_body(InMemoryBackend().wrap(os.urandom(16), aad=ks.AAD))
    out = _run(
        "identity-v1",
        [
            ("add-identity", [identity], b""),
            ("recipient-stanza", ["0", "kubeshield", "v1"], body),
            ("done", [], b""),
        ],
        pool,
        oks=0,
    )
    assert [c.name for c in out] == ["done"]


def test_unknown_state_machine_is_refused() -> None:
    assert run_plugin("recipient-v9", Channel(io.BytesIO(), io.BytesIO())) == 1
