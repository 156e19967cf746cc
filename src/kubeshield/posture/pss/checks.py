"""Every Pod Security Standards check, with each policy version it changed at, as upstream
``k8s.io/pod-security-admission/policy/check_*.go`` defines them.

A check is an ID, a level and a list of ``(minimum minor version, function)`` revisions; a function takes
the pod's metadata and spec (plain decoded JSON mappings) and returns ``None`` when the pod is allowed or
a :class:`Violation` with upstream's forbidden reason and detail, byte for byte. Restricted revisions may
override baseline checks (``overrides``) from their version on.

What changed when (policy version -> behaviour), from our reading of the upstream sources:

* 1.0: hostNamespaces, privileged, capabilities_baseline, hostPathVolumes, hostPorts, appArmorProfile
  (annotation and field), seLinuxOptions, procMount, seccompProfile_baseline (alpha annotations),
  sysctls, windowsHostProcess; restricted: restrictedVolumes, runAsNonRoot
* 1.8: allowPrivilegeEscalation
* 1.19: seccompProfile_baseline reads the field instead of annotations; seccompProfile_restricted
* 1.22: capabilities_restricted; 1.23: runAsUser
* 1.25: pods with ``spec.os.name: windows`` skip allowPrivilegeEscalation, seccompProfile_restricted and
  capabilities_restricted
* 1.27, 1.29, 1.32, 1.37: more safe sysctls; 1.31: SELinux type ``container_engine_t``
* 1.34: hostProbesAndHostLifecycle (no ``host`` in probes or lifecycle handlers)
* 1.35: user-namespace pods (``hostUsers: false``) skip runAsNonRoot and runAsUser and the baseline
  procMount check; restricted keeps procMount strict (procMount_restricted overrides procMount)

Two changes upstream made inside the 1.0 revision apply at every version, as upstream does: the image
volume is allowed by restrictedVolumes and the AppArmor *fields* are checked by appArmorProfile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from kubeshield.posture.pss._text import go_quote, join_quote, pluralize

__all__ = ["CHECKS", "Check", "CheckFn", "Revision", "Violation", "visit_containers"]

Obj = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Violation:
    """One failed check: upstream's ForbiddenReason and ForbiddenDetail."""

    check: str
    reason: str
    detail: str

    @property
    def message(self) -> str:
        return f"{self.reason} ({self.detail})" if self.detail else self.reason


CheckFn = Callable[[Obj, Obj], "tuple[str, str] | None"]


@dataclass(frozen=True, slots=True)
class Revision:
    minimum: int  # the minor of policy version v1.<minimum>
    fn: CheckFn
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Check:
    id: str
    level: str  # "baseline" | "restricted"
    revisions: tuple[Revision, ...]


_EMPTY: Obj = {}


def _is_map(value: Any) -> TypeGuard[Obj]:
    # ``type(x) is dict`` first: decoded JSON/YAML is plain dicts, and ABC checks are slow
    return type(value) is dict or isinstance(value, Mapping)


def _m(value: Any) -> Obj:
    return value if _is_map(value) else _EMPTY


def _seq(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list) else ()


def _s(value: Any) -> str:
    return value if isinstance(value, str) else ""


def visit_containers(spec: Obj) -> Iterator[Obj]:
    """Init containers, containers, then ephemeral containers (upstream's visitContainers)."""
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in _seq(spec.get(key)):
            if _is_map(c):
                yield c


def _sc(container: Obj) -> Obj | None:
    sc = container.get("securityContext")
    return sc if _is_map(sc) else None


def _pod_sc(spec: Obj) -> Obj | None:
    sc = spec.get("securityContext")
    return sc if _is_map(sc) else None


def _name(container: Obj) -> str:
    return _s(container.get("name"))


def _containers(names: list[str]) -> str:
    return f"{pluralize('container', 'containers', len(names))} {join_quote(names)}"


def _windows(spec: Obj) -> bool:
    return _m(spec.get("os")).get("name") == "windows"


def _userns(spec: Obj) -> bool:
    """relaxPolicyForUserNamespacePod: ``hostUsers`` explicitly false."""
    return spec.get("hostUsers") is False


# -- baseline ---------------------------------------------------------------------------------------------


def host_namespaces_1_0(meta: Obj, spec: Obj) -> tuple[str, str] | None:
    found = sorted(k for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k) is True)
    return ("host namespaces", ", ".join(found)) if found else None


