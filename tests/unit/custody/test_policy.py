"""Policy parsing (errors name the line) and matching of measured identities."""

from __future__ import annotations

import dataclasses

import pytest

from kubeshield.custody.measure import PeerIdentity
from kubeshield.custody.policy import DEFAULT_OPS, parse_policy
from kubeshield.errors import ConfigError

EXE = "a" * 64
PEER = PeerIdentity(
    pid=10, uid=1000, gid=1000, exe="/usr/bin/python3", exe_sha256=EXE,
    cgroup="0::/kubepods/burstable/pod1/abc", start_time=5,
)  # fmt: skip

GOOD = f"""\
version: 1
rules:
  - name: plugin
    uid: 1000
    gid: 1000
    exeSha256: {EXE}
    cgroupPrefix: /kubepods/
  - name: admin
    uid: 0
    ops: [rotate, health]
"""


def test_good_policy_matches_every_condition() -> None:
    policy = parse_policy(GOOD)
    assert [r.name for r in policy.rules] == ["plugin", "admin"]
    rule = policy.match(PEER)
    assert rule is not None and rule.name == "plugin" and rule.ops == DEFAULT_OPS
    assert policy.rules[1].ops == frozenset({"rotate", "health"})


@pytest.mark.parametrize(
    "change",
    [
        {"uid": 1001},
        {"gid": 0},
        {"exe_sha256": "c" * 64},
        {"exe_sha256": None},  # unmeasured never matches a pinned value
        {"cgroup": "0::/system.slice/evil"},
        {"cgroup": "0::/kubepodsX/burstable/pod1/abc"},  # a prefix of the name is not a parent
    ],
)
def test_any_differing_condition_denies(change: dict[str, object]) -> None:
    peer = dataclasses.replace(PEER, **change)  # type: ignore[arg-type]
    assert parse_policy(GOOD).match(peer) is None


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("version: 1\nrules:\n  - name: a\n    uid: 0\n    exe: x\n", 5, "unknown field 'exe'"),
        ("version: 1\nrules:\n  - name: a\n    uid: -1\n", 4, "non-negative integer"),
        ("version: 1\nrules:\n  - name: a\n    uid: '0'\n", 4, "non-negative integer"),
        ("version: 1\nrules:\n  - name: a\n    uid: 0\n    exeSha256: xyz\n", 5, "64 hex digits"),
        ("version: 1\nrules:\n  - name: a\n    cgroupPrefix: kubepods\n", 4, "cgroupPrefix"),
        ("version: 1\nrules:\n  - name: a\n", 3, "at least one of uid, gid or cgroupPrefix"),
        ("version: 1\nrules:\n  - uid: 0\n", 3, "needs a name"),
        ("version: 1\nrules:\n  - name: a\n    uid: 0\n    ops: [decrypt]\n", 5, "unknown op 'decrypt'"),
        ("version: 1\nrules: []\n", 2, "non-empty list"),
        ("version: 2\nrules:\n  - {name: a, uid: 0}\n", 1, "unsupported policy version"),
        ("rules:\n  - {name: a, uid: 0}\n", 1, "version is required"),
        ("version: 1\nrules:\n  - name: a\n    uid: 0\n    uid: 1\n", 5, "duplicate field 'uid'"),
        ("version: 1\nextra: 1\n", 2, "unknown field 'extra'"),
        ("version: 1\nrules: [\n  - a\n", 3, "not valid YAML"),
        ("", 1, "empty"),
    ],
)
def test_errors_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_policy(text, source="policy.yaml")
    message = str(info.value)
    assert message.startswith(f"policy.yaml: line {line}:"), message
    assert words in message


@pytest.mark.parametrize(
    "narrowing",
    [f"    exeSha256: {EXE}\n", "    ops: [wrap]\n", f"    exeSha256: {EXE}\n    ops: [unwrap]\n"],
)
def test_a_rule_that_says_only_what_runs_not_who_is_refused_naming_its_line(narrowing: str) -> None:
    """exeSha256 alone would let any uid that can run that executable in (issue 15 item 1)."""
    text = f"version: 1\nrules:\n  - {{name: ok, uid: 0}}\n  - name: plugin\n{narrowing}"
    with pytest.raises(ConfigError) as info:
        parse_policy(text, source="policy.yaml")
    assert str(info.value).startswith("policy.yaml: line 4: rule 'plugin' needs at least one of uid, gid")


@pytest.mark.parametrize("who", ["uid: 0", "gid: 0", "cgroupPrefix: /kubepods"])
def test_each_of_uid_gid_cgroup_is_enough_to_name_who(who: str) -> None:
    policy = parse_policy(f"version: 1\nrules:\n  - name: a\n    {who}\n    exeSha256: {EXE}\n")
    assert len(policy.rules) == 1


def test_package_digest_is_refused_with_the_reason_and_its_line() -> None:
    text = f"version: 1\nrules:\n  - name: a\n    uid: 0\n    packageDigest: sha256:{'b' * 64}\n"
    with pytest.raises(ConfigError) as info:
        parse_policy(text, source="p.yaml")
    message = str(info.value)
    assert message.startswith("p.yaml: line 5: packageDigest is no longer supported")
    assert "argv[0]" in message


def test_rule_object_cannot_be_built_without_who() -> None:
    from kubeshield.custody.policy import Rule

    with pytest.raises(ValueError, match="at least one of uid, gid"):
        Rule(name="x", exe_sha256=EXE)


@pytest.mark.parametrize(
    ("prefix", "path", "matches"),
    [
        ("/kubepods/pod1", "/kubepods/pod1", True),
        ("/kubepods/pod1", "/kubepods/pod1/ctr", True),
        ("/kubepods/pod1/", "/kubepods/pod1/ctr", True),
        ("/kubepods/pod1", "/kubepods/pod12", False),
        ("/kubepods/pod1", "/kubepods", False),
        ("/", "/anything", True),
    ],
)
def test_cgroup_prefix_matches_whole_components(prefix: str, path: str, matches: bool) -> None:
    policy = parse_policy(f"version: 1\nrules:\n  - name: a\n    cgroupPrefix: {prefix}\n")
    peer = dataclasses.replace(PEER, cgroup=f"0::{path}")
    assert (policy.match(peer) is not None) is matches
