"""A deliberately misconfigured cluster, exported the way an operator would export one: ``kubectl get
-o yaml`` Lists (and single objects, one per file) plus node files copied from a control-plane node and a
worker. ``PLANTED`` lists every problem put in it; ``write_cluster(..., fixed=True)`` writes the same
cluster with every problem fixed (it must give no finding at all).

Certificates are made at test time; no key material is committed.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)

# (finding id, object or file it must name)
PLANTED: set[tuple[str, str]] = {
    ("KS-ENC-004", "node/etc/kubernetes/enc/enc.yaml"),
    ("KS-ENC-006", "node/etc/kubernetes/manifests/kube-apiserver.yaml"),
    ("KS-AUDIT-002", "node/etc/kubernetes/audit/policy.yaml"),
    ("KS-KUBELET-001", "worker-1/var/lib/kubelet/config.yaml"),
    ("KS-KUBELET-002", "worker-1/var/lib/kubelet/config.yaml"),
    ("KS-KUBELET-003", "worker-1/var/lib/kubelet/config.yaml"),
    ("KS-RBAC-001", "User alice"),
    ("KS-RBAC-001", "Group monitoring-team"),
    ("KS-RBAC-002", "ServiceAccount shop/default"),
    ("KS-RBAC-003", "User bob"),
    ("KS-RBAC-004", "Group support"),
    ("KS-RBAC-005", "User carol"),
    ("KS-PSA-001", "Namespace legacy"),
    ("KS-WL-001", "Deployment shop/web container app"),
    ("KS-WL-002", "Pod shop/batch"),
    ("KS-PSS-001", "Pod legacy/node-debugger"),
    ("KS-WL-003", "Pod legacy/node-debugger"),
    ("KS-PSS-002", "Pod monitoring/agent"),
    ("KS-KS-003", "node/etc/kubeshield/relay/tls.crt"),
}
PLANTED_ERRORS = {"RoleBinding shop/ghost: references Role shop/missing-role, which does not exist"}


def _dump(path: Path, *docs: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def _list(*items: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": list(items)}


def _meta(name: str, ns: str | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns:
        meta["namespace"] = ns
    meta.update(extra)
    return meta


def _cert(path: Path, *, not_after: dt.datetime) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubeshield-relay")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=300))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _restricted_container(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "registry.example/app:1",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        **extra,
    }


def write_cluster(root: Path, *, fixed: bool = False) -> Path:
    key = base64.b64encode(os.urandom(32)).decode()
    node = root / "node"
    # -- control-plane node files ----------------------------------------------------------------------
    providers: list[dict[str, Any]] = (
        [
            {
                "kms": {
                    "apiVersion": "v2",
                    "name": "kubeshield",
                    "endpoint": "unix:///var/run/kubeshield/kms.sock",
                }
            },
            {"identity": {}},
        ]
        if fixed
        else [{"aescbc": {"keys": [{"name": "k1", "secret": key}]}}, {"identity": {}}]
    )
    _dump(
        node / "etc/kubernetes/enc/enc.yaml",
        {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "EncryptionConfiguration",
            "resources": [{"resources": ["secrets"], "providers": providers}],
        },
    )
    secrets_rule = {"level": "Metadata", "resources": [{"group": "", "resources": ["secrets"]}]}
    catch_all = {"level": "RequestResponse"} if not fixed else {"level": "Request"}
    _dump(
        node / "etc/kubernetes/audit/policy.yaml",
        {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "rules": [
                {"level": "None", "users": ["system:kube-proxy"]},
                *([secrets_rule] if fixed else []),
                catch_all,
            ],
        },
    )
    flags = [
        "kube-apiserver",
        "--advertise-address=10.0.0.10",
        "--encryption-provider-config=/etc/kubernetes/enc/enc.yaml",
        "--audit-policy-file=/etc/kubernetes/audit/policy.yaml",
        "--audit-log-path=/var/log/kubernetes/audit.log",
    ]
    if fixed:
        flags.append("--encryption-provider-config-automatic-reload=true")
    _dump(
        node / "etc/kubernetes/manifests/kube-apiserver.yaml",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": _meta("kube-apiserver", "kube-system", labels={"component": "kube-apiserver"}),
            "spec": {
                "hostNetwork": True,
                "containers": [
                    {
                        "name": "kube-apiserver",
                        "image": "registry.k8s.io/kube-apiserver:v1.33.0",
                        "command": flags,
                    }
                ],
                "volumes": [{"name": "k8s", "hostPath": {"path": "/etc/kubernetes"}}],
            },
        },
    )
    _dump(
        node / "etc/kubernetes/manifests/kubeshield-relay.yaml",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": _meta("kubeshield-relay", "kube-system"),
            "spec": {
                "hostNetwork": True,
                "containers": [
                    {
                        "name": "relay",
                        "image": "kubeshield:0.1",
                        "command": ["kubeshield", "kms", "relay"],
                        "args": [
                            "--socket=/var/run/kubeshield/kms.sock",
                            "--upstream=https://kms.example:9443",
                            "--tls-cert=/etc/kubeshield/relay/tls.crt",
                            "--tls-key=/etc/kubeshield/relay/tls.key",
                            "--ca=/etc/kubeshield/relay/ca.crt",
                        ],
                    }
                ],
            },
        },
    )
    _cert(node / "etc/kubeshield/relay/tls.crt", not_after=NOW + dt.timedelta(days=200 if fixed else 10))
    # -- worker node kubelet ---------------------------------------------------------------------------
    kubelet: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {"anonymous": {"enabled": not fixed}, "webhook": {"enabled": True}},
        "authorization": {"mode": "Webhook" if fixed else "AlwaysAllow"},
    }
    if not fixed:
        kubelet["readOnlyPort"] = 10255
    _dump(root / "worker-1/var/lib/kubelet/config.yaml", kubelet)

    # -- namespaces ----------------------------------------------------------------------------------
    enforce = "pod-security.kubernetes.io/enforce"
    namespaces = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta("kube-system")},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta("shop", labels={enforce: "baseline"})},
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": _meta("monitoring", labels={enforce: "restricted"}),
        },
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": _meta("legacy", labels={enforce: "baseline"} if fixed else {"team": "old"}),
        },
    ]
    _dump(root / "objects/namespaces.yaml", _list(*namespaces))

    # -- RBAC ----------------------------------------------------------------------------------------
    def cluster_role(name: str, rules: list[dict[str, Any]], **meta: Any) -> dict[str, Any]:
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": _meta(name, **meta),
            "rules": rules,
        }

    def binding(
        kind: str,
        name: str,
        ns: str | None,
        role_kind: str,
        role: str,
        subjects: list[dict[str, Any]],
        **meta: Any,
    ) -> dict[str, Any]:
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": kind,
            "metadata": _meta(name, ns, **meta),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
            "subjects": subjects,
        }

    def user(name: str) -> dict[str, Any]:
        return {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name}

    def group(name: str) -> dict[str, Any]:
        return {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name}

    bootstrap = {"labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}}
    roles = [
        cluster_role(
            "cluster-admin", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}], **bootstrap
        ),
        cluster_role(
            "view", [{"apiGroups": [""], "resources": ["pods", "services"], "verbs": ["get", "list"]}]
        ),
        cluster_role(
            "secret-reader", [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]
        ),
        cluster_role(
            "monitoring-view",
            [],
            labels={},
        )
        | {
            "aggregationRule": {
                "clusterRoleSelectors": [
                    {"matchLabels": {"rbac.example.com/aggregate-to-monitoring": "true"}}
                ]
            }
        },
        cluster_role(
            "monitoring-everything",
            [{"apiGroups": [""], "resources": ["*"] if not fixed else ["pods"], "verbs": ["get"]}],
            labels={"rbac.example.com/aggregate-to-monitoring": "true"},
        ),
        cluster_role(
            "role-manager",
            [
                {
                    "apiGroups": ["rbac.authorization.k8s.io"],
                    "resources": ["roles"],
                    "verbs": ["get", "escalate", "bind"] if not fixed else ["get"],
                }
            ],
        ),
        cluster_role(
            "impersonator",
            [{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"] if not fixed else ["get"]}],
        ),
    ]
    shop_role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta("lister", "shop"),
        "rules": [
            {"apiGroups": [""], "resources": ["secrets" if not fixed else "configmaps"], "verbs": ["list"]}
        ],
    }
    debugger = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta("debugger", "shop"),
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["pods/exec" if not fixed else "pods/log"],
                "verbs": ["create", "get"],
            }
        ],
    }
    bindings = [
        binding(
            "ClusterRoleBinding",
            "cluster-admin",
            None,
            "ClusterRole",
            "cluster-admin",
            [group("system:masters")],
            **bootstrap,
        ),
        binding(
            "ClusterRoleBinding",
            "everyone-views",
            None,
            "ClusterRole",
            "view",
            [group("system:authenticated")],
        ),
        binding(
            "ClusterRoleBinding",
            "alice-secrets",
            None,
            "ClusterRole",
            "secret-reader" if not fixed else "view",
            [user("alice")],
        ),
        binding(
            "RoleBinding",
            "monitoring",
            "monitoring",
            "ClusterRole",
            "monitoring-view",
            [group("monitoring-team")],
        ),
        binding("ClusterRoleBinding", "bob-roles", None, "ClusterRole", "role-manager", [user("bob")]),
        binding("ClusterRoleBinding", "support", None, "ClusterRole", "impersonator", [group("support")]),
        binding(
            "RoleBinding",
            "lister",
            "shop",
            "Role",
            "lister",
            [{"kind": "ServiceAccount", "name": "default", "namespace": "shop"}],
        ),
        binding("RoleBinding", "debug", "shop", "Role", "debugger", [user("carol")]),
        binding(
            "RoleBinding",
            "web",
            "shop",
            "ClusterRole",
            "view",
            [{"kind": "ServiceAccount", "name": "web", "namespace": "shop"}],
        ),
    ]
    if not fixed:
        bindings.append(binding("RoleBinding", "ghost", "shop", "Role", "missing-role", [user("dave")]))
    _dump(root / "objects/clusterroles.yaml", _list(*roles))
    # one object per file, as `kubectl get ... -o yaml > name.yaml` loops write them
    for b in bindings:
        _dump(root / "objects/bindings" / f"{b['kind']}-{b['metadata']['name']}.yaml", b)
    _dump(root / "objects/roles.yaml", _list(shop_role, debugger))

    # -- workloads -----------------------------------------------------------------------------------
    sas = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(n, ns),
            **({"automountServiceAccountToken": False} if n == "default" else {}),
        }
        for ns, n in (
            ("shop", "default"),
            ("shop", "web"),
            ("shop", "batch"),
            ("legacy", "default"),
            ("monitoring", "agent"),
        )
    ]
    env = (
        [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]
        if not fixed
        else []
    )
    web: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta("web", "shop"),
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "serviceAccountName": "web",
                    "containers": [
                        {
                            "name": "app",
                            "image": "registry.example/web:1",
                            "env": env,
                            "volumeMounts": [{"name": "db", "mountPath": "/etc/db"}],
                        }
                    ],
                    "volumes": [{"name": "db", "secret": {"secretName": "db"}}],
                },
            },
        },
    }
    web_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(
            "web-7d4b9-x2x9z",
            "shop",
            ownerReferences=[
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9", "uid": "u1"}
            ],
        ),
        "spec": {**web["spec"]["template"]["spec"], "nodeName": "worker-1"},
    }
    batch = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta("batch", "shop"),
        "spec": {
            "serviceAccountName": "batch",
            **({"automountServiceAccountToken": False} if fixed else {}),
            "containers": [{"name": "job", "image": "registry.example/batch:1"}],
            "nodeName": "worker-2",
        },
    }
    debugger_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "nodeName": "worker-1",
        "containers": [{"name": "shell", "image": "busybox", "securityContext": {"privileged": not fixed}}],
    }
    if not fixed:
        debugger_spec["volumes"] = [{"name": "host", "hostPath": {"path": "/"}}]
    node_debugger = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta("node-debugger", "legacy"),
        "spec": debugger_spec,
    }
    agent_container = (
        _restricted_container("agent") if fixed else {"name": "agent", "image": "registry.example/agent:1"}
    )
    agent = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta("agent", "monitoring"),
        "spec": {
            "serviceAccountName": "agent",
            "automountServiceAccountToken": False,
            "containers": [agent_container],
            "nodeName": "worker-2",
        },
    }
    mirror = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(
            "kube-apiserver-cp-1", "kube-system", annotations={"kubernetes.io/config.mirror": "abc"}
        ),
        "spec": {
            "nodeName": "cp-1",
            "hostNetwork": True,
            "containers": [
                {
                    "name": "kube-apiserver",
                    "image": "registry.k8s.io/kube-apiserver:v1.33.0",
                    "command": flags,
                }
            ],
        },
    }
    _dump(root / "objects/serviceaccounts.yaml", _list(*sas))
    _dump(root / "objects/workloads.yaml", _list(web))
    _dump(root / "objects/pods.yaml", _list(web_pod, batch, node_debugger, agent, mirror))
    (root / "README.txt").write_text("exported for kubeshield posture tests\n")
    return root
