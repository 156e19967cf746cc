"""Read a systemd unit file the way systemd does, for the settings the tests start a service from.

There is no systemd on the test machine (no PID 1 manager), so a test starts a unit's ``ExecStart=``
itself: this module only parses (sections, ``Key=Value`` lines, ``#``/``;`` comments, backslash
continuations, repeated keys kept in order, an empty value resetting a list) and splits ``ExecStart=``
with systemd's quoting, which for the lines we write is the shell's (``shlex``).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Unit", "parse_unit"]


@dataclass(frozen=True)
class Unit:
    path: Path
    entries: tuple[tuple[str, str, str], ...]  # (section, key, value), in file order

    def values(self, section: str, key: str) -> list[str]:
        """Every value of ``key`` in ``section``; an empty assignment resets what came before."""
        out: list[str] = []
        for sec, k, v in self.entries:
            if sec == section and k == key:
                out = [] if v == "" else [*out, v]
        return out

    def value(self, section: str, key: str) -> str | None:
        values = self.values(section, key)
        return values[-1] if values else None

    @property
    def exec_start(self) -> list[str]:
        (line,) = self.values("Service", "ExecStart")  # a Type=exec service has exactly one
        argv = shlex.split(line.lstrip("-@:+!"))
        if not argv or not argv[0].startswith("/"):
            raise AssertionError(f"{self.path}: ExecStart must name an absolute path: {line!r}")
        return argv

    @property
    def environment(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for value in self.values("Service", "Environment"):
            for word in shlex.split(value):
                name, _, val = word.partition("=")
                env[name] = val
        return env

    @property
    def runtime_directories(self) -> list[tuple[str, int]]:
        """``RuntimeDirectory=`` names (under /run) and the mode systemd gives them."""
        mode = int(self.value("Service", "RuntimeDirectoryMode") or "0755", 8)
        return [
            (name, mode) for value in self.values("Service", "RuntimeDirectory") for name in value.split()
        ]


def parse_unit(path: Path) -> Unit:
    entries: list[tuple[str, str, str]] = []
    section: str | None = None
    pending = ""
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if not sep or section is None:
            raise AssertionError(f"{path}:{number}: not a Key=Value line in a section: {raw!r}")
        entries.append((section, key.strip(), value.strip()))
    return Unit(path, tuple(entries))
