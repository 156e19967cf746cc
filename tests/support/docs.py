"""Run the commands of an operator guide as written, for several "nodes" on one machine.

A guide marks a fenced block for a test with an HTML comment just before it::

    <!-- test: NAME -->                     a sh block: its commands are run
    <!-- test: NAME /etc/kubeshield/x.yaml -->  a file block: written to that path on every node

In a sh block, a comment line ``# on node-b and node-c: ...`` (or ``# on every node``) says where the
commands below it run; other comments are prose. Continuation lines (``\\``) are joined. Each command
runs in ``bash -euo pipefail`` with the venv's ``kubeshield`` first on PATH, after these rewrites, so
that what runs is the text of the guide and nothing else:

* the absolute paths of a node (``/etc/kubeshield``, ``/etc/kubernetes``, ``/var/lib/kubeshield``,
  ``/var/run/kubeshield``, ``/root``) move under that node's root directory;
* ``scp SRC node-b:DST`` becomes a copy into node-b's root;
* ``age1...node-b`` (and ``age1...NAME`` in general) becomes the recipient that ``kubeshield keys
  age-keygen`` printed on that node, or one registered with :meth:`Cluster.add_recipient`;
* ``substitutions`` given by the test replace placeholders such as an etcd endpoint.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Block", "Cluster", "doc_blocks"]

_MARK = re.compile(
    r"<!-- test: (?P<name>\S+)(?: (?P<target>\S+))? -->\n```(?P<lang>\w*)\n(?P<body>.*?)```", re.S
)
_NODE_PATHS = re.compile(
    r"(?<![\w.:/-])(/etc/kubeshield|/etc/kubernetes|/var/lib/kubeshield|/var/run/kubeshield|/root)(?=[/\s\"']|$)"
)
_REMOTE = re.compile(r"\b(node-[a-z0-9]+):(/\S*)")
_RECIPIENT = re.compile(r"age1\.\.\.([\w-]+)")


@dataclass(frozen=True)
class Block:
    name: str
    target: str | None
    lang: str
    body: str


def doc_blocks(path: Path) -> dict[str, Block]:
    """Every marked block of the guide at ``path``, by name."""
    found = {
        m["name"]: Block(m["name"], m["target"], m["lang"], m["body"])
        for m in _MARK.finditer(path.read_text())
    }
    if not found:
        raise AssertionError(f"{path}: no <!-- test: NAME --> blocks")
    return found


def _steps(body: str, every: list[str]) -> list[tuple[list[str], str]]:
    text = re.sub(r"\\\n\s*", " ", body)
    nodes = list(every)
    steps: list[tuple[list[str], str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            marker = re.match(r"#\s*on\s+([^:]+)", line)
            if marker:
                named = re.findall(r"node-[a-z0-9]+", marker[1])
                nodes = list(every) if "every" in marker[1] or not named else named
            continue
        steps.append((nodes, line))
    return steps


@dataclass
class Cluster:
    """Node roots under one directory; the environment every command gets."""

    base: Path
    names: list[str]
    recipients: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.names:
            self.root(name).mkdir(mode=0o700, parents=True, exist_ok=True)
            # what a control-plane node has before any guide starts (kubeadm makes /etc/kubernetes)
            for sub, mode in (
                ("root", 0o700),
                ("etc/kubernetes", 0o755),
                ("var/lib", 0o755),
                ("var/run", 0o755),
            ):
                (self.root(name) / sub).mkdir(mode=mode, parents=True, exist_ok=True)

    def root(self, node: str) -> Path:
        return self.base / node

    def path(self, node: str, absolute: str) -> Path:
        """Where ``absolute`` (a path in the guide) is on ``node``."""
        return Path(_NODE_PATHS.sub(lambda m: f"{self.root(node)}{m[1]}", absolute))

    def add_recipient(self, name: str, recipient: str) -> None:
        self.recipients[name] = recipient

    def rewrite(self, node: str, command: str, substitutions: Mapping[str, str] = {}) -> str:
        for placeholder, value in substitutions.items():
            command = command.replace(placeholder, value)

        def recipient(m: re.Match[str]) -> str:
            if m[1] not in self.recipients:
                raise AssertionError(f"no recipient for {m[0]!r} (age-keygen not run there?)")
            return self.recipients[m[1]]

        command = _RECIPIENT.sub(recipient, command)
        remote: dict[str, str] = {}

        def stash(m: re.Match[str]) -> str:
            token = f"@@REMOTE{len(remote)}@@"
            remote[token] = str(self.path(m[1], m[2]))
            return token

        command = _REMOTE.sub(stash, command)
        command = _NODE_PATHS.sub(lambda m: f"{self.root(node)}{m[1]}", command)
        for token, value in remote.items():
            command = command.replace(token, value)
        return re.sub(r"^scp\b", "cp", command)

    def env(self, extra: Mapping[str, str] = {}) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBESHIELD_")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        return {**env, **extra}

    def run(
        self, node: str, command: str, *, substitutions: Mapping[str, str] = {}, env: Mapping[str, str] = {}
    ) -> subprocess.CompletedProcess[str]:
        line = self.rewrite(node, command, substitutions)
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", line],
            capture_output=True,
            text=True,
            env=self.env(env),
            timeout=300,
            check=False,
        )
        if result.returncode == 0 and re.search(r"\bkubeshield keys age-keygen\b", command):
            self.recipients[node] = result.stdout.strip()
        return result

    def run_block(
        self,
        block: Block,
        *,
        substitutions: Mapping[str, str] = {},
        env: Mapping[str, Mapping[str, str]] | None = None,
        check: bool = True,
    ) -> list[tuple[str, str, subprocess.CompletedProcess[str]]]:
        """Run every command of ``block``; with ``check``, the first failure raises with its output.

        Without ``check`` the run stops at the first failure, which is the last entry returned.
        """
        if block.lang != "sh":
            raise AssertionError(f"block {block.name} is not a sh block")
        done: list[tuple[str, str, subprocess.CompletedProcess[str]]] = []
        for nodes, command in _steps(block.body, self.names):
            for node in nodes:
                result = self.run(node, command, substitutions=substitutions, env=(env or {}).get(node, {}))
                done.append((node, command, result))
                if result.returncode != 0:
                    if check:
                        raise AssertionError(
                            f"{block.name} on {node}: `{command}` exited {result.returncode}\n"
                            f"stdout: {result.stdout}\nstderr: {result.stderr}"
                        )
                    return done
        return done

    def write_file(self, block: Block) -> None:
        """Write a file block to its target path on every node (paths inside moved to the node)."""
        if block.target is None:
            raise AssertionError(f"block {block.name} names no target file")
        for node in self.names:
            target = self.path(node, block.target)
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            target.write_text(self.rewrite(node, block.body))