def privileged_1_0(meta: Obj, spec: Obj) -> tuple[str, str] | None:
    bad = [_name(c) for c in visit_containers(spec) if _m(_sc(c)).get("privileged") is True]
    if bad:
        return "privileged", f"{_containers(bad)} must not set securityContext.privileged=true"
    return None


_CAPABILITIES_BASELINE = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)


def capabilities_baseline_1_0(meta: Obj, spec: Obj) -> tuple[str, str] | None:
    bad: list[str] = []
    caps: set[str] = set()
    for c in visit_containers(spec):
        capabilities = _m(_sc(c)).get("capabilities")
        if not _is_map(capabilities):
            continue
        valid = True
        for cap in _seq(capabilities.get("add")):
            if _s(cap) not in _CAPABILITIES_BASELINE:
                valid = False
                caps.add(_s(cap))
        if not valid:
            bad.append(_name(c))
    if bad:
        return (
            "non-default capabilities",
            f"{_containers(bad)} must not include {join_quote(sorted(caps))} in "
            f"securityContext.capabilities.add",
        )
    return None


def host_path_volumes_1_0(meta: Obj, spec: Obj) -> tuple[str, str] | None:
    bad = [
        _s(v.get("name")) for v in _seq(spec.get("volumes")) if _is_map(v) and v.get("hostPath") is not None
    ]
    if bad:
        return "hostPath volumes", f"{pluralize('volume', 'volumes', len(bad))} {join_quote(bad)}"
    return None


def host_ports_1_0(meta: Obj, spec: Obj) -> tuple[str, str] | None:
    bad: list[str] = []
    ports: set[str] = set()
    for c in visit_containers(spec):
        valid = True
        for port in _seq(c.get("ports")):
            host_port = _m(port).get("hostPort")
            if isinstance(host_port, int) and not isinstance(host_port, bool) and host_port != 0:
                valid = False
                ports.add(str(host_port))
        if not valid:
            bad.append(_name(c))
    if bad:
        return "hostPort", (
            f"{_containers(bad)} {pluralize('uses', 'use', len(bad))} "
            f"{pluralize('hostPort', 'hostPorts', len(ports))} {', '.join(sorted(ports))}"
        )
    return None


_APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"


def _apparmor_annotation_ok(value: str) -> bool:
    return not value or value == "runtime/default" or value.startswith("localhost/")


def _apparmor_type_ok(profile: Obj) -> bool:
    return profile.get("type") in ("RuntimeDefault", "Localhost")


def app_armor_profile_1_0(meta: Obj, spec: Obj) -> tuple[str, str] | None:
    setters: list[str] = []
    values: set[str] = set()
    pod_profile = _m(_pod_sc(spec)).get("appArmorProfile")
    if _is_map(pod_profile) and not _apparmor_type_ok(pod_profile):
        setters.append("pod")
        values.add(_s(pod_profile.get("type")))
    bad: list[str] = []
    for c in visit_containers(spec):
        profile = _m(_sc(c)).get("appArmorProfile")
        if _is_map(profile) and not _apparmor_type_ok(profile):
            bad.append(_name(c))
            values.add(_s(profile.get("type")))
    if bad:
        setters.append(_containers(bad))
    annotations = sorted(
        f"{k}={go_quote(_s(v))}"
        for k, v in _m(meta.get("annotations")).items()
        if isinstance(k, str)
        and k.startswith(_APPARMOR_ANNOTATION_PREFIX)
        and not _apparmor_annotation_ok(_s(v))
    )
    listed = sorted(values) + annotations
    if annotations:
        setters.append(pluralize("annotation", "annotations", len(annotations)))
    if setters:
        return (
            pluralize("forbidden AppArmor profile", "forbidden AppArmor profiles", len(listed)),
            f"{' and '.join(setters)} must not set AppArmor profile type to {join_quote(listed)}",
        )
    return None


_SELINUX_TYPES_1_0 = frozenset({"", "container_t", "container_init_t", "container_kvm_t"})
_SELINUX_TYPES_1_31 = _SELINUX_TYPES_1_0 | {"container_engine_t"}


