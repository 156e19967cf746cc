"""Status objects shaped exactly as kube-apiserver shapes them (k8s.io/apimachinery/pkg/api/errors)."""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiStatus",
    "already_exists",
    "bad_request",
    "conflict",
    "forbidden",
    "gone",
    "invalid",
    "not_found",
]


class ApiStatus(Exception):
    """An API failure: ``status`` is the Status object to send, ``code`` its HTTP status."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
        if details is not None:
            self.status["details"] = details


def _details(name: str, group: str, plural: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name} if name else {}
    if group:
        out["group"] = group
    out["kind"] = plural
    return out


def _qualified(group: str, plural: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(group: str, plural: str, name: str) -> ApiStatus:
    return ApiStatus(
        404, "NotFound", f'{_qualified(group, plural)} "{name}" not found', _details(name, group, plural)
    )


def not_found_path() -> ApiStatus:
    return ApiStatus(404, "NotFound", "the server could not find the requested resource", {})


def already_exists(group: str, plural: str, name: str) -> ApiStatus:
    return ApiStatus(
        409,
        "AlreadyExists",
        f'{_qualified(group, plural)} "{name}" already exists',
        _details(name, group, plural),
    )


def conflict(
    group: str, plural: str, name: str, why: str, causes: list[dict[str, str]] | None = None
) -> ApiStatus:
    details = _details(name, group, plural)
    if causes:
        details["causes"] = causes
    return ApiStatus(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(group, plural)} "{name}": {why}',
        details,
    )


STALE = "the object has been modified; please apply your changes to the latest version and try again"


def invalid(group: str, kind: str, name: str, causes: list[tuple[str, str, str]]) -> ApiStatus:
    """``causes`` are (reason, field, message) as field.Error renders them."""
    rendered = [f"{field}: {message}" for _, field, message in causes]
    message = f'{kind}.{group} "{name}" is invalid: ' if group else f'{kind} "{name}" is invalid: '
    message += rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
    details: dict[str, Any] = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = kind
    details["causes"] = [{"reason": r, "message": m, "field": f} for r, f, m in causes]
    return ApiStatus(422, "Invalid", message, details)


def bad_request(message: str) -> ApiStatus:
    return ApiStatus(400, "BadRequest", message)


def gone(message: str) -> ApiStatus:
    return ApiStatus(410, "Expired", message)


def forbidden(
    user: str, verb: str, group: str, plural: str, name: str, namespace: str, reason: str = ""
) -> ApiStatus:
    target = f'{plural} "{name}"' if name else plural
    if group:
        target = f'{plural}.{group} "{name}"' if name else f"{plural}.{group}"
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    message = f'{target} is forbidden: User "{user}" cannot {verb} resource "{plural}" in API group '
    f'"{group}"{where}'
    if reason:
        message += f": {reason}"
    return ApiStatus(403, "Forbidden", message, _details(name, group, plural))


def unauthorized() -> ApiStatus:
    return ApiStatus(401, "Unauthorized", "Unauthorized")


def method_not_allowed() -> ApiStatus:
    return ApiStatus(
        405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
    )


def unsupported_media_type(content_type: str) -> ApiStatus:
    return ApiStatus(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"application/json, application/yaml, application/vnd.kubernetes.protobuf ({content_type})",
    )
