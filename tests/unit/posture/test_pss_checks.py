# ruff: noqa: E501 - tables of cases read best one case a line
"""Every Pod Security check at every policy version v1.0 .. v1.<newest>, latest and a future version.

Each case is a pod (metadata, spec) and what one check says about it, written from our reading of the
Pod Security Standards and of upstream's check sources: ``expect(minor, level)`` gives the (reason,
detail) the check must report at that version and level, or None when it must allow the pod. The test
evaluates the pod at every version and level and compares that check's result only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from kubeshield.posture.pss import CHECKS, LATEST, NEWEST_VERSION, LevelVersion, Version, evaluate

Expect = Callable[[int, str], "tuple[str, str] | None"]


@dataclass(frozen=True)
class Case:
    name: str
    check: str
    spec: dict[str, Any]
    expect: Expect
    metadata: dict[str, Any] | None = None


def always(reason: str, detail: str, *, levels: tuple[str, ...] = ("baseline", "restricted")) -> Expect:
    return lambda minor, level: (reason, detail) if level in levels else None


def between(
    lo: int, hi: int | None, reason: str, detail: str, *, levels: tuple[str, ...] = ("baseline", "restricted")
) -> Expect:
    """Reported from v1.lo up to (not including) v1.hi."""

    def f(minor: int, level: str) -> tuple[str, str] | None:
        if level in levels and minor >= lo and (hi is None or minor < hi):
            return reason, detail
        return None

    return f


def c(name: str, **sc: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "image": "img"}
    if sc:
        out["securityContext"] = sc
    return out


ALL = ("baseline", "restricted")
B = ("baseline",)
R = ("restricted",)

CASES = [
    # hostNamespaces -------------------------------------------------------------------------------------
    Case("host-all", "hostNamespaces", {"hostNetwork": True, "hostPID": True, "hostIPC": True, "containers": [c("a")]},
         always("host namespaces", "hostIPC, hostNetwork, hostPID")),
    Case("host-false", "hostNamespaces", {"hostNetwork": False, "containers": [c("a")]}, lambda m, lv: None),
    # privileged -------------------------------------------------------------------------------------------
    Case("privileged", "privileged",
         {"initContainers": [c("init", privileged=True)], "containers": [c("a", privileged=True), c("b", privileged=False)],
          "ephemeralContainers": [c("dbg", privileged=True)]},
         always("privileged", 'containers "init", "a", "dbg" must not set securityContext.privileged=true')),
    # capabilities_baseline: overridden by capabilities_restricted from 1.22 in restricted ---------------
    Case("caps-baseline", "capabilities_baseline",
         {"containers": [c("a", capabilities={"add": ["NET_RAW", "CHOWN", "SYS_ADMIN"]}), c("b", capabilities={"add": ["KILL"]})]},
         lambda m, lv: ("non-default capabilities", 'container "a" must not include "NET_RAW", "SYS_ADMIN" in securityContext.capabilities.add')
         if lv == "baseline" or m < 22 else None),
    # hostPathVolumes: baseline only (restrictedVolumes replaces it in restricted at every version) -------
    Case("hostpath", "hostPathVolumes",
         {"containers": [c("a")], "volumes": [{"name": "h1", "hostPath": {"path": "/"}}, {"name": "e", "emptyDir": {}}, {"name": "h2", "hostPath": {"path": "/var"}}]},
         always("hostPath volumes", 'volumes "h1", "h2"', levels=B)),
    # hostPorts: the ports are a sorted set of strings --------------------------------------------------
    Case("hostports", "hostPorts",
         {"containers": [c("a") | {"ports": [{"containerPort": 1, "hostPort": 9}, {"containerPort": 2, "hostPort": 10}]},
                         c("b") | {"ports": [{"containerPort": 3}]}]},
         always("hostPort", 'container "a" uses hostPorts 10, 9')),
    Case("hostports-plural", "hostPorts",
         {"containers": [c("a") | {"ports": [{"hostPort": 80}]}, c("b") | {"ports": [{"hostPort": 80}]}]},
         always("hostPort", 'containers "a", "b" use hostPort 80')),
    # appArmorProfile: fields and annotations, at every version ------------------------------------------
    Case("apparmor", "appArmorProfile",
         {"securityContext": {"appArmorProfile": {"type": "Unconfined"}}, "containers": [c("a", appArmorProfile={"type": "RuntimeDefault"})]},
         always("forbidden AppArmor profiles",
                'pod and annotation must not set AppArmor profile type to "Unconfined", '
                '"container.apparmor.security.beta.kubernetes.io/a="unconfined""'),
         metadata={"annotations": {"container.apparmor.security.beta.kubernetes.io/a": "unconfined",
                                   "container.apparmor.security.beta.kubernetes.io/b": "localhost/prof"}}),
    Case("apparmor-container", "appArmorProfile",
         {"containers": [c("a", appArmorProfile={"type": "Unconfined"}), c("b", appArmorProfile={"type": "Localhost", "localhostProfile": "p"})]},
         always("forbidden AppArmor profile", 'container "a" must not set AppArmor profile type to "Unconfined"')),
    # seLinuxOptions: container_engine_t allowed from 1.31 -----------------------------------------------
    Case("selinux-engine", "seLinuxOptions",
         {"containers": [c("a", seLinuxOptions={"type": "container_engine_t"})]},
         between(0, 31, "seLinuxOptions", 'container "a" set forbidden securityContext.seLinuxOptions: type "container_engine_t"')),
    Case("selinux-user-role", "seLinuxOptions",
         {"securityContext": {"seLinuxOptions": {"user": "u", "role": "r"}}, "containers": [c("a", seLinuxOptions={"type": "spc_t"})]},
         always("seLinuxOptions", 'pod and container "a" set forbidden securityContext.seLinuxOptions: type "spc_t"; user may not be set; role may not be set')),
    # procMount: baseline relaxes user-namespace pods from 1.35; restricted never does ------------------
    Case("procmount-userns", "procMount",
         {"hostUsers": False, "containers": [c("a", procMount="Unmasked"), c("b", procMount="Default")]},
         lambda m, lv: ("procMount", 'container "a" must not set securityContext.procMount to "Unmasked"')
         if m < 35 else None),
    Case("procmount-restricted-userns", "procMount_restricted",
         {"hostUsers": False, "containers": [c("a", procMount="Unmasked")]},
         between(35, None, "procMount", 'container "a" must not set securityContext.procMount to "Unmasked"', levels=R)),
    Case("procmount-host-users", "procMount",
         {"containers": [c("a", procMount="Unmasked"), c("b", procMount="weird")]},
         lambda m, lv: ("procMount", 'containers "a", "b" must not set securityContext.procMount to "Unmasked", "weird"')
         if lv == "baseline" or m < 35 else None),
    # seccompProfile_baseline: annotations until 1.18, the field from 1.19 ------------------------------
    Case("seccomp-annotation", "seccompProfile_baseline",
         {"containers": [c("a"), c("b")]},
         between(0, 19, "seccompProfile",
                 'forbidden annotations container.seccomp.security.alpha.kubernetes.io/b="unconfined", '
                 'seccomp.security.alpha.kubernetes.io/pod="unconfined"'),
         metadata={"annotations": {"seccomp.security.alpha.kubernetes.io/pod": "unconfined",
                                   "container.seccomp.security.alpha.kubernetes.io/a": "runtime/default",
                                   "container.seccomp.security.alpha.kubernetes.io/b": "unconfined"}}),
    Case("seccomp-field", "seccompProfile_baseline",
         {"securityContext": {"seccompProfile": {"type": "Unconfined"}}, "containers": [c("a", seccompProfile={"type": "RuntimeDefault"})]},
         lambda m, lv: ("seccompProfile", 'pod must not set securityContext.seccompProfile.type to "Unconfined"')
         if m >= 19 and lv == "baseline" else None),
    # sysctls: the safe set grows at 1.27, 1.29, 1.32, 1.37 -----------------------------------------------
    *[
        Case(f"sysctl-{name}", "sysctls", {"securityContext": {"sysctls": [{"name": name, "value": "1"}]}, "containers": [c("a")]},
             between(0, since, "forbidden sysctls", name))
        for name, since in (
            ("net.ipv4.ip_local_reserved_ports", 27), ("net.ipv4.tcp_keepalive_time", 29),
            ("net.ipv4.tcp_fin_timeout", 29), ("net.ipv4.tcp_keepalive_intvl", 29),
            ("net.ipv4.tcp_keepalive_probes", 29), ("net.ipv4.tcp_rmem", 32), ("net.ipv4.tcp_wmem", 32),
            ("net.ipv4.tcp_slow_start_after_idle", 37), ("net.ipv4.tcp_notsent_lowat", 37),
        )
    ],
    Case("sysctl-always", "sysctls",
         {"securityContext": {"sysctls": [{"name": "kernel.msgmax"}, {"name": "kernel.shm_rmid_forced"}, {"name": "vm.swappiness"}]}, "containers": [c("a")]},
         always("forbidden sysctls", "kernel.msgmax, vm.swappiness")),
    # windowsHostProcess ---------------------------------------------------------------------------------
    Case("hostprocess", "windowsHostProcess",
         {"securityContext": {"windowsOptions": {"hostProcess": True}}, "containers": [c("a", windowsOptions={"hostProcess": True}), c("b")]},
         always("hostProcess", 'pod and container "a" must not set securityContext.windowsOptions.hostProcess=true')),
    # hostProbesAndHostLifecycle: from 1.34 ----------------------------------------------------------------
    Case("probe-host", "hostProbesAndHostLifecycle",
         {"containers": [c("a") | {"livenessProbe": {"httpGet": {"host": "10.0.0.1", "port": 80}},
                                   "lifecycle": {"preStop": {"tcpSocket": {"host": "evil", "port": 1}}}},
                         c("b") | {"readinessProbe": {"tcpSocket": {"port": 1}}}]},
         between(34, None, "probe or lifecycle host", 'container "a" uses probe or lifecycle hosts "10.0.0.1", "evil"')),
    # restrictedVolumes ------------------------------------------------------------------------------------
    Case("volumes", "restrictedVolumes",
         {"containers": [c("a")], "volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}, {"name": "h", "hostPath": {"path": "/"}},
                                              {"name": "img", "image": {"reference": "x"}}, {"name": "e", "emptyDir": {}}, {"name": "d"},
                                              {"name": "ceph", "cephfs": {"monitors": ["m"]}}, {"name": "new", "someFutureVolume": {}}]},
         always("restricted volume types", 'volumes "n", "h", "ceph", "new" use restricted volume types "cephfs", "hostPath", "nfs", "unknown"', levels=R)),
    # allowPrivilegeEscalation: from 1.8; Windows pods from 1.25 ---------------------------------------
    Case("ape", "allowPrivilegeEscalation",
         {"containers": [c("a"), c("b", allowPrivilegeEscalation=True), c("c", allowPrivilegeEscalation=False)]},
         between(8, None, "allowPrivilegeEscalation != false", 'containers "a", "b" must set securityContext.allowPrivilegeEscalation=false', levels=R)),
    Case("ape-windows", "allowPrivilegeEscalation",
         {"os": {"name": "windows"}, "containers": [c("a")]},
         between(8, 25, "allowPrivilegeEscalation != false", 'container "a" must set securityContext.allowPrivilegeEscalation=false', levels=R)),
    # runAsNonRoot: user-namespace pods from 1.35 ----------------------------------------------------------
    Case("nonroot-explicit", "runAsNonRoot",
         {"securityContext": {"runAsNonRoot": False}, "containers": [c("a", runAsNonRoot=False), c("b")]},
         always("runAsNonRoot != true", 'pod and container "a" must not set securityContext.runAsNonRoot=false', levels=R)),
    Case("nonroot-implicit", "runAsNonRoot",
         {"containers": [c("a"), c("b", runAsNonRoot=True)]},
         always("runAsNonRoot != true", 'pod or container "a" must set securityContext.runAsNonRoot=true', levels=R)),
    Case("nonroot-pod-level", "runAsNonRoot",
         {"securityContext": {"runAsNonRoot": True}, "containers": [c("a"), c("b")]}, lambda m, lv: None),
    Case("nonroot-userns", "runAsNonRoot",
         {"hostUsers": False, "containers": [c("a")]},
         between(0, 35, "runAsNonRoot != true", 'pod or container "a" must set securityContext.runAsNonRoot=true', levels=R)),
    # runAsUser: from 1.23; user-namespace pods from 1.35 ------------------------------------------------
    Case("runasuser", "runAsUser",
         {"securityContext": {"runAsUser": 0}, "containers": [c("a", runAsUser=0), c("b", runAsUser=1000)]},
         between(23, None, "runAsUser=0", 'pod and container "a" must not set runAsUser=0', levels=R)),
    Case("runasuser-userns", "runAsUser",
         {"hostUsers": False, "containers": [c("a", runAsUser=0)]},
         between(23, 35, "runAsUser=0", 'container "a" must not set runAsUser=0', levels=R)),
    # seccompProfile_restricted: from 1.19; Windows from 1.25 ---------------------------------------------
    Case("seccomp-restricted", "seccompProfile_restricted",
         {"containers": [c("a"), c("b", seccompProfile={"type": "Localhost", "localhostProfile": "p"})]},
         between(19, None, "seccompProfile", 'pod or container "a" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost"', levels=R)),
    Case("seccomp-restricted-explicit", "seccompProfile_restricted",
         {"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}, "containers": [c("a", seccompProfile={"type": "Unconfined"}), c("b")]},
         between(19, None, "seccompProfile", 'container "a" must not set securityContext.seccompProfile.type to "Unconfined"', levels=R)),
    Case("seccomp-restricted-windows", "seccompProfile_restricted",
         {"os": {"name": "windows"}, "containers": [c("a")]},
         between(19, 25, "seccompProfile", 'pod or container "a" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost"', levels=R)),
    # capabilities_restricted: from 1.22; Windows from 1.25 -----------------------------------------------
    Case("caps-restricted", "capabilities_restricted",
         {"containers": [c("a"), c("b", capabilities={"drop": ["ALL"], "add": ["NET_BIND_SERVICE", "NET_ADMIN"]}),
                         c("c", capabilities={"drop": ["NET_RAW"]}), c("d", capabilities={"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]})]},
         between(22, None, "unrestricted capabilities",
                 'containers "a", "c" must set securityContext.capabilities.drop=["ALL"]; '
                 'container "b" must not include "NET_ADMIN" in securityContext.capabilities.add', levels=R)),
    Case("caps-restricted-windows", "capabilities_restricted",
         {"os": {"name": "windows"}, "containers": [c("a")]},
         between(22, 25, "unrestricted capabilities", 'container "a" must set securityContext.capabilities.drop=["ALL"]', levels=R)),
]  # fmt: skip

VERSIONS = [*range(NEWEST_VERSION + 1)]


def _result(case: Case, lv: LevelVersion) -> tuple[str, str] | None:
    found = [v for v in evaluate(lv, case.metadata or {}, case.spec) if v.check == case.check]
    assert len(found) <= 1
    return (found[0].reason, found[0].detail) if found else None


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_every_check_at_every_version(case: Case, level: str) -> None:
    mismatches = []
    for minor in VERSIONS:
        got = _result(case, LevelVersion(level, Version(minor)))
        want = case.expect(minor, level)
        if got != want:
            mismatches.append((f"v1.{minor}", got, want))
    # latest and versions newer than the newest evaluate as the newest
    for version in (LATEST, Version(NEWEST_VERSION + 5)):
        got = _result(case, LevelVersion(level, version))
        if got != case.expect(NEWEST_VERSION, level):
            mismatches.append((str(version), got, case.expect(NEWEST_VERSION, level)))
    assert not mismatches, mismatches


def test_every_check_has_cases() -> None:
    assert {c.id for c in CHECKS} == {case.check for case in CASES}


def test_newest_policy_version() -> None:
    assert NEWEST_VERSION == 37


def test_privileged_level_allows_everything() -> None:
    spec = {"hostNetwork": True, "containers": [c("a", privileged=True)]}
    assert evaluate(LevelVersion("privileged", LATEST), {}, spec) == []


def test_upstream_order_and_aggregate_message() -> None:
    from kubeshield.posture.pss import aggregate_detail

    spec = {
        "hostNetwork": True,
        "containers": [c("a", privileged=True)],
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
    }
    violations = evaluate(LevelVersion("restricted", LATEST), {}, spec)
    # baseline check IDs sorted, then restricted IDs sorted
    assert [v.check for v in violations] == [
        "hostNamespaces", "privileged", "allowPrivilegeEscalation", "capabilities_restricted",
        "restrictedVolumes", "runAsNonRoot", "seccompProfile_restricted",
    ]  # fmt: skip
    assert aggregate_detail(violations[:2]) == (
        'host namespaces (hostNetwork), privileged (container "a" must not set securityContext.privileged=true)'
    )


def test_a_fully_restricted_pod_passes_every_version() -> None:
    spec = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [c("a", allowPrivilegeEscalation=False, capabilities={"drop": ["ALL"]})],
        "volumes": [
            {"name": "s", "secret": {"secretName": "x"}},
            {"name": "p", "projected": {"sources": []}},
        ],
    }
    for minor in VERSIONS:
        for level in ("baseline", "restricted"):
            assert evaluate(LevelVersion(level, Version(minor)), {}, spec) == [], (level, minor)
