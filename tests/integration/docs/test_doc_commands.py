"""Every `kubeshield` command the guides show parses with the real CLI (issue 16 item 10).

README.md and docs/*.md are found by glob, so a new guide is checked without touching this file. Three
kinds of command text:

* **commands** in ``sh``/``bash`` blocks, parsed as bash parses them (bashlex: pipelines, ``&&``, ``for``
  loops, ``$(...)``, redirections; a heredoc's body is not a command), and the command strings handed to
  each is parsed by click exactly as ``kubeshield`` would parse it (``make_context`` of the real command,
  so unknown flags, missing required flags, bad choices and bad durations are errors), except that files
  it names need not exist here. A bare ``...`` standing for elided flags is refused: write the command
  out, so it can be followed literally;
* **command strings** handed to another program that appends its own arguments (``git config ...
  "kubeshield sops diff-helper"``, the entry of ``.pre-commit-hooks.yaml``): checked as a synopsis;
* **synopses** in plain fenced blocks (lines starting ``kubeshield``, continued by indented lines):
  every command named (``init|rotate|list`` is three) exists and every flag is one of its flags;
* **inline** ``kubeshield ...`` code spans in prose: the same check as a synopsis.

The README's command table must also name every command the CLI has, so a new command is documented.
"""

from __future__ import annotations

import copy
import itertools
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bashlex
import click
import pytest
import yaml

from kubeshield.cli import cli
from tests.support.docs import fenced_blocks, shell_commands

REPO = Path(__file__).resolve().parents[3]
GUIDES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DEPRECATED = {"--client-key"}  # still accepted, with a warning: a guide never teaches it
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1")
_INLINE = re.compile(r"(?<!`)`(kubeshield [^`\n]+)`(?!`)")
_FLAG = re.compile(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*|-[a-zA-Z])(?![\w-])")
_SUBCOMMAND = re.compile(r"[a-z][a-z0-9-]*(\|[a-z][a-z0-9-]*)*")


def _nodes(node: Any) -> Iterator[Any]:
    yield node
    for value in vars(node).values():
        children = value if isinstance(value, list) else [value]
        for child in children:
            if isinstance(child, bashlex.ast.node):
                yield from _nodes(child)


def invocations(command: str, *, strings: list[str] | None = None) -> list[list[str]]:
    """The ``kubeshield`` invocations in one shell command (as bash would run it), as argv lists; the
    command strings it hands to other programs go to ``strings``."""
    first, *rest = command.split("\n")
    if rest:  # a heredoc: only its first line is shell; the body is data
        first = _HEREDOC.sub("", first)
    found = []
    for tree in bashlex.parse(first):
        for node in _nodes(tree):
            if node.kind != "command":
                continue
            words = [p.word for p in node.parts if p.kind == "word"]
            if words and words[0] == "exec":
                words = words[1:]
            if words and words[0] == "kubeshield":
                found.append(words)
            # a command line handed to another program: `git config ... "kubeshield sops diff-helper"`
            if strings is not None:
                strings += [w for w in words[1:] if w.startswith("kubeshield ")]
    return found


def _commands() -> tuple[list[tuple[str, list[str]]], list[tuple[str, str]]]:
    out, handed = [], []
    for guide in GUIDES:
        for block in fenced_blocks(guide):
            if block.lang in ("sh", "bash", "shell", "console"):
                for command in shell_commands(block.body):
                    strings: list[str] = []
                    out += [
                        (f"{block.where}: {shlex.join(a)}", a) for a in invocations(command, strings=strings)
                    ]
                    handed += [(f"{block.where} (a command string)", s) for s in strings]
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    handed += [(".pre-commit-hooks.yaml", h["entry"]) for h in hooks]
    return out, handed


def _resolve(path: list[str], where: str, *, group_ok: bool = False) -> tuple[click.Command, list[str]]:
    """The command that ``kubeshield <path...>`` runs, and the words left for it."""
    command: click.Command = cli
    words = list(path)
    while isinstance(command, click.Group):
        if not words and group_ok:
            break
        if command.invoke_without_command and (not words or words[0].startswith("-")):
            break  # a group that is also a command (`kubeshield seal -f ...`): its own options follow
        assert words, f"{where}: names a group, not a command"
        name = words.pop(0)
        sub = command.get_command(click.Context(command), name)
        assert sub is not None, f"{where}: `{name}` is not a command of `{command.name}`"
        command = sub
    return command, words


