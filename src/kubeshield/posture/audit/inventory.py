"""What the exposure audit looks at: Kubernetes objects and node files.

Offline (``--from-dir DIR``) every ``*.yaml``/``*.yml``/``*.json`` under DIR is read: ``kubectl get -o yaml``
Lists and single objects (one file per object, or many per file). Node files are recognised by content:

* a Pod whose container runs ``kube-apiserver`` (the static pod manifest, or its mirror pod);
* ``EncryptionConfiguration`` (apiserver.config.k8s.io), audit ``Policy`` (audit.k8s.io),
  ``KubeletConfiguration`` (kubelet.config.k8s.io);
* a Pod whose container runs ``kubeshield kms relay`` (its certificate files are checked for expiry).

A file the apiserver's flags name (``--encryption-provider-config=/etc/kubernetes/enc/enc.yaml``) is
found at ``DIR/etc/kubernetes/enc/enc.yaml``, else as the only file under DIR with that name; certificates
(``*.crt``, ``*.pem``) are found the same way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubeshield.posture._docs import Document, iter_objects

__all__ = [
    "SYSTEM_NAMESPACES",
    "Inventory",
    "apiserver_container",
    "container_flags",
    "from_objects",
    "load_inventory",
    "object_ref",
    "relay_container",
]

Obj = Mapping[str, Any]
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})


def object_ref(obj: Obj) -> str:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    ns = meta.get("namespace")
    return (
        f"{obj.get('kind', '?')} "
        f"{ns + '/' if isinstance(ns, str) and ns else ''}{meta.get('name', '<unnamed>')}"
    )


def _argv(container: Mapping[str, Any]) -> list[str]:
    return [str(x) for x in (container.get("command") or []) + (container.get("args") or [])]


def _runs(obj: Obj, program: str, *subcommands: str) -> Mapping[str, Any] | None:
    """The container of a Pod that runs ``program`` (by basename) with these subcommands, or None."""
    spec = obj.get("spec")
    if obj.get("kind") != "Pod" or not isinstance(spec, Mapping):
        return None
    for c in spec.get("containers") or []:
        if not isinstance(c, Mapping):
            continue
        argv = _argv(c)
        words = [Path(a).name for a in argv[:1]] + argv[1:]
        words = [w for a in words for w in a.split()]  # "sh -c 'kube-apiserver ...'" styles
        if program in (Path(w).name for w in words) and all(s in words for s in subcommands):
            return c
    return None


def container_flags(container: Mapping[str, Any]) -> dict[str, str]:
    """``--name=value`` and ``--name value`` flags of a container's command and args."""
    argv = _argv(container)
    flags: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if eq:
                flags[name] = value
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                flags[name] = argv[i + 1]
                i += 1
            else:
                flags[name] = "true"
        i += 1
    return flags


@dataclass
class Inventory:
    root: Path | None = None
    source: str = ""
    objects: list[Document] = field(default_factory=list)
    by_kind: dict[str, list[Obj]] = field(default_factory=lambda: defaultdict(list))
    apiservers: list[Document] = field(default_factory=list)
    relays: list[Document] = field(default_factory=list)
    encryption_configs: list[Document] = field(default_factory=list)
    audit_policies: list[Document] = field(default_factory=list)
    kubelet_configs: list[Document] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    _files: list[Path] = field(default_factory=list)

    def kind(self, kind: str) -> list[Obj]:
        return self.by_kind.get(kind, [])

    def add(self, doc: Document) -> None:
        obj = doc.obj
        api = str(obj.get("apiVersion", ""))
        kind = obj.get("kind")
        if kind == "EncryptionConfiguration" and api.startswith("apiserver.config.k8s.io/"):
            self.encryption_configs.append(doc)
        elif kind == "Policy" and api.startswith("audit.k8s.io/"):
            self.audit_policies.append(doc)
        elif kind == "KubeletConfiguration" and api.startswith("kubelet.config.k8s.io/"):
            self.kubelet_configs.append(doc)
        else:
            if _runs(obj, "kube-apiserver") is not None:
                self.apiservers.append(doc)
            elif _runs(obj, "kubeshield", "kms", "relay") is not None:
                self.relays.append(doc)
            self.objects.append(doc)
            if isinstance(kind, str):
                self.by_kind[kind].append(obj)

    def resolve(self, path: str) -> Path | None:
        """The copy under the root of a node path named by a flag."""
        if self.root is None or not path:
            return None
        mirrored = self.root / path.lstrip("/")
        if mirrored.is_file():
            return mirrored
        if not self._files:
            self._files = [p for p in self.root.rglob("*") if p.is_file()]
        same = [p for p in self._files if p.name == Path(path).name]
        return same[0] if len(same) == 1 else None

    def missing(self, path: str, flag: str) -> str:
        """Why the file a flag names was not read (for ``skipped``)."""
        if self.root is None:
            return f"{path} ({flag}) is a node file, not readable through the API"
        return f"{path} ({flag}) is not in the directory"

    def document_at(self, docs: Sequence[Document], path: Path) -> Document | None:
        for doc in docs:
            if Path(doc.file).resolve() == path.resolve():
                return doc
        return None

    def relative(self, path: str | Path) -> str:
        if self.root is None:
            return str(path)
        try:
            return str(Path(path).resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(path)


def load_inventory(root: str | Path) -> Inventory:
    inv = Inventory(root=Path(root))
    for doc in iter_objects(root, inv.errors):
        inv.add(doc)
    return inv


def from_objects(objects: Iterable[Obj]) -> Inventory:
    """An inventory from objects read through the API (live mode)."""
    inv = Inventory()
    for obj in objects:
        inv.add(Document("<api>", 0, obj))
    return inv


def apiserver_container(obj: Obj) -> Mapping[str, Any] | None:
    return _runs(obj, "kube-apiserver")


def relay_container(obj: Obj) -> Mapping[str, Any] | None:
    return _runs(obj, "kubeshield", "kms", "relay")
