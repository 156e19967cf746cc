"""Who a sealed value is for: a ServiceAccount identity, and the binding a sealed value carries.

``Identity`` is ``<namespace>:<serviceaccount>``, the form Kamus uses and the one a TokenReview of a
ServiceAccount token yields (``system:serviceaccount:<namespace>:<name>``). A ``Binding`` adds the
optional constraints a sealer may put on the release:

* ``audience``: the token must have been issued for this audience (on top of the server's own);
* ``selector``: equality-based pod labels (``app=web,tier=front``) the live pod must carry.

The binding is authenticated (it is the AEAD's associated data) but not secret: it is readable from a
sealed value so that a refusal can say *whose* value it is. Its byte form is canonical JSON (sorted
keys, no spaces, ASCII) with short keys::

    {"aud": "kubeshield", "ns": "ns-a", "sa": "app", "sel": {"app": "web"}}      ("aud"/"sel" only when set)

and :func:`Binding.from_bytes` accepts only that exact canonical form, so one binding has one encoding.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from kubeshield.errors import InvalidRequest

__all__ = ["Binding", "Identity", "parse_selector"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?)$")
_AUDIENCE = re.compile(r"^[\x21-\x7e]{1,256}$")
_MAX_SELECTOR = 16
_MAX_BINDING = 4096


def _check_namespace(value: str) -> str:
    if not isinstance(value, str) or not _DNS_LABEL.match(value):
        raise InvalidRequest(f"namespace {value!r} is not a valid namespace name (a DNS-1123 label)")
    return value


def _check_service_account(value: str) -> str:
    if not isinstance(value, str) or len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise InvalidRequest(
            f"service account {value!r} is not a valid ServiceAccount name (a DNS-1123 subdomain)"
        )
    return value


def _check_label_key(key: str) -> str:
    prefix, slash, name = key.rpartition("/")
    if (
        not isinstance(key, str)
        or not _LABEL_NAME.match(name)
        or (slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)))
    ):
        raise InvalidRequest(f"selector: {key!r} is not a valid label key")
    return key


def _check_label_value(key: str, value: str) -> str:
    if not isinstance(value, str) or not _LABEL_VALUE.match(value):
        raise InvalidRequest(f"selector: the value of {key!r} is not a valid label value")
    return value


@dataclass(frozen=True, slots=True, order=True)
class Identity:
    """A ServiceAccount: ``namespace`` and ``service_account`` (validated as Kubernetes names)."""

    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        _check_namespace(self.namespace)
        _check_service_account(self.service_account)

    def __str__(self) -> str:
        return f"{self.namespace}:{self.service_account}"

    @classmethod
    def parse(cls, text: str) -> Identity:
        """``"ns-a:app"`` -> ``Identity("ns-a", "app")``."""
        namespace, sep, name = text.partition(":")
        if not sep:
            raise InvalidRequest(f"identity {text!r} must be <namespace>:<serviceaccount>")
        return cls(namespace, name)

    @classmethod
    def from_username(cls, username: str) -> Identity | None:
        """The identity of a TokenReview username ``system:serviceaccount:<ns>:<sa>``, else None."""
        parts = username.split(":")
        if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
            return None
        try:
            return cls(parts[2], parts[3])
        except InvalidRequest:
            return None


def parse_selector(text: str) -> dict[str, str]:
    """``"app=web,tier=front"`` -> ``{"app": "web", "tier": "front"}`` (equality terms only)."""
    out: dict[str, str] = {}
    if not text.strip():
        return out
    for term in text.split(","):
        key, sep, value = term.strip().partition("=")
        if not sep or value.startswith("="):
            raise InvalidRequest(f"selector: {term.strip()!r} must be key=value (equality terms only)")
        key = _check_label_key(key.strip())
        if key in out:
            raise InvalidRequest(f"selector: {key!r} appears twice")
        out[key] = _check_label_value(key, value.strip())
    return out


@dataclass(frozen=True, slots=True)
class Binding:
    """What a sealed value is bound to. ``selector`` is a read-only mapping (label -> value)."""

    identity: Identity
    audience: str | None = None
    selector: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.audience is not None and not _AUDIENCE.match(self.audience):
            raise InvalidRequest("audience must be 1..256 printable ASCII characters without spaces")
        if len(self.selector) > _MAX_SELECTOR:
            raise InvalidRequest(f"selector: at most {_MAX_SELECTOR} labels")
        for key, value in self.selector.items():
            _check_label_key(key)
            _check_label_value(key, value)
        object.__setattr__(self, "selector", dict(sorted(self.selector.items())))

    def to_bytes(self) -> bytes:
        """The canonical JSON form (the AEAD's associated data carries it)."""
        doc: dict[str, object] = {"ns": self.identity.namespace, "sa": self.identity.service_account}
        if self.audience is not None:
            doc["aud"] = self.audience
        if self.selector:
            doc["sel"] = dict(self.selector)
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes) -> Binding:
        """Parse the canonical form; anything else (other keys, other spelling) is ``InvalidRequest``."""
        if len(data) > _MAX_BINDING:
            raise InvalidRequest("binding is too long")
        try:
            doc = json.loads(data.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise InvalidRequest("binding is not JSON") from None
        if not isinstance(doc, dict) or not {"ns", "sa"} <= set(doc) <= {"ns", "sa", "aud", "sel"}:
            raise InvalidRequest("binding has unexpected fields")
        ns, sa, aud, sel = doc["ns"], doc["sa"], doc.get("aud"), doc.get("sel", {})
        if not isinstance(ns, str) or not isinstance(sa, str):
            raise InvalidRequest("binding: ns and sa must be strings")
        if aud is not None and not isinstance(aud, str):
            raise InvalidRequest("binding: aud must be a string")
        if not isinstance(sel, dict) or ("sel" in doc and not sel):
            raise InvalidRequest("binding: sel must be a non-empty mapping")
        if not all(isinstance(v, str) for v in sel.values()):
            raise InvalidRequest("binding: selector values must be strings")
        binding = cls(Identity(ns, sa), aud, sel)
        if binding.to_bytes() != data:
            raise InvalidRequest("binding is not in canonical form")
        return binding

    def describe(self) -> str:
        """``ns-a:app`` plus its constraints, for messages (nothing secret)."""
        extra = []
        if self.audience is not None:
            extra.append(f"audience {self.audience}")
        if self.selector:
            extra.append("pods " + ",".join(f"{k}={v}" for k, v in self.selector.items()))
        return str(self.identity) + (f" ({'; '.join(extra)})" if extra else "")

    def matches_labels(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.selector.items())