def _relaxed(command: click.Command) -> click.Command:
    """The command with its file parameters not required to exist (the guide's files are not here)."""
    relaxed = copy.copy(command)
    relaxed.params = []
    for param in command.params:
        if isinstance(param.type, click.Path) and param.type.exists:
            relaxed_type = copy.copy(param.type)
            relaxed_type.exists = False
            param = copy.copy(param)
            param.type = relaxed_type
        relaxed.params.append(param)
    return relaxed


def parse(argv: list[str], where: str) -> click.Context:
    """Parse ``argv`` (``kubeshield ...``) as the CLI would; raise AssertionError naming ``where``."""
    assert argv[0] == "kubeshield"
    assert "..." not in argv, f"{where}: `...` stands for flags: write the command out in full"
    deprecated = DEPRECATED & {a.split("=", 1)[0] for a in argv}
    assert not deprecated, f"{where}: uses the deprecated {', '.join(sorted(deprecated))}"
    command, words = _resolve(argv[1:], where)
    try:
        return _relaxed(command).make_context(command.name or "", words)
    except click.exceptions.Exit:
        raise AssertionError(f"{where}: exits while parsing (--help or --version?)") from None
    except click.ClickException as exc:
        raise AssertionError(f"{where}: {exc.format_message()}") from None


COMMANDS, HANDED = _commands()


