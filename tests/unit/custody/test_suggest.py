"""The cgroupPrefix that ``custody measure`` suggests, for the cgroup layouts a node really has."""

from __future__ import annotations

import dataclasses

import pytest

from kubeshield.custody.measure import PeerIdentity
from kubeshield.custody.policy import parse_policy
from kubeshield.custody.suggest import Measured, render_yaml, suggested_cgroup_prefix

POD = "4f1c2b9e-1111-2222-3333-444455556666"


@pytest.mark.parametrize(
    ("cgroup", "prefix"),
    [
        (f"0::/kubepods/burstable/pod{POD}/0123abcd", f"/kubepods/burstable/pod{POD}"),
        (
            f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD}.slice/cri-containerd-9f.scope",
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD}.slice",
        ),
        ("0::/system.slice/kubeshield-kms.service", "/system.slice/kubeshield-kms.service"),
        ("4:memory:/process_api/cc89\n1:cpu:/\n0::/", "/process_api/cc89"),  # hybrid: v2 at the root
        ("0::/", None),
    ],
)
def test_suggested_prefix(cgroup: str, prefix: str | None) -> None:
    assert suggested_cgroup_prefix(cgroup)[0] == prefix


def test_the_rendered_rule_matches_the_measured_identity_and_nothing_with_another_uid() -> None:
    identity = PeerIdentity(
        pid=7, uid=0, gid=0, exe="/usr/local/bin/kms-plugin", exe_sha256="ab" * 32,
        cgroup=f"0::/kubepods/besteffort/pod{POD}/ctr1", start_time=1,
    )  # fmt: skip
    text = render_yaml(Measured(identity=identity, real_uid=0, real_gid=0), name="plugin")
    policy = parse_policy("version: 1\nrules:\n" + text)
    assert policy.match(identity) is not None
    restarted = dataclasses.replace(identity, cgroup=f"0::/kubepods/besteffort/pod{POD}/ctr2")
    assert policy.match(restarted) is not None  # a restarted container of the same pod
    other_uid = dataclasses.replace(identity, uid=1000)
    assert policy.match(other_uid) is None


def test_setuid_callers_are_flagged() -> None:
    identity = PeerIdentity(pid=7, uid=0, gid=0, exe="/x", exe_sha256=None, cgroup="0::/a", start_time=1)
    text = render_yaml(Measured(identity=identity, real_uid=1000, real_gid=1000), name="x")
    assert "real and effective ids differ" in text
