"""JSON merge patch (RFC 7386), strategic merge patch and a small server-side apply.

Strategic merge knows the merge keys of the common built-in list fields (containers by name, ports by
containerPort or port, env by name, volumes by name...) and the directives kubectl sends
(``$patch: delete|replace|merge``, ``$setElementOrder/<field>``, ``$deleteFromPrimitiveList/<field>``,
``$retainKeys``). Lists without a known merge key are replaced whole, as for atomic lists. Custom
resources take a JSON merge patch only (the apiserver refuses strategic merge for them, 415).

Server-side apply keeps, per field manager, the last configuration it applied. Fields a manager applied
before and omits now are removed (unless another manager applied them too); a field another *apply*
manager owns with a different value is a conflict unless ``force``. Field ownership from plain updates
(PUT/PATCH) is not tracked: it never conflicts. That is enough for ``kubectl apply --server-side`` on
simple objects; it is not the structured-merge-diff algorithm.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

__all__ = ["apply_config", "json_merge_patch", "leaf_paths", "managed_fields_v1", "strategic_merge_patch"]

_MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "conditions": "type",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "secrets": "name",  # ServiceAccount.secrets
}
_PRIMITIVE_SETS = {"finalizers"}


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        sample = next((i for i in items if isinstance(i, dict)), {})
        return "containerPort" if "containerPort" in sample else "port"
    return _MERGE_KEYS.get(field)


def json_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    return _smp_map(target if isinstance(target, dict) else {}, patch) if isinstance(patch, dict) else patch


def _smp_map(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return {}
    result = copy.deepcopy(target)
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            current = result.get(key)
            result[key] = _smp_map(current if isinstance(current, dict) else {}, value)
        elif isinstance(value, list):
            result[key] = _smp_list(key, result.get(key), value)
        else:
            result[key] = copy.deepcopy(value)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    for key, order in patch.items():
        if key.startswith("$setElementOrder/") and isinstance(result.get(key.split("/", 1)[1]), list):
            field = key.split("/", 1)[1]
            result[field] = _reorder(field, result[field], order)
    return result


def _reorder(field: str, items: list[Any], order: list[Any]) -> list[Any]:
    mkey = _merge_key(field, items)

    def ident(item: Any) -> Any:
        return item.get(mkey) if mkey and isinstance(item, dict) else item

    wanted = [ident(o) for o in order]
    ranked = sorted(
        enumerate(items),
        key=lambda p: (wanted.index(ident(p[1])) if ident(p[1]) in wanted else len(wanted), p[0]),
    )
    return [item for _, item in ranked]


def _smp_list(field: str, current: Any, patch: list[Any]) -> list[Any]:
    current_list = copy.deepcopy(current) if isinstance(current, list) else []
    if field in _PRIMITIVE_SETS:
        merged = list(current_list)
        for item in patch:
            if item not in merged:
                merged.append(item)
        return merged
    mkey = _merge_key(field, patch + current_list)
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [copy.deepcopy(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    if mkey is None or not all(isinstance(i, dict) for i in patch):
        return [copy.deepcopy(i) for i in patch]
    result = current_list
    for item in patch:
        ident = item.get(mkey)
        index = next((n for n, c in enumerate(result) if isinstance(c, dict) and c.get(mkey) == ident), None)
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
            continue
        if index is None:
            result.append({k: copy.deepcopy(v) for k, v in item.items() if k != "$patch"})
        else:
            result[index] = _smp_map(result[index], item)
    return result


# --- server-side apply ----------------------------------------------------------------------------

Path = tuple[Any, ...]


def leaf_paths(config: Any, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every leaf of an applied configuration, with keyed lists addressed by their merge key."""
    if isinstance(config, dict) and config:
        for key, value in config.items():
            yield from _leaf_child(key, value, prefix)
    else:
        yield prefix, config


def _leaf_child(key: str, value: Any, prefix: Path) -> Iterator[tuple[Path, Any]]:
    if isinstance(value, list) and value and all(isinstance(i, dict) for i in value):
        mkey = _merge_key(key, value)
        if mkey and all(mkey in i for i in value):
            for item in value:
                yield from leaf_paths(item, (*prefix, key, ("k", mkey, item[mkey])))
            return
    yield from leaf_paths(value, (*prefix, key))


def _lookup(obj: Any, path: Path) -> tuple[bool, Any]:
    cur = obj
    for step in path:
        if isinstance(step, tuple):
            _, mkey, ident = step
            if not isinstance(cur, list):
                return False, None
            cur = next((i for i in cur if isinstance(i, dict) and i.get(mkey) == ident), None)
            if cur is None:
                return False, None
        else:
            if not isinstance(cur, dict) or step not in cur:
                return False, None
            cur = cur[step]
    return True, cur


def _remove(obj: Any, path: Path) -> None:
    if not path:
        return
    found, parent = _lookup(obj, path[:-1])
    if not found:
        return
    last = path[-1]
    if isinstance(last, tuple) and isinstance(parent, list):
        _, mkey, ident = last
        parent[:] = [i for i in parent if not (isinstance(i, dict) and i.get(mkey) == ident)]
    elif isinstance(parent, dict):
        parent.pop(last, None)


def _prune_empty(obj: Any, path: Path) -> None:
    """After removing a leaf, drop the maps and list items that became empty above it."""
    for cut in range(len(path) - 1, 0, -1):
        found, value = _lookup(obj, path[:cut])
        if found and value in ({}, []):
            _remove(obj, path[:cut])
        else:
            break


def _owner_index(applied: dict[str, Any], skip: str) -> dict[Path, tuple[str, Any]]:
    owners: dict[Path, tuple[str, Any]] = {}
    for manager, config in applied.items():
        if manager == skip:
            continue
        for path, value in leaf_paths(config):
            owners[path] = (manager, value)
    return owners


def apply_config(
    current: dict[str, Any] | None,
    config: dict[str, Any],
    *,
    manager: str,
    applied: dict[str, Any],
    force: bool,
) -> tuple[dict[str, Any], list[tuple[Path, str]]]:
    """The object after ``manager`` applies ``config``, and the conflicts (path, other manager) found.

    ``applied`` (manager -> its last applied config) is updated in place when there is no conflict."""
    others = _owner_index(applied, manager)
    base = copy.deepcopy(current) if current is not None else {}
    new_leaves = dict(leaf_paths(config))
    conflicts = []
    for path, value in new_leaves.items():
        if path in others:
            other, other_value = others[path]
            if other_value != value:
                conflicts.append((path, other))
    if conflicts and not force:
        return base, conflicts
    if force:
        for path, _ in conflicts:
            for other in list(applied):
                if other != manager:
                    _remove(applied[other], path)
                    _prune_empty(applied[other], path)
    previous = applied.get(manager)
    if previous is not None:
        for path, _ in leaf_paths(previous):
            if path not in new_leaves and path not in others:
                _remove(base, path)
                _prune_empty(base, path)
    result = strategic_merge_patch(base, config)
    applied[manager] = copy.deepcopy(config)
    return result, []


def managed_fields_v1(config: Any) -> dict[str, Any]:
    """A ``fieldsV1`` set for a configuration, in the apiserver's ``f:``/``k:`` notation."""
    out: dict[str, Any] = {}
    for path, _ in leaf_paths(config):
        node = out
        for step in path:
            if isinstance(step, tuple):
                _, mkey, ident = step
                key = "k:" + _compact({mkey: ident})
            else:
                key = f"f:{step}"
            node = node.setdefault(key, {})
    return out


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