@pytest.fixture(autouse=True)
def _no_kubeshield_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flags also come from KUBESHIELD_* variables: none may fill in what a guide leaves out."""
    import os

    for name in [n for n in os.environ if n.startswith("KUBESHIELD_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_command_in_the_guides_parses(where: str, argv: list[str]) -> None:
    command, _ = _resolve(argv[1:], where)
    assert parse(argv, where).command.name == command.name


def test_the_commands_are_found() -> None:
    where = {w.split(":")[0] for w, _ in COMMANDS}
    assert {"README.md", "backup.md", "rotation.md", "recovery.md", "service-mode.md", "sops.md"} <= where
    named = {tuple(argv[1:3]) for _, argv in COMMANDS}
    assert {("kms", "status"), ("etcd", "rewrite"), ("keys", "restore"), ("sops", "decrypt")} <= named
    assert {"kubeshield sops diff-helper", "kubeshield sops check"} <= {s for _, s in HANDED}
    assert any(w.startswith("recovery.md") and a[1:3] == ["kms", "status"] for w, a in COMMANDS)  # in a loop


# --- synopses and inline spans -------------------------------------------------------------------


def _synopses() -> list[tuple[str, str]]:
    out = []
    for guide in GUIDES:
        for block in fenced_blocks(guide):
            if block.lang:
                continue
            entry: list[str] = []
            line_no = block.line
            for offset, line in enumerate([*block.body.splitlines(), ""]):
                text = re.sub(r"\s#\s.*$", "", line).rstrip()
                if text.startswith("kubeshield "):
                    if entry:
                        out.append((f"{block.where}+{line_no - block.line}", " ".join(entry)))
                    entry, line_no = [text], block.line + offset
                elif entry and text.startswith((" ", "\t")) and text.strip():
                    entry.append(text.strip())
                elif entry:
                    out.append((f"{block.where}+{line_no - block.line}", " ".join(entry)))
                    entry = []
        text = guide.read_text()
        prose = re.sub(r"^( *)```.*?^\1```", "", text, flags=re.S | re.M)
        out += [(f"{guide.name} (inline)", m[1]) for m in _INLINE.finditer(prose)]
    return out


def check_synopsis(text: str, where: str) -> list[str]:
    """Every command a synopsis names exists and has every flag it shows; returns the commands."""
    words = text.split()
    assert words[0] == "kubeshield"
    path: list[list[str]] = []
    for word in words[1:]:
        if not _SUBCOMMAND.fullmatch(word):
            break  # the first flag, placeholder (FILE, <command>) or bracket ends the command's name
        path.append(word.split("|"))
    flags = set(_FLAG.findall(" ".join(words[1 + len(path) :])))
    named = []
    for choice in itertools.product(*path):
        command, _ = _resolve(list(choice), where, group_ok=True)
        have = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        missing = sorted(flags - have - {"-h", "--help"})
        assert not missing, f"{where}: `kubeshield {' '.join(choice)}` has no {', '.join(missing)}"
        named.append(" ".join(choice))
    return named


SYNOPSES = _synopses() + HANDED


@pytest.mark.parametrize(("where", "text"), SYNOPSES, ids=[f"{w}: {t[:60]}" for w, t in SYNOPSES])
def test_every_synopsis_and_inline_command_names_real_commands_and_flags(where: str, text: str) -> None:
    assert check_synopsis(text, where)


def _leaf_commands(group: click.Group = cli, prefix: str = "") -> list[str]:
    out = []
    for name, sub in group.commands.items():
        if isinstance(sub, click.Group):
            out += _leaf_commands(sub, f"{prefix}{name} ")
        elif not sub.hidden:
            out.append(f"{prefix}{name}")
    return out


def test_the_readme_command_table_names_every_command() -> None:
    section = (REPO / "README.md").read_text().split("## The command line", 1)[1]
    (table,) = [b for b in fenced_blocks(REPO / "README.md") if not b.lang and b.body.lstrip() in section][:1]
    named = {c for w, t in SYNOPSES if w.startswith(table.where) for c in check_synopsis(t, w)}
    missing = sorted(set(_leaf_commands()) - named)
    assert not missing, f"README.md's command table does not show: {', '.join(missing)}"


# --- the checks themselves can fail ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("kubeshield kms status --sockt /x", "No such option '--sockt'"),
        ("kubeshield kms status", "Missing option '--socket'"),
        ("kubeshield kms status --socket /x --timeout soon", "not a duration"),
        ("kubeshield etcd audit --snapshot s.db -o yaml", "'yaml' is not one of"),
        ("kubeshield keys rotat --config c.yaml", "`rotat` is not a command of `keys`"),
        ("kubeshield etcd rewrite ... --to kubeshield --yes", "write the command out in full"),
        (
            "kubeshield etcd decrypt --snapshot s.db --encryption-config e.yaml --all --client-key k",
            "deprecated",
        ),
        ("kubeshield keys", "names a group"),
    ],
)
def test_a_wrong_command_is_caught(argv: str, message: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(message)):
        parse(shlex.split(argv), "guide.md:1")


def test_a_file_argument_need_not_exist_but_is_still_checked() -> None:
    parse(["kubeshield", "sops", "decrypt", "/nonexistent/secret.yaml"], "guide.md:1")
    with pytest.raises(AssertionError, match="Got unexpected extra argument"):
        parse(["kubeshield", "sops", "edit", "a.yaml", "b.yaml"], "guide.md:1")


def test_a_wrong_synopsis_is_caught() -> None:
    with pytest.raises(AssertionError, match="has no --frobnicate"):
        check_synopsis("kubeshield keys init|rotate [--config F] [--frobnicate]", "guide.md:1")
    with pytest.raises(AssertionError, match="`rotat` is not a command"):
        check_synopsis("kubeshield keys init|rotat --config F", "guide.md:1")


def test_bash_structure_is_followed() -> None:
    found = invocations(
        "for i in $(seq 3); do kubeshield kms status --socket /s >/dev/null 2>&1 && break; sleep 1; done"
    )
    assert found == [["kubeshield", "kms", "status", "--socket", "/s"]]
    assert invocations("(umask 077; x=$(kubeshield keys age-keygen --out k)) && echo ok") == [
        ["kubeshield", "keys", "age-keygen", "--out", "k"]
    ]
    assert invocations("cat > f.yaml <<'EOF'\nkubeshield is data here\nEOF") == []


def test_one_path_for_the_encryption_configuration_everywhere() -> None:
    """Every guide and manifest names the apiserver's EncryptionConfiguration at the same place."""
    texts = {p: p.read_text() for p in GUIDES}
    texts.update({p: p.read_text() for p in (REPO / "deploy").rglob("*") if p.is_file()})
    texts.update({p: p.read_text() for p in (REPO / "src" / "kubeshield" / "cli").glob("*.py")})  # --help
    found = {
        (p.relative_to(REPO), m[0])
        for p, text in texts.items()
        for m in re.finditer(r"/etc/kubernetes/[\w./-]*(?:enc|encryption)[\w./-]*\.ya?ml", text)
    }
    assert found and {path for _, path in found} == {"/etc/kubernetes/enc/enc.yaml"}, sorted(found)
