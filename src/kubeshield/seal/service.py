"""The controller's key state: the registry's keys opened once, renewed on schedule, reloaded on change.

:class:`SealService` is what the reconcile loop and the HTTP API share. It opens every private half
once (unwrapped into memory, or a handle on the token), keeps them for the life of the process, reloads
the registry file when another process (``kubeshield seal keys rotate|import``) changed it, and adds a
key when the newest is older than ``seal.keyRenewPeriod``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubeshield.errors import InvalidCiphertext
from kubeshield.seal.certs import pem_of
from kubeshield.seal.errors import SealError
from kubeshield.seal.keyset import KeySet, SealingKey
from kubeshield.seal.objects import Document, load_documents, parse_sealed_secret
from kubeshield.seal.registry import Registry
from kubeshield.seal.rotate import reencrypt
from kubeshield.seal.unsealing import unseal

__all__ = ["SealService", "VerifyResult"]

_MAX_BODY = 1 << 20


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    malformed: str = ""


class SealService:
    """Keys for unsealing, shared by the controller's workers and its HTTP API (thread-safe)."""

    def __init__(
        self,
        registry: Registry,
        *,
        renew_period: float = 30 * 24 * 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._renew_period = renew_period
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._opened: dict[str, SealingKey] = {}
        self._keys = KeySet([])
        self.reload()

    @property
    def keys(self) -> KeySet:
        return self._keys

    def _file_stamp(self) -> tuple[int, int]:
        st = self._registry.path.stat()
        return st.st_mtime_ns, st.st_size

    def reload(self) -> bool:
        """Re-read the registry if its file changed; open only keys not opened before. True if changed."""
        with self._lock:
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return False
            records = self._registry.load()
            fresh = [r for r in records if r.fingerprint not in self._opened]
            for key in self._registry.keyset(records=fresh).keys:
                self._opened[key.fingerprint] = key
            keep = {r.fingerprint for r in records}
            self._keys = KeySet(k for fp, k in self._opened.items() if fp in keep)
            self._stamp = stamp
            return True

    def renew_if_due(self) -> str | None:
        """Add a key when the newest is older than the renew period; returns its fingerprint."""
        record = self._registry.renew_if_due(period=self._renew_period)
        if record is None:
            return None
        self.reload()
        return record.fingerprint

    def cert_pem(self) -> bytes:
        return pem_of(self._keys.latest.certificate)

    def newest_key_age(self) -> float:
        if not len(self._keys):
            return 0.0
        return max(0.0, self._clock() - self._keys.latest.not_before.timestamp())

    # --- the HTTP API's operations ---------------------------------------------------------------

    def _parse(self, body: bytes) -> Any:
        if len(body) > _MAX_BODY:
            raise SealError(f"request body larger than {_MAX_BODY} bytes")
        docs = load_documents(body, source="request body")
        if len(docs) != 1:
            raise SealError("request body: expected exactly one SealedSecret")
        return parse_sealed_secret(docs[0])

    def verify(self, body: bytes) -> VerifyResult:
        """Whether the SealedSecret in ``body`` unseals (its values and templates)."""
        try:
            ss = self._parse(body)
        except SealError as exc:
            return VerifyResult(ok=False, malformed=str(exc))
        try:
            unseal(ss, self._keys)
        except (SealError, InvalidCiphertext):
            return VerifyResult(ok=False)
        return VerifyResult(ok=True)

    def rotate(self, body: bytes) -> dict[str, Any]:
        """``/v1/rotate``: the SealedSecret re-encrypted with the newest key. ``SealError`` if it does
        not unseal or is malformed."""
        ss = self._parse(body)
        return reencrypt(ss, self._keys)

    def parse(self, obj: dict[str, Any]) -> Any:
        return parse_sealed_secret(Document(obj, "object"))

    @staticmethod
    def dumps(obj: dict[str, Any]) -> bytes:
        return json.dumps(obj).encode("utf-8")
