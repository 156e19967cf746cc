"""Break-glass: decrypt through an *emergency* local keyring only while the primary backend is down.

:class:`BreakGlassBackend` sits in front of the primary backend. Every call goes to the primary. Only
``unwrap`` may fall back, and only when the primary raised :class:`~kubeshield.errors.BackendUnavailable`
or :class:`~kubeshield.errors.BackendTimeout` (never on ``InvalidCiphertext``, ``BackendAuthError``,
``KeyNotFound`` or anything else: those are answers, not an outage). Each emergency decrypt is logged at
WARNING on ``kubeshield.keys.breakglass`` (structured: ``fields`` = event, key_id, path, primary_error),
counted (:meth:`BreakGlassBackend.stats`) and reported to ``on_emergency(key_id)`` so the KMS layer can
count it in a metric. ``wrap`` never uses the emergency keyring: while the primary is down it fails with
the primary's own error.

Two ways the emergency keyring can decrypt what the primary wrapped:

* **same keys** (``path="keyring"``): the primary is the ``local`` backend and the emergency keyring is a
  restored backup of it (``kubeshield keys restore``), so it holds the same key_ids. The primary's
  ``Wrapped`` is handed to the emergency keyring unchanged. This also works for KMS v1 (``key_id ""``:
  the local format names its KEK by fingerprint).
* **escrow** (``path="escrow"``, ``escrow=True``): for a primary whose keys cannot be copied (Transit, AWS
  KMS, PKCS#11...), ``wrap`` also wraps the same plaintext under the emergency keyring's primary KEK and
  adds the result as an annotation. Placed *under* the local-KEK hierarchy
  (``HierarchicalBackend(BreakGlassBackend(remote, emergency, escrow=True))``) this escrows each
  in-memory local KEK once, not every DEK seed, and the annotation travels with every ciphertext made
  under that local KEK. Annotations exist only in KMS v2, so escrow is v2-only.

Escrow annotation (stored in plaintext in etcd; it holds only ciphertext)::

    emergency.kubeshield.io   the local backend's wrap (0x01 || fp(8) || nonce(12) || GCM ct || tag(16),
                              see kubeshield.keys.local) of the plaintext, made with
                              aad = b"kubeshield-emergency-escrow-v1\\x00"
                                    || sha256(primary ciphertext) (32)
                                    || primary key_id (ASCII) || b"\\x00" || caller aad

so an escrow can only open together with the primary ciphertext and key_id it was made with. A 32-byte
value gives a 69-byte annotation.

Failure of the emergency path never turns an outage into a different answer: if the emergency keyring
cannot decrypt (no such key, tampered escrow, closed), the primary's ``BackendUnavailable`` /
``BackendTimeout`` is raised again, so kube-apiserver retries later instead of treating the data as
corrupt. The escrowed copy is a second key to every Secret: keep the emergency keyring off the
control-plane nodes' normal disks (a passphrase-protected keyring, the passphrase in a separate secret)
and see docs/backup.md.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from kubeshield.errors import BackendTimeout, BackendUnavailable, ContractViolation, KubeshieldError
from kubeshield.keys.base import Health, KeyBackend, Refreshable, Rotatable, Wrapped
from kubeshield.keys.local import LocalKeyBackend

__all__ = ["EMERGENCY_ANNOTATION", "BreakGlassBackend", "BreakGlassStats"]

EMERGENCY_ANNOTATION = "emergency.kubeshield.io"
_ESCROW_LABEL = b"kubeshield-emergency-escrow-v1\x00"
_OUTAGES = (BackendUnavailable, BackendTimeout)

_log = logging.getLogger("kubeshield.keys.breakglass")


@dataclass(frozen=True, slots=True)
class BreakGlassStats:
    """Counters for metrics (no secrets): decrypts served by the emergency keyring, and refusals."""

    emergency_decrypts: int
    emergency_failures: int


def _escrow_aad(primary_ciphertext: bytes, key_id: str, aad: bytes) -> bytes:
    return (
        _ESCROW_LABEL + hashlib.sha256(primary_ciphertext).digest() + key_id.encode("ascii") + b"\x00" + aad
    )


def _ignore(_key_id: str) -> None:
    return None


class BreakGlassBackend:
    """A KeyBackend that falls back to an emergency local keyring for ``unwrap`` during an outage."""

    def __init__(
        self,
        primary: KeyBackend,
        emergency: LocalKeyBackend,
        *,
        on_emergency: Callable[[str], None] = _ignore,
        escrow: bool = False,
    ) -> None:
        if not isinstance(emergency, LocalKeyBackend):
            raise TypeError("emergency must be a LocalKeyBackend")
        self.name = f"{primary.name}+break-glass"
        self._primary = primary
        self._emergency = emergency
        self._on_emergency = on_emergency
        self._escrow = escrow
        self._lock = threading.Lock()
        self._decrypts = 0
        self._failures = 0

    @property
    def primary(self) -> KeyBackend:
        return self._primary

    # -- KeyBackend ---------------------------------------------------------------------------------

    def key_id(self) -> str:
        return self._primary.key_id()

    def wrap(self, plaintext: bytes, *, aad: bytes = b"") -> Wrapped:
        """The primary's wrap; with ``escrow`` also the escrow annotation (layout in the module doc)."""
        wrapped = self._primary.wrap(plaintext, aad=aad)
        if EMERGENCY_ANNOTATION in wrapped.annotations:
            raise ContractViolation(
                f"the primary backend uses the reserved annotation {EMERGENCY_ANNOTATION}"
            )
        if not self._escrow:
            return wrapped
        escrow = self._emergency.wrap(plaintext, aad=_escrow_aad(wrapped.ciphertext, wrapped.key_id, aad))
        annotations = {**wrapped.annotations, EMERGENCY_ANNOTATION: escrow.ciphertext}
        return Wrapped(ciphertext=wrapped.ciphertext, key_id=wrapped.key_id, annotations=annotations)

    def unwrap(self, wrapped: Wrapped, *, aad: bytes = b"") -> bytes:
        """The primary's unwrap; the emergency keyring only when the primary is unreachable."""
        if not isinstance(wrapped, Wrapped):
            raise TypeError("wrapped must be a Wrapped")
        escrow = wrapped.annotations.get(EMERGENCY_ANNOTATION)
        primary_view = wrapped
        if escrow is not None:
            rest = {k: v for k, v in wrapped.annotations.items() if k != EMERGENCY_ANNOTATION}
            primary_view = Wrapped(ciphertext=wrapped.ciphertext, key_id=wrapped.key_id, annotations=rest)
        try:
            return self._primary.unwrap(primary_view, aad=aad)
        except _OUTAGES as outage:
            return self._emergency_unwrap(wrapped, escrow, aad, outage)

    def check_health(self) -> Health:
        """The primary's health: break-glass does not make an unreachable primary healthy."""
        return self._primary.check_health()

    def close(self) -> None:
        try:
            self._primary.close()
        finally:
            self._emergency.close()

    # -- optional abilities, delegated to the primary -----------------------------------------------

    def refresh(self) -> bool:
        """Refresh the emergency keyring (errors ignored) and the primary; True if the key_id changed."""
        try:
            self._emergency.refresh()
        except KubeshieldError as exc:
            _log.warning("emergency keyring refresh failed", extra={"fields": {"error": type(exc).__name__}})
        if isinstance(self._primary, Refreshable):
            return self._primary.refresh()
        return False

    def rotate(self) -> str:
        if not isinstance(self._primary, Rotatable):
            raise KubeshieldError(f"the {self._primary.name} backend cannot rotate its key")
        return self._primary.rotate()

    def stats(self) -> BreakGlassStats:
        with self._lock:
            return BreakGlassStats(self._decrypts, self._failures)

    # -- internals ----------------------------------------------------------------------------------

    def _emergency_unwrap(
        self, wrapped: Wrapped, escrow: bytes | None, aad: bytes, outage: BackendUnavailable | BackendTimeout
    ) -> bytes:
        if isinstance(escrow, bytes) and escrow:
            path = "escrow"
            target = Wrapped(ciphertext=escrow, key_id="")
            inner_aad = _escrow_aad(wrapped.ciphertext, wrapped.key_id, aad)
        elif self._holds(wrapped.key_id):
            path = "keyring"
            target, inner_aad = wrapped, aad
        else:
            raise outage
        try:
            plaintext = self._emergency.unwrap(target, aad=inner_aad)
        except KubeshieldError as exc:
            with self._lock:
                self._failures += 1
            _log.warning(
                "break-glass: the emergency keyring could not decrypt; reporting the primary's outage",
                extra={
                    "fields": {
                        "event": "break_glass_refused",
                        "key_id": wrapped.key_id,
                        "path": path,
                        "error": type(exc).__name__,
                    }
                },
            )
            raise outage from None
        with self._lock:
            self._decrypts += 1
        _log.warning(
            "BREAK-GLASS: decrypted with the emergency keyring because the primary backend is unreachable",
            extra={
                "fields": {
                    "event": "break_glass_decrypt",
                    "key_id": wrapped.key_id,
                    "path": path,
                    "primary_error": type(outage).__name__,
                }
            },
        )
        try:
            self._on_emergency(wrapped.key_id)
        except Exception as exc:  # a metrics hook must never turn a good decrypt into a failure
            _log.error("break-glass hook failed", extra={"fields": {"error": type(exc).__name__}})
        return plaintext

    def _holds(self, key_id: str) -> bool:
        if not key_id:
            return True  # KMS v1: the local format names its KEK by fingerprint
        try:
            return any(v.key_id == key_id for v in self._emergency.versions())
        except KubeshieldError:
            return False
