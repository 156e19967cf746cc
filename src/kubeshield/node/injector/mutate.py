"""The injector's pure mutation: a Pod and its annotations in, a JSON Patch (RFC 6902) out.

Pods opt in with annotations (prefix ``kubeshield.io/``)::

    kubeshield.io/inject: "true"                         the trigger
    kubeshield.io/secret-<name>: <sealed text>           one value; or configmap:<configmap>/<key> to read
                                                         the sealed text from a ConfigMap (kept up to date)
    kubeshield.io/file-<name>: db/password               its file (default <name>) when format is files
    kubeshield.io/format: files | dotenv | json          default files
    kubeshield.io/output-file: app.env                   dotenv/json file name (default secrets.env/.json)
    kubeshield.io/volume-path: /kubeshield/secrets       where the app containers see the files
    kubeshield.io/containers: app,worker                 which containers get the volume (default all)
    kubeshield.io/run-as-user: "1000"                    the app's uid (default: its securityContext)
    kubeshield.io/pre-populate-only: "true"              init container only, no refreshing sidecar
    kubeshield.io/refresh-interval: 5m                   how often the sidecar re-fetches (default 5m)
    kubeshield.io/init-first: "true"                     put the init container before the others
    kubeshield.io/env: "true"                            ALSO export the values as environment variables
                                                         (wraps each app container's command; see docs)
    kubeshield.io/inject-status: injected                set by the injector; a pod with it is left alone

What is added (Vault-agent-injector style, formats.md §5.1):

* ``kubeshield-secrets``: an ``emptyDir {medium: Memory}`` mounted read-only in the app containers;
* ``kubeshield-inputs``: a projected volume with a ServiceAccount token for the kubeshield audience
  (short-lived, pod-bound, refreshed by the kubelet) and the sealed texts (downward API from the
  annotations, ConfigMap items), mounted only in kubeshield's own containers;
* init container ``kubeshield-init``: ``kubeshield node fetch --once`` writes the values 0400 as the
  app's uid; sidecar ``kubeshield-refresh`` (an init container with ``restartPolicy: Always``, a native
  sidecar, so Jobs still complete) re-fetches every ``refresh-interval``;
* annotation ``kubeshield.io/inject-status: injected``.

Patch details: an array that does not exist is added whole with its first element and then appended to
with ``/-``; annotation keys are escaped as JSON Pointers (``~`` -> ``~0``, ``/`` -> ``~1``). Anything
that cannot work is a :class:`Refusal` whose reason the webhook returns as ``allowed: false``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubeshield.config import parse_duration
from kubeshield.errors import InvalidCiphertext
from kubeshield.node.identity import Identity
from kubeshield.node.sealed import parse_sealed

__all__ = ["INJECT", "STATUS", "InjectorConfig", "Mutation", "Refusal", "mutate"]

PREFIX = "kubeshield.io/"
INJECT = PREFIX + "inject"
STATUS = PREFIX + "inject-status"
SECRET = PREFIX + "secret-"
FILE = PREFIX + "file-"
_OPTIONS = {"format", "output-file", "volume-path", "containers", "run-as-user", "pre-populate-only",
            "refresh-interval", "init-first", "env"}  # fmt: skip
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9_.]{0,54}[a-z0-9])?$")
_CONFIGMAP_REF = re.compile(r"^configmap:([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)/([-._a-zA-Z0-9]{1,253})$")
SECRETS_VOLUME = "kubeshield-secrets"
INPUTS_VOLUME = "kubeshield-inputs"
INPUTS_PATH = "/var/run/kubeshield"
INIT_NAME = "kubeshield-init"
SIDECAR_NAME = "kubeshield-refresh"
ENV_FILE = ".kubeshield.env"
_TRUE = ("true", "yes", "1")


class Refusal(Exception):
    """The pod asks for something that cannot work; the message is the admission reason."""


@dataclass(frozen=True, slots=True)
class InjectorConfig:
    image: str
    release_url: str
    own_namespace: str = "kubeshield"
    audience: str = "kubeshield"
    release_ca_pem: str | None = None
    token_expiration_seconds: int = 600
    memory_limit: str = "16Mi"
    skip_namespaces: frozenset[str] = frozenset({"kube-system", "kube-public"})


@dataclass(frozen=True, slots=True)
class Mutation:
    patch: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


def skip_reason(pod: Mapping[str, Any], *, namespace: str, config: InjectorConfig) -> str | None:
    """Why this pod is left alone (no patch, allowed), or None when it is to be injected."""
    if namespace in config.skip_namespaces or namespace == config.own_namespace:
        return f"namespace {namespace} is never injected"
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if not _true(annotations.get(INJECT)):
        return "not annotated kubeshield.io/inject: true"
    if annotations.get(STATUS) == "injected":
        return "already injected"
    return None


def _app_uid(
    pod: Mapping[str, Any], containers: list[Mapping[str, Any]], annotations: Mapping[str, str]
) -> int:
    text = annotations.get(PREFIX + "run-as-user")
    if text is not None:
        if not text.strip().isdigit():
            raise Refusal(f"{PREFIX}run-as-user: {text!r} is not a uid")
        return int(text)
    uids = {c.get("securityContext", {}).get("runAsUser") for c in containers} - {None}
    pod_uid = (pod.get("spec", {}).get("securityContext") or {}).get("runAsUser")
    if not uids and pod_uid is not None:
        uids = {pod_uid}
    if len(uids) > 1:
        raise Refusal(
            "the containers run as different uids; set kubeshield.io/run-as-user (the values are written "
            "0400 for one uid) or limit kubeshield.io/containers"
        )
    if not uids:
        raise Refusal(
            "the app's uid is not known: set runAsUser in the pod's or container's securityContext, or the "
            "annotation kubeshield.io/run-as-user, so the values can be written 0400 for that uid"
        )
    uid = next(iter(uids))
    if not isinstance(uid, int) or uid < 0:
        raise Refusal("runAsUser must be a non-negative integer")
    return uid


@dataclass
class _Secret:
    name: str
    source: str  # "annotation" | "configmap"
    configmap: str = ""
    key: str = ""
    file: str = ""


def _secrets(annotations: Mapping[str, str], identity: Identity) -> list[_Secret]:
    out: list[_Secret] = []
    for key in sorted(annotations):
        if not key.startswith(PREFIX):
            continue
        rest = key[len(PREFIX) :]
        if key.startswith(SECRET):
            name = key[len(SECRET) :]
            if not _NAME.match(name):
                raise Refusal(
                    f"{key}: the name {name!r} must be lower-case letters, digits, '-', '_', '.' (1..56)"
                )
            value = annotations[key].strip()
            ref = _CONFIGMAP_REF.match(value)
            if ref:
                out.append(_Secret(name, "configmap", configmap=ref.group(1), key=ref.group(3)))
                continue
            try:
                sealed = parse_sealed(value)
            except InvalidCiphertext:
                raise Refusal(
                    f"{key}: not a kubeshield sealed value (kubeshield node seal) nor configmap:<name>/<key>"
                ) from None
            if sealed.binding.identity != identity:
                raise Refusal(f"{key}: sealed for {sealed.binding.identity}, but the pod runs as {identity}")
            out.append(_Secret(name, "annotation"))
        elif key.startswith(FILE):
            continue
        elif rest not in _OPTIONS and key not in (INJECT, STATUS):
            raise Refusal(f"{key}: unknown kubeshield annotation")
    if not out:
        raise Refusal("kubeshield.io/inject is true but no kubeshield.io/secret-<name> annotation is set")
    for s in out:
        s.file = annotations.get(FILE + s.name, s.name)
        if s.file.startswith("/") or ".." in s.file.split("/") or s.file.startswith("..") or not s.file:
            raise Refusal(f"{FILE}{s.name}: {s.file!r} must be a relative path without '..'")
    return out


def _inputs_volume(secrets: list[_Secret], config: InjectorConfig) -> dict[str, Any]:
    sources: list[dict[str, Any]] = [
        {
            "serviceAccountToken": {
                "audience": config.audience,
                "expirationSeconds": config.token_expiration_seconds,
                "path": "token",
            }
        }
    ]
    items = [
        {"path": f"sealed/{s.name}", "fieldRef": {"fieldPath": f"metadata.annotations['{SECRET}{s.name}']"}}
        for s in secrets
        if s.source == "annotation"
    ]
    if items:
        sources.append({"downwardAPI": {"items": items}})
    by_cm: dict[str, list[dict[str, str]]] = {}
    for s in secrets:
        if s.source == "configmap":
            by_cm.setdefault(s.configmap, []).append({"key": s.key, "path": f"sealed/{s.name}"})
    for cm, cm_items in sorted(by_cm.items()):
        sources.append({"configMap": {"name": cm, "items": cm_items}})
    return {"name": INPUTS_VOLUME, "projected": {"sources": sources, "defaultMode": 0o444}}


def _fetch_args(
    secrets: list[_Secret], annotations: Mapping[str, str], config: InjectorConfig, out_dir: str
) -> list[str]:
    fmt = annotations.get(PREFIX + "format", "files").strip()
    if fmt not in ("files", "dotenv", "json"):
        raise Refusal(f"{PREFIX}format: {fmt!r} must be files, dotenv or json")
    args = [
        f"--url={config.release_url}",
        f"--token-file={INPUTS_PATH}/token",
        f"--sealed-dir={INPUTS_PATH}/sealed",
        f"--out-dir={out_dir}",
        f"--format={fmt}",
    ]
    if fmt == "files":
        args += [f"--file={s.name}={s.file}" for s in secrets if s.file != s.name]
    output = annotations.get(PREFIX + "output-file")
    if output:
        if fmt == "files" or "/" in output or output.startswith("."):
            raise Refusal(f"{PREFIX}output-file: a plain file name, with format dotenv or json")
        args.append(f"--output-file={output}")
    if _true(annotations.get(PREFIX + "env")):
        args.append(f"--env-file={ENV_FILE}")
    return args


def _security_context(uid: int, gid: int | None) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "runAsUser": uid,
        "runAsNonRoot": uid != 0,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if gid is not None:
        ctx["runAsGroup"] = gid
    return ctx


def _container(
    name: str, args: list[str], config: InjectorConfig, uid: int, gid: int | None, out_dir: str
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": config.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["kubeshield", "node", "fetch"],
        "args": args,
        "volumeMounts": [
            {"name": SECRETS_VOLUME, "mountPath": out_dir},
            {"name": INPUTS_VOLUME, "mountPath": INPUTS_PATH, "readOnly": True},
        ],
        "securityContext": _security_context(uid, gid),
        "resources": {"requests": {"cpu": "10m", "memory": "48Mi"}, "limits": {"memory": "128Mi"}},
    }
    if config.release_ca_pem:
        container["env"] = [{"name": "KUBESHIELD_CA_PEM", "value": config.release_ca_pem}]
    return container


def _wrap_command(container: Mapping[str, Any], env_path: str) -> tuple[list[str], list[str]]:
    command = container.get("command")
    if not command:
        raise Refusal(
            f"kubeshield.io/env needs an explicit command on container {container.get('name')!r} "
            "(the image's entrypoint is not known at admission)"
        )
    script = f'set -a; . {shlex.quote(env_path)}; set +a; exec "$@"'
    return ["/bin/sh", "-c", script, "--", *command], list(container.get("args") or [])


def mutate(pod: Mapping[str, Any], *, namespace: str, config: InjectorConfig) -> Mutation:
    """The patch that injects ``pod`` (a Pod object, as admission sends it). Raises :class:`Refusal`."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    annotations: dict[str, str] = {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()}
    sa = spec.get("serviceAccountName") or "default"
    identity = Identity(namespace, sa)
    secrets = _secrets(annotations, identity)
    containers: list[dict[str, Any]] = list(spec.get("containers") or [])
    if not containers:
        raise Refusal("the pod has no containers")
    wanted = annotations.get(PREFIX + "containers")
    names = [c.get("name") for c in containers]
    targets = list(range(len(containers)))
    if wanted:
        chosen = [w.strip() for w in wanted.split(",") if w.strip()]
        missing = [w for w in chosen if w not in names]
        if missing:
            raise Refusal(f"{PREFIX}containers: no container named {', '.join(missing)}")
        targets = [i for i, n in enumerate(names) if n in chosen]
    uid = _app_uid(pod, [containers[i] for i in targets], annotations)
    gid_values = {containers[i].get("securityContext", {}).get("runAsGroup") for i in targets} - {None}
    gid = (
        next(iter(gid_values))
        if len(gid_values) == 1
        else (spec.get("securityContext") or {}).get("runAsGroup")
    )
    out_dir = annotations.get(PREFIX + "volume-path", "/kubeshield/secrets").rstrip("/") or "/"
    if not out_dir.startswith("/") or ".." in out_dir.split("/") or out_dir == "/":
        raise Refusal(f"{PREFIX}volume-path: {out_dir!r} must be an absolute directory")
    for i in targets:
        for m in containers[i].get("volumeMounts") or []:
            if m.get("mountPath", "").rstrip("/") == out_dir:
                raise Refusal(f"{PREFIX}volume-path: {out_dir} is already a mount of container {names[i]!r}")
    existing_volumes = {v.get("name") for v in spec.get("volumes") or []}
    existing_init = {c.get("name") for c in spec.get("initContainers") or []}
    if existing_volumes & {SECRETS_VOLUME, INPUTS_VOLUME} or existing_init & {INIT_NAME, SIDECAR_NAME}:
        raise Refusal("the pod already has kubeshield volumes or containers but no inject-status annotation")
    args = _fetch_args(secrets, annotations, config, out_dir)
    sidecar = not _true(annotations.get(PREFIX + "pre-populate-only"))
    interval = annotations.get(PREFIX + "refresh-interval", "5m")
    try:
        seconds = parse_duration(interval)
    except ValueError:
        raise Refusal(f"{PREFIX}refresh-interval: {interval!r} is not a duration such as 5m") from None
    if sidecar and not 10 <= seconds <= 86400:
        raise Refusal(f"{PREFIX}refresh-interval: 10s..24h")
    warnings: list[str] = []
    if _true(annotations.get(PREFIX + "env")):
        warnings.append(
            "kubeshield.io/env: values in environment variables are visible to every process of the "
            "container and in /proc/<pid>/environ; prefer files"
        )

    patch: list[dict[str, Any]] = []

    def append(base: str, present: bool, value: Any) -> bool:
        if present:
            patch.append({"op": "add", "path": f"{base}/-", "value": value})
        else:
            patch.append({"op": "add", "path": base, "value": [value]})
        return True

    have_volumes = bool(spec.get("volumes"))
    memory = {"name": SECRETS_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": config.memory_limit}}
    have_volumes = append("/spec/volumes", have_volumes, memory)
    append("/spec/volumes", have_volumes, _inputs_volume(secrets, config))

    init = _container(INIT_NAME, [*args, "--once"], config, uid, gid, out_dir)
    new_init = [init]
    if sidecar:
        side = _container(SIDECAR_NAME, [*args, f"--refresh={interval}"], config, uid, gid, out_dir)
        side["restartPolicy"] = "Always"
        new_init.append(side)
    have_init = bool(spec.get("initContainers"))
    if _true(annotations.get(PREFIX + "init-first")) and have_init:
        for offset, c in enumerate(new_init):
            patch.append({"op": "add", "path": f"/spec/initContainers/{offset}", "value": c})
    else:
        for c in new_init:
            have_init = append("/spec/initContainers", have_init, c)

    mount = {"name": SECRETS_VOLUME, "mountPath": out_dir, "readOnly": True}
    env_wrap = _true(annotations.get(PREFIX + "env"))
    for i in targets:
        append(f"/spec/containers/{i}/volumeMounts", bool(containers[i].get("volumeMounts")), mount)
        if env_wrap:
            command, cargs = _wrap_command(containers[i], f"{out_dir}/{ENV_FILE}")
            patch.append({"op": "add", "path": f"/spec/containers/{i}/command", "value": command})
            patch.append({"op": "add", "path": f"/spec/containers/{i}/args", "value": cargs})

    if meta.get("annotations"):
        patch.append({"op": "add", "path": f"/metadata/annotations/{_escape(STATUS)}", "value": "injected"})
    else:  # pragma: no cover - an injected pod always has annotations (the trigger is one)
        patch.append({"op": "add", "path": "/metadata/annotations", "value": {STATUS: "injected"}})
    return Mutation(patch, warnings)
