"""``age-plugin-kubeshield``: the age plugin protocol (c2sp.org/age-plugin) for the kubeshield key.

sops (and age, rage, pyrage) start this program for ``age1kubeshield1...`` recipients and
``AGE-PLUGIN-KUBESHIELD-1...`` identities:

* ``--age-plugin=recipient-v1``: phase 1 collects ``add-recipient``/``add-identity``/``wrap-file-key``
  (unknown commands, including grease and ``extension-labels``, are ignored); phase 2 sends one
  ``recipient-stanza`` per file key and recipient, or ``error`` commands and no stanza at all;
* ``--age-plugin=identity-v1``: phase 1 collects ``add-identity`` and ``recipient-stanza``; phase 2 sends
  ``file-key`` for every file whose ``kubeshield`` stanza a configured backend unwraps; stanzas for
  other keys are ignored; a failing backend is reported as ``error internal``.

Every message the plugin sends is free of key material; the file key travels only in the protocol's own
``wrap-file-key``/``file-key`` bodies.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from kubeshield.errors import KubeshieldError
from kubeshield.sops.errors import SopsError
from kubeshield.sops.masterkeys import _age_format
from kubeshield.sops.masterkeys import kubeshield as ks

__all__ = ["Channel", "run_identity_v1", "run_plugin", "run_recipient_v1"]


@dataclass
class _Command:
    name: str
    args: list[str]
    body: bytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


class Channel:
    """Stanza-framed commands over a pair of byte streams."""

    def __init__(self, reader: BinaryIO, writer: BinaryIO) -> None:
        self._reader = reader
        self._writer = writer

    def read(self) -> _Command:
        line = self._reader.readline()
        if not line:
            raise EOFError("the age client closed the connection")
        text = line.decode("ascii", "replace").rstrip("\n")
        if not text.startswith("-> "):
            raise ValueError("malformed plugin command")
        parts = text[3:].split(" ")
        body = b""
        while True:
            chunk = self._reader.readline()
            if not chunk:
                raise EOFError("the age client closed the connection")
            piece = chunk.rstrip(b"\n")
            body += piece
            if len(piece) < 64:
                break
        padded = body + b"=" * (-len(body) % 4)
        return _Command(parts[0], parts[1:], base64.b64decode(padded) if body else b"")

    def send(self, name: str, args: list[str], body: bytes = b"") -> None:
        stanza = _age_format.Stanza(name, tuple(args), body)
        self._writer.write(stanza.encode())
        self._writer.flush()

    def call(self, name: str, args: list[str], body: bytes = b"") -> _Command:
        self.send(name, args, body)
        return self.read()


def _phase1(channel: Channel) -> list[_Command]:
    commands: list[_Command] = []
    while True:
        command = channel.read()
        if command.name == "done":
            return commands
        commands.append(command)


def run_recipient_v1(channel: Channel, *, pool: ks.BackendPool) -> None:
    configs: list[str] = []
    file_keys: list[bytes] = []
    errors: list[tuple[str, int, str]] = []
    for command in _phase1(channel):
        if command.name == "add-recipient" and command.args:
            index = len(configs)
            try:
                configs.append(ks.config_of_recipient(command.args[0]))
            except SopsError as exc:
                configs.append("")
                errors.append(("recipient", index, str(exc)))
        elif command.name == "add-identity" and command.args:
            try:
                configs.append(ks.config_of_identity(command.args[0]))
            except SopsError as exc:
                errors.append(("identity", 0, str(exc)))
        elif command.name == "wrap-file-key":
            file_keys.append(command.body)
    stanzas: list[tuple[int, _age_format.Stanza]] = []
    if not errors:
        for file_index, file_key in enumerate(file_keys):
            for index, config in enumerate(configs):
                try:
                    stanzas.append((file_index, ks.wrap_file_key(file_key, config=config, pool=pool)))
                except (SopsError, KubeshieldError) as exc:
                    errors.append(("recipient", index, f"kubeshield backend {config}: {exc}"))
    if errors:
        for kind, index, message in errors:
            channel.call("error", [kind, str(index)], message.encode("utf-8"))
    else:
        for file_index, stanza in stanzas:
            channel.call("recipient-stanza", [str(file_index), stanza.type, *stanza.args], stanza.body)
    channel.send("done", [])


def run_identity_v1(channel: Channel, *, pool: ks.BackendPool) -> None:
    configs: list[str] = []
    files: dict[int, list[_age_format.Stanza]] = {}
    for command in _phase1(channel):
        if command.name == "add-identity" and command.args:
            try:
                configs.append(ks.config_of_identity(command.args[0]))
            except SopsError as exc:
                channel_errors = [("identity", len(configs), str(exc))]
                for kind, index, message in channel_errors:
                    channel.call("error", [kind, str(index)], message.encode("utf-8"))
        elif command.name == "recipient-stanza" and len(command.args) >= 2 and command.args[0].isdigit():
            stanza = _age_format.Stanza(command.args[1], tuple(command.args[2:]), command.body)
            files.setdefault(int(command.args[0]), []).append(stanza)
    for file_index in sorted(files):
        done = False
        for stanza in files[file_index]:
            if done or stanza.type != ks.STANZA_TYPE:
                continue
            for config in configs:
                try:
                    file_key = ks.unwrap_stanza(stanza, config=config, pool=pool)
                except SopsError as exc:
                    channel.call("error", ["internal"], str(exc).encode("utf-8"))
                    continue
                if file_key is not None:
                    channel.call("file-key", [str(file_index)], file_key)
                    done = True
                    break
    channel.send("done", [])


def run_plugin(
    state_machine: str, channel: Channel, *, pool_factory: Callable[[], ks.BackendPool] = ks.BackendPool
) -> int:
    pool = pool_factory()
    try:
        if state_machine == "recipient-v1":
            run_recipient_v1(channel, pool=pool)
        elif state_machine == "identity-v1":
            run_identity_v1(channel, pool=pool)
        else:
            return 1
    finally:
        pool.close()
    return 0