def _se_linux(allowed: frozenset[str]) -> CheckFn:
    def check(meta: Obj, spec: Obj) -> tuple[str, str] | None:
        bad_types: set[str] = set()
        flags = {"user": False, "role": False}

        def valid(opts: Obj) -> bool:
            ok = True
            kind = _s(opts.get("type"))
            if kind not in allowed:
                ok = False
                bad_types.add(kind)
            for field in ("user", "role"):
                if _s(opts.get(field)):
                    ok = False
                    flags[field] = True
            return ok

        setters: list[str] = []
        pod_opts = _m(_pod_sc(spec)).get("seLinuxOptions")
        if _is_map(pod_opts) and not valid(pod_opts):
            setters.append("pod")
        bad: list[str] = []
        for c in visit_containers(spec):
            opts = _m(_sc(c)).get("seLinuxOptions")
            if _is_map(opts) and not valid(opts):
                bad.append(_name(c))
        if bad:
            setters.append(_containers(bad))
        if not setters:
            return None
        data: list[str] = []
        if bad_types:
            data.append(f"{pluralize('type', 'types', len(bad_types))} {join_quote(sorted(bad_types))}")
        if flags["user"]:
            data.append("user may not be set")
        if flags["role"]:
            data.append("role may not be set")
        return (
            "seLinuxOptions",
            f"{' and '.join(setters)} set forbidden securityContext.seLinuxOptions: {'; '.join(data)}",
        )

    return check


def proc_mount_1_0(meta: Obj, spec: Obj) -> tuple[str, str] | None:
    bad: list[str] = []
    kinds: set[str] = set()
    for c in visit_containers(spec):
        sc = _sc(c)
        if sc is None or sc.get("procMount") is None:
            continue
        value = _s(sc.get("procMount"))
        if value != "Default":
            bad.append(_name(c))
            kinds.add(value)
    if bad:
        return (
            "procMount",
            f"{_containers(bad)} must not set securityContext.procMount to {join_quote(sorted(kinds))}",
        )
    return None


def proc_mount_1_35_baseline(meta: Obj, spec: Obj) -> tuple[str, str] | None:
    if _userns(spec):
        return None
    return proc_mount_1_0(meta, spec)


_SECCOMP_POD_ANNOTATION = "seccomp.security.alpha.kubernetes.io/pod"
_SECCOMP_CONTAINER_PREFIX = "container.seccomp.security.alpha.kubernetes.io/"


def _seccomp_annotation_ok(value: str) -> bool:
    return value in ("runtime/default", "docker/default") or value.startswith("localhost/")


def _seccomp_type_ok(profile: Obj) -> bool:
    return profile.get("type") in ("Localhost", "RuntimeDefault")


def seccomp_profile_baseline_1_0(meta: Obj, spec: Obj) -> tuple[str, str] | None:
    annotations = _m(meta.get("annotations"))
    bad: set[str] = set()
    if _SECCOMP_POD_ANNOTATION in annotations:
        value = _s(annotations[_SECCOMP_POD_ANNOTATION])
        if not _seccomp_annotation_ok(value):
            bad.add(f"{_SECCOMP_POD_ANNOTATION}={go_quote(value)}")
    for c in visit_containers(spec):
        key = _SECCOMP_CONTAINER_PREFIX + _name(c)
        if key in annotations:
            value = _s(annotations[key])
            if not _seccomp_annotation_ok(value):
                bad.add(f"{key}={go_quote(value)}")
    if bad:
        return "seccompProfile", (
            f"forbidden {pluralize('annotation', 'annotations', len(bad))} {', '.join(sorted(bad))}"
        )
    return None


def _seccomp_explicit(spec: Obj) -> tuple[list[str], set[str], bool, list[str]]:
    """(bad setters, bad values, pod-level profile valid, containers without a profile)."""
    setters: list[str] = []
    values: set[str] = set()
    pod_set = False
    pod_profile = _m(_pod_sc(spec)).get("seccompProfile")
    if _is_map(pod_profile):
        if _seccomp_type_ok(pod_profile):
            pod_set = True
        else:
            setters.append("pod")
            values.add(_s(pod_profile.get("type")))
    explicit: list[str] = []
    unset: list[str] = []
    for c in visit_containers(spec):
        profile = _m(_sc(c)).get("seccompProfile")
        if _is_map(profile):
            if not _seccomp_type_ok(profile):
                explicit.append(_name(c))
                values.add(_s(profile.get("type")))
        else:
            unset.append(_name(c))
    if explicit:
        setters.append(_containers(explicit))
    return setters, values, pod_set, unset


