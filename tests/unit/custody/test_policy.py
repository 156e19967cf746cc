"""Policy parsing (errors name the line) and matching of measured identities."""

from __future__ import annotations

import dataclasses

import pytest

from kubeshield.custody.measure import PeerIdentity
from kubeshield.custody.policy import DEFAULT_OPS, parse_policy
from kubeshield.errors import ConfigError

EXE = "a" * 64
PKG = "sha256:" + "b" * 64
PEER = PeerIdentity(
    pid=10, uid=1000, gid=1000, exe="/usr/bin/python3", exe_sha256=EXE,
    cgroup="0::/kubepods/burstable/pod1/abc", package_digest=PKG, start_time=5,
)  # fmt: skip

GOOD = f"""\
version: 1
rules:
  - name: plugin
    uid: 1000
    gid: 1000
    exeSha256: {EXE}
    cgroupPrefix: /kubepods/
    packageDigest: {PKG}
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
        {"package_digest": None},
        {"cgroup": "0::/system.slice/evil"},
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
        ("version: 1\nrules:\n  - name: a\n    exeSha256: xyz\n", 4, "64 hex digits"),
        ("version: 1\nrules:\n  - name: a\n    packageDigest: abc\n", 4, "packageDigest"),
        ("version: 1\nrules:\n  - name: a\n    cgroupPrefix: kubepods\n", 4, "cgroupPrefix"),
        ("version: 1\nrules:\n  - name: a\n", 3, "at least one condition"),
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
