"""Run the commands of an operator guide as written, for several "nodes" on one machine.

A guide marks a fenced block for a test with an HTML comment just before it::

    <!-- test: NAME -->                     a sh block: its commands are run
    <!-- test: NAME /etc/kubeshield/x.yaml -->  a file block: written to that path on every node

In a sh block, a comment line ``# on node-b and node-c: ...`` (or ``# on every node``) says where the
commands below it run; other comments are prose. Continuation lines (``\\``) are joined. Each command
runs in ``bash -euo pipefail`` with the venv's ``kubeshield`` first on PATH, after these rewrites, so
that what runs is the text of the guide and nothing else:

* the absolute paths of a node (``/etc/kubeshield``, ``/etc/kubernetes``, ``/etc/systemd``,
  ``/var/lib/kubeshield``, ``/var/run/kubeshield``, ``/root``) move under that node's root directory;
* ``scp SRC node-b:DST`` becomes a copy into node-b's root;
* ``age1...node-b`` (and ``age1...NAME`` in general) becomes the recipient that ``kubeshield keys
  age-keygen`` printed on that node, or one registered with :meth:`Cluster.add_recipient`;
* ``substitutions`` given by the test replace placeholders such as an etcd endpoint (``node_substitutions``
  per node, e.g. a health port that must differ between nodes on one machine);
* a command matched by a pattern of ``instead`` is handed to the test's function rather than to bash (a
  ``systemctl`` line, where no systemd runs).

A heredoc (``cat > F <<'EOF'`` ... ``EOF``) is one command with its body. :func:`fenced_blocks` lists every
fenced block of a guide (marked or not) and :func:`shell_commands` the commands of a shell block, for the
tests that check every example of every guide.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Block", "Cluster", "FencedBlock", "doc_blocks", "fenced_blocks", "shell_commands"]

Instead = Callable[[str, str], "subprocess.CompletedProcess[str]"]

_MARK = re.compile(
    r"<!-- test: (?P<name>\S+)(?: (?P<target>\S+))? -->\n```(?P<lang>\w*)\n(?P<body>.*?)```", re.S
)
_NODE_PATHS = re.compile(
    r"(?<![\w.:/-])(/etc/kubeshield|/etc/kubernetes|/etc/systemd|/var/lib/kubeshield|/var/run/kubeshield|/root)"
    r"(?=[/\s\"']|$)",
    re.M,
)
_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.S | re.M)
_MARK_BEFORE = re.compile(r"<!-- test: (?P<name>\S+)(?: (?P<target>\S+))? -->\n\Z")
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)(?P<word>[A-Za-z_]\w*)\1")
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


@dataclass(frozen=True)
class FencedBlock:
    """A fenced block of a guide: where it is, its language, its text (dedented when nested in a list)."""

    path: Path
    line: int
    lang: str
    body: str
    mark: str | None  # the NAME of a ``<!-- test: NAME -->`` just before it

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


def fenced_blocks(path: Path) -> list[FencedBlock]:
    """Every fenced block of the guide at ``path``, in order."""
    text = path.read_text()
    blocks = []
    for m in _FENCE.finditer(text):
        indent = len(m["indent"])
        body = "".join(line[indent:] for line in m["body"].splitlines(keepends=True))
        mark = _MARK_BEFORE.search(text, 0, m.start())
        line = text.count("\n", 0, m.start()) + 1
        blocks.append(FencedBlock(path, line, m["lang"], body, mark["name"] if mark else None))
    return blocks


def _lines(body: str) -> list[str]:
    """Logical lines: continuations (``\\``) joined, a heredoc kept with its body as one entry."""
    raw = body.splitlines()
    out: list[str] = []
    i = 0
    while i < len(raw):
        line = raw[i]
        while line.endswith("\\") and i + 1 < len(raw):
            i += 1
            line = line[:-1].rstrip() + " " + raw[i].strip()
        i += 1
        heredoc = _HEREDOC.search(line) if not line.lstrip().startswith("#") else None
        if heredoc:
            end = heredoc["word"]
            start = i
            while i < len(raw) and raw[i].strip() != end:
                i += 1
            if i == len(raw):
                raise AssertionError(f"heredoc {end!r} is not closed: {line!r}")
            line = "\n".join([line, *raw[start:i], raw[i]])
            i += 1
        out.append(line)
    return out


def shell_commands(body: str) -> list[str]:
    """The commands of a shell block (comments and blank lines dropped; see :func:`_lines`)."""
    return [line.strip() for line in _lines(body) if line.strip() and not line.lstrip().startswith("#")]


def _steps(body: str, every: list[str]) -> list[tuple[list[str], str]]:
    nodes = list(every)
    steps: list[tuple[list[str], str]] = []
    for raw in _lines(body):
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
    cwd: Path | None = None  # where commands run (a checkout of the repository, for deploy/ paths)

    def __post_init__(self) -> None:
        for name in self.names:
            self.root(name).mkdir(mode=0o700, parents=True, exist_ok=True)
            # what a control-plane node has before any guide starts (kubeadm makes /etc/kubernetes)
            for sub, mode in (
                ("root", 0o700),
                ("etc/kubernetes", 0o755),
                ("etc/systemd/system", 0o755),
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
            cwd=self.cwd,
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
        node_substitutions: Mapping[str, Mapping[str, str]] = {},
        env: Mapping[str, Mapping[str, str]] | None = None,
        instead: Mapping[str, Instead] = {},
        check: bool = True,
    ) -> list[tuple[str, str, subprocess.CompletedProcess[str]]]:
        """Run every command of ``block``; with ``check``, the first failure raises with its output.

        ``instead`` maps a regular expression to a function ``(node, command) -> CompletedProcess``: a
        command it matches (``re.match``, the command as written) is given to that function, not to bash.
        Without ``check`` the run stops at the first failure, which is the last entry returned.
        """
        if block.lang != "sh":
            raise AssertionError(f"block {block.name} is not a sh block")
        done: list[tuple[str, str, subprocess.CompletedProcess[str]]] = []
        for nodes, command in _steps(block.body, self.names):
            for node in nodes:
                if node not in self.names:
                    raise AssertionError(f"{block.name}: `{command}` is for {node}, not one of {self.names}")
                handler = next((f for pattern, f in instead.items() if re.match(pattern, command)), None)
                if handler is not None:
                    result = handler(node, command)
                else:
                    subs = {**substitutions, **node_substitutions.get(node, {})}
                    result = self.run(node, command, substitutions=subs, env=(env or {}).get(node, {}))
                done.append((node, command, result))
                if result.returncode != 0:
                    if check:
                        raise AssertionError(
                            f"{block.name} on {node}: `{command}` exited {result.returncode}\n"
                            f"stdout: {result.stdout}\nstderr: {result.stderr}"
                        )
                    return done
        return done

    def write_file(self, block: Block, *, node_substitutions: Mapping[str, Mapping[str, str]] = {}) -> None:
        """Write a file block to its target path on every node (paths inside moved to the node)."""
        if block.target is None:
            raise AssertionError(f"block {block.name} names no target file")
        for node in self.names:
            target = self.path(node, block.target)
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            target.write_text(self.rewrite(node, block.body, node_substitutions.get(node, {})))