def seccomp_profile_baseline_1_19(meta: Obj, spec: Obj) -> tuple[str, str] | None:
    setters, values, _, _ = _seccomp_explicit(spec)
    if setters:
        return "seccompProfile", (
            f"{' and '.join(setters)} must not set securityContext.seccompProfile.type to "
            f"{join_quote(sorted(values))}"
        )
    return None


_SYSCTLS_1_0 = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_unprivileged_port_start",
    }
)
_SYSCTLS_1_27 = _SYSCTLS_1_0 | {"net.ipv4.ip_local_reserved_ports"}
_SYSCTLS_1_29 = _SYSCTLS_1_27 | {
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
_SYSCTLS_1_32 = _SYSCTLS_1_29 | {"net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"}
_SYSCTLS_1_37 = _SYSCTLS_1_32 | {"net.ipv4.tcp_slow_start_after_idle", "net.ipv4.tcp_notsent_lowat"}


def _sysctls(allowed: frozenset[str]) -> CheckFn:
    def check(meta: Obj, spec: Obj) -> tuple[str, str] | None:
        bad = [
            _s(_m(s).get("name"))
            for s in _seq(_m(_pod_sc(spec)).get("sysctls"))
            if _s(_m(s).get("name")) not in allowed
        ]
        return ("forbidden sysctls", ", ".join(bad)) if bad else None

    return check


def windows_host_process_1_0(meta: Obj, spec: Obj) -> tuple[str, str] | None:
    bad = [
        _name(c)
        for c in visit_containers(spec)
        if _m(_m(_sc(c)).get("windowsOptions")).get("hostProcess") is True
    ]
    setters: list[str] = []
    if _m(_m(_pod_sc(spec)).get("windowsOptions")).get("hostProcess") is True:
        setters.append("pod")
    if bad:
        setters.append(_containers(bad))
    if setters:
        return (
            "hostProcess",
            f"{' and '.join(setters)} must not set securityContext.windowsOptions.hostProcess=true",
        )
    return None


def _hosts(handler: Any) -> list[str]:
    if handler is None:
        return []
    hosts = []
    handler = _m(handler)
    for key in ("httpGet", "tcpSocket"):
        action = handler.get(key)
        if action is not None:
            host = _s(_m(action).get("host"))
            if host:
                hosts.append(host)
    return hosts


def host_probes_and_host_lifecycle_1_34(meta: Obj, spec: Obj) -> tuple[str, str] | None:
    bad: set[str] = set()
    hosts: set[str] = set()
    for c in visit_containers(spec):
        found: list[str] = []
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            found += _hosts(c.get(probe))
        lifecycle = _m(c.get("lifecycle"))
        for hook in ("postStart", "preStop"):
            found += _hosts(lifecycle.get(hook))
        if found:
            bad.add(_name(c))
            hosts.update(found)
    if bad:
        return "probe or lifecycle host", (
            f"{pluralize('container', 'containers', len(bad))} {join_quote(sorted(bad))} "
            f"{pluralize('uses', 'use', len(bad))} "
            f"{pluralize('probe or lifecycle host', 'probe or lifecycle hosts', len(hosts))} "
            f"{join_quote(sorted(hosts))}"
        )
    return None


# -- restricted -------------------------------------------------------------------------------------------

_ALLOWED_VOLUMES = (
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
)
_RESTRICTED_VOLUMES = (
    ("hostPath", "hostPath"),
    ("gcePersistentDisk", "gcePersistentDisk"),
    ("awsElasticBlockStore", "awsElasticBlockStore"),
    ("gitRepo", "gitRepo"),
    ("nfs", "nfs"),
    ("iscsi", "iscsi"),
    ("glusterfs", "glusterfs"),
    ("rbd", "rbd"),
    ("flexVolume", "flexVolume"),
    ("cinder", "cinder"),
    ("cephfs", "cephfs"),
    ("flocker", "flocker"),
    ("fc", "fc"),
    ("azureFile", "azureFile"),
    ("vsphereVolume", "vsphereVolume"),
    ("quobyte", "quobyte"),
    ("azureDisk", "azureDisk"),
    ("photonPersistentDisk", "photonPersistentDisk"),
    ("portworxVolume", "portworxVolume"),
    ("scaleIO", "scaleIO"),
    ("storageos", "storageos"),
)


def restricted_volumes_1_0(meta: Obj, spec: Obj) -> tuple[str, str] | None:
    bad: list[str] = []
    kinds: set[str] = set()
    for volume in _seq(spec.get("volumes")):
        if not _is_map(volume):
            continue
        if any(volume.get(k) is not None for k in _ALLOWED_VOLUMES):
            continue
        if all(k == "name" or volume.get(k) is None for k in volume):
            continue  # no source at all: the apiserver defaults it to emptyDir before admission
        bad.append(_s(volume.get("name")))
        kinds.add(
            next((label for key, label in _RESTRICTED_VOLUMES if volume.get(key) is not None), "unknown")
        )
    if bad:
        return "restricted volume types", (
            f"{pluralize('volume', 'volumes', len(bad))} {join_quote(bad)} "
            f"{pluralize('uses', 'use', len(bad))} "
            f"{pluralize('restricted volume type', 'restricted volume types', len(kinds))} "
            f"{join_quote(sorted(kinds))}"
        )
    return None


def allow_privilege_escalation_1_8(meta: Obj, spec: Obj) -> tuple[str, str] | None:
    bad = [
        _name(c) for c in visit_containers(spec) if _m(_sc(c)).get("allowPrivilegeEscalation") is not False
    ]
    if bad:
        return "allowPrivilegeEscalation != false", (
            f"{_containers(bad)} must set securityContext.allowPrivilegeEscalation=false"
        )
    return None


def _not_on_windows(fn: CheckFn) -> CheckFn:
    """The 1.25 revisions: pods that declare ``spec.os.name: windows`` are allowed."""

    def check(meta: Obj, spec: Obj) -> tuple[str, str] | None:
        return None if _windows(spec) else fn(meta, spec)

    return check


def run_as_non_root_1_0(meta: Obj, spec: Obj) -> tuple[str, str] | None:
    setters: list[str] = []
    pod_ok = False
    pod_value = _m(_pod_sc(spec)).get("runAsNonRoot")
    if isinstance(pod_value, bool):
        if pod_value:
            pod_ok = True
        else:
            setters.append("pod")
    explicit: list[str] = []
    implicit: list[str] = []
    for c in visit_containers(spec):
        value = _m(_sc(c)).get("runAsNonRoot")
        if isinstance(value, bool):
            if not value:
                explicit.append(_name(c))
        elif not pod_ok:
            implicit.append(_name(c))
    if explicit:
        setters.append(_containers(explicit))
    if setters:
        return (
            "runAsNonRoot != true",
            f"{' and '.join(setters)} must not set securityContext.runAsNonRoot=false",
        )
    if implicit:
        return (
            "runAsNonRoot != true",
            f"pod or {_containers(implicit)} must set securityContext.runAsNonRoot=true",
        )
    return None


def _skip_for_userns(fn: CheckFn) -> CheckFn:
    """The 1.35 revisions: pods in a user namespace (``hostUsers: false``) are allowed."""

    def check(meta: Obj, spec: Obj) -> tuple[str, str] | None:
        return None if _userns(spec) else fn(meta, spec)

    return check


def _uid_zero(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value == 0


def run_as_user_1_23(meta: Obj, spec: Obj) -> tuple[str, str] | None:
    setters: list[str] = []
    if _uid_zero(_m(_pod_sc(spec)).get("runAsUser")):
        setters.append("pod")
    bad = [_name(c) for c in visit_containers(spec) if _uid_zero(_m(_sc(c)).get("runAsUser"))]
    if bad:
        setters.append(_containers(bad))
    if setters:
        return "runAsUser=0", f"{' and '.join(setters)} must not set runAsUser=0"
    return None


def seccomp_profile_restricted_1_19(meta: Obj, spec: Obj) -> tuple[str, str] | None:
    setters, values, pod_set, unset = _seccomp_explicit(spec)
    if setters:
        return "seccompProfile", (
            f"{' and '.join(setters)} must not set securityContext.seccompProfile.type to "
            f"{join_quote(sorted(values))}"
        )
    implicit = [] if pod_set else unset
    if implicit:
        return "seccompProfile", (
            f"pod or {_containers(implicit)} must set securityContext.seccompProfile.type to "
            f'"RuntimeDefault" or "Localhost"'
        )
    return None


def capabilities_restricted_1_22(meta: Obj, spec: Obj) -> tuple[str, str] | None:
    missing_drop: list[str] = []
    adding: list[str] = []
    caps: set[str] = set()
    for c in visit_containers(spec):
        capabilities = _m(_sc(c)).get("capabilities")
        if not _is_map(capabilities):
            missing_drop.append(_name(c))
            continue
        if "ALL" not in [_s(x) for x in _seq(capabilities.get("drop"))]:
            missing_drop.append(_name(c))
        forbidden = False
        for cap in _seq(capabilities.get("add")):
            if _s(cap) != "NET_BIND_SERVICE":
                forbidden = True
                caps.add(_s(cap))
        if forbidden:
            adding.append(_name(c))
    details: list[str] = []
    if missing_drop:
        details.append(f'{_containers(missing_drop)} must set securityContext.capabilities.drop=["ALL"]')
    if adding:
        details.append(
            f"{_containers(adding)} must not include {join_quote(sorted(caps))} in "
            f"securityContext.capabilities.add"
        )
    return ("unrestricted capabilities", "; ".join(details)) if details else None


CHECKS: tuple[Check, ...] = (
    Check("hostNamespaces", "baseline", (Revision(0, host_namespaces_1_0),)),
    Check("privileged", "baseline", (Revision(0, privileged_1_0),)),
    Check("capabilities_baseline", "baseline", (Revision(0, capabilities_baseline_1_0),)),
    Check("hostPathVolumes", "baseline", (Revision(0, host_path_volumes_1_0),)),
    Check("hostPorts", "baseline", (Revision(0, host_ports_1_0),)),
    Check("appArmorProfile", "baseline", (Revision(0, app_armor_profile_1_0),)),
    Check(
        "seLinuxOptions",
        "baseline",
        (Revision(0, _se_linux(_SELINUX_TYPES_1_0)), Revision(31, _se_linux(_SELINUX_TYPES_1_31))),
    ),
    Check("procMount", "baseline", (Revision(0, proc_mount_1_0), Revision(35, proc_mount_1_35_baseline))),
    Check(
        "seccompProfile_baseline",
        "baseline",
        (Revision(0, seccomp_profile_baseline_1_0), Revision(19, seccomp_profile_baseline_1_19)),
    ),
    Check(
        "sysctls",
        "baseline",
        (
            Revision(0, _sysctls(_SYSCTLS_1_0)),
            Revision(27, _sysctls(_SYSCTLS_1_27)),
            Revision(29, _sysctls(_SYSCTLS_1_29)),
            Revision(32, _sysctls(_SYSCTLS_1_32)),
            Revision(37, _sysctls(_SYSCTLS_1_37)),
        ),
    ),
    Check("windowsHostProcess", "baseline", (Revision(0, windows_host_process_1_0),)),
    Check("hostProbesAndHostLifecycle", "baseline", (Revision(34, host_probes_and_host_lifecycle_1_34),)),
    Check("restrictedVolumes", "restricted", (Revision(0, restricted_volumes_1_0, ("hostPathVolumes",)),)),
    Check(
        "allowPrivilegeEscalation",
        "restricted",
        (
            Revision(8, allow_privilege_escalation_1_8),
            Revision(25, _not_on_windows(allow_privilege_escalation_1_8)),
        ),
    ),
    Check(
        "runAsNonRoot",
        "restricted",
        (Revision(0, run_as_non_root_1_0), Revision(35, _skip_for_userns(run_as_non_root_1_0))),
    ),
    Check(
        "runAsUser",
        "restricted",
        (Revision(23, run_as_user_1_23), Revision(35, _skip_for_userns(run_as_user_1_23))),
    ),
    Check(
        "seccompProfile_restricted",
        "restricted",
        (
            Revision(19, seccomp_profile_restricted_1_19, ("seccompProfile_baseline",)),
            Revision(25, _not_on_windows(seccomp_profile_restricted_1_19), ("seccompProfile_baseline",)),
        ),
    ),
    Check(
        "capabilities_restricted",
        "restricted",
        (
            Revision(22, capabilities_restricted_1_22, ("capabilities_baseline",)),
            Revision(25, _not_on_windows(capabilities_restricted_1_22), ("capabilities_baseline",)),
        ),
    ),
    Check("procMount_restricted", "restricted", (Revision(35, proc_mount_1_0, ("procMount",)),)),
)
