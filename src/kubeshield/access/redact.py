"""Which requests touch Secrets, and the redaction of Secret values in the apiserver's JSON answers.

``secret_access`` reads a request's method, path and query the way the apiserver routes them
(``/api/v1/secrets``, ``/api/v1/namespaces/NS/secrets[/NAME]``, the legacy ``/api/v1/watch/...``
form, ``?watch=true``) and gives the audit verb, namespace and name; anything else is None. The proxy
audits and redacts only those requests: a Secret cannot be reached through another core path.

``redact_document`` replaces every value under ``data`` and ``stringData`` of the Secrets in one JSON
document with a marker (under ``data`` ``DATA_MARKER``, the base64 of ``MARKER``). The keys stay, so a
person sees what a Secret holds without its values. It handles a Secret, a list of them (the apiserver
leaves ``kind`` off list items), a ``Table`` whose rows carry the objects (``includeObject=Object``),
and a watch event (``{"type", "object"}``). ``RedactingLineStream``
does the same for a watch stream, one JSON document per line, across arbitrary chunk boundaries.
"""

from __future__ import annotations

import base64
import json
import posixpath
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

__all__ = [
    "DATA_MARKER",
    "MARKER",
    "REVEAL_HEADER",
    "REVEAL_PREFIX",
    "RedactingLineStream",
    "SecretAccess",
    "redact_document",
    "redact_json",
    "secret_access",
]

MARKER = "KUBESHIELD-REDACTED"
# ``data`` values are base64 on the wire and typed clients (kubectl's) decode them, so there the marker
# is itself base64: ``kubectl get secret -o jsonpath='{.data.k}' | base64 -d`` prints MARKER
DATA_MARKER = base64.b64encode(MARKER.encode()).decode()
REVEAL_HEADER = "X-Kubeshield-Reveal"
# kubectl cannot add a header, but its --server may carry a path prefix: requests under this one reveal
REVEAL_PREFIX = "/kubeshield/reveal"
_MAX_LINE = 64 * 1024 * 1024


@dataclass(frozen=True)
class SecretAccess:
    """A request that reads or writes Secrets: the audit verb, and the namespace and name it names
    ("" for all namespaces / a collection)."""

    verb: str
    namespace: str
    name: str
    watch: bool


def _flag(value: str) -> bool:
    return value in ("true", "1")


def secret_access(method: str, path: str, query: str) -> SecretAccess | None:
    """The Secret access ``method path?query`` makes, or None. The path is read as the apiserver reads
    it (percent-decoded: ``%73ecrets`` is ``secrets``), with ``.``/``..`` segments and repeated
    slashes resolved, so that no spelling of a Secrets path slips past the audit and redaction;
    reading too many paths as Secrets accesses is the safe side."""
    if "secrets" not in path and "%" not in path:  # the common case, decided without decoding
        return None
    decoded = posixpath.normpath("/" + unquote(path))
    parts = [p for p in decoded.split("/") if p]
    if parts[:2] != ["api", "v1"]:
        return None
    rest = parts[2:]
    legacy_watch = rest[:1] == ["watch"]
    if legacy_watch:
        rest = rest[1:]
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest or rest[0] != "secrets" or len(rest) > 3:
        return None
    name = rest[1] if len(rest) > 1 else ""
    params = dict(parse_qsl(query, keep_blank_values=True))
    watch = legacy_watch or _flag(params.get("watch", ""))
    upper = method.upper()
    if upper in ("GET", "HEAD"):
        verb = "watch" if watch else ("get" if name else "list")
    else:
        verb = {
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection",
        }.get(upper, upper.lower())
    return SecretAccess(verb=verb, namespace=namespace, name=name, watch=watch)


def _redact_secret(obj: dict[str, Any]) -> None:
    for key, marker in (("data", DATA_MARKER), ("stringData", MARKER)):
        values = obj.get(key)
        if isinstance(values, dict):
            obj[key] = dict.fromkeys(values, marker)
        elif values is not None:
            obj[key] = marker


def redact_document(doc: Any, *, secrets: bool = True) -> Any:
    """Redact ``doc`` in place and return it. ``secrets``: the document answers a Secrets request, so
    an object without a ``kind`` (a list item) is a Secret too."""
    if not isinstance(doc, dict):
        return doc
    kind = doc.get("kind")
    if "type" in doc and "object" in doc and kind is None:  # a watch event
        redact_document(doc["object"], secrets=secrets)
        return doc
    if kind == "Secret" or (kind is None and secrets and ("data" in doc or "stringData" in doc)):
        _redact_secret(doc)
        return doc
    if kind == "Table":
        for row in doc.get("rows") or ():
            if isinstance(row, dict) and isinstance(row.get("object"), dict):
                redact_document(row["object"], secrets=secrets)
        return doc
    items = doc.get("items")
    if isinstance(items, list):
        for item in items:
            redact_document(item, secrets=secrets)
    return doc


def redact_json(body: bytes) -> bytes:
    """One JSON document, redacted; raises ValueError if ``body`` is not JSON (the proxy then refuses
    to pass it: fail closed)."""
    doc = json.loads(body)
    return json.dumps(redact_document(doc), separators=(",", ":")).encode() + b"\n"


class RedactingLineStream:
    """Redacts a stream of newline-separated JSON documents (a watch) fed in arbitrary pieces."""

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, data: bytes) -> bytes:
        self._pending += data
        cut = self._pending.rfind(b"\n")
        if cut < 0:
            if len(self._pending) > _MAX_LINE:
                raise ValueError("a watch event is too large to redact")
            return b""
        lines = bytes(self._pending[: cut + 1])
        del self._pending[: cut + 1]
        out = []
        for line in lines.split(b"\n")[:-1]:
            if line.strip():
                out.append(redact_json(line))
        return b"".join(out)

    def finish(self) -> bytes:
        rest = bytes(self._pending)
        self._pending.clear()
        return redact_json(rest) if rest.strip() else b""
