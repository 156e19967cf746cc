"""One audit line per release, refusal, seal and operator unseal: who, which objects, when. Never values.

Lines are JSON objects on the ``kubeshield.node.audit`` logger (the CLI sends it to stderr; a log
collector picks it up from the container), for example::

    {"event": "release", "outcome": "released", "identity": "ns-a:app", "pod": "web-5d9c", "podUid": "...",
     "objects": ["db-password"], "keyVersions": [2], "client": "10.0.3.7", "time": "2026-01-02T03:04:05Z"}

Fields are names, versions, identities and short reasons only: no value, token, ciphertext or key.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TextIO

__all__ = ["AUDIT_LOGGER", "AuditLog"]

AUDIT_LOGGER = "kubeshield.node.audit"
_MAX_REASON = 300


class AuditLog:
    def __init__(
        self,
        *,
        logger: logging.Logger | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Lines go to ``logger`` (default ``kubeshield.node.audit``), or straight to ``stream`` when given
        (the CLI's operator unseal: its audit line must appear whatever logging is configured)."""
        self._log = logger or logging.getLogger(AUDIT_LOGGER)
        self._stream = stream
        self._clock = clock

    def record(
        self,
        event: str,
        *,
        outcome: str,
        identity: str = "",
        pod: str = "",
        pod_uid: str = "",
        objects: Sequence[str] = (),
        key_versions: Sequence[int] = (),
        client: str = "",
        reason: str = "",
        actor: str = "",
    ) -> dict[str, object]:
        line: dict[str, object] = {
            "event": event,
            "outcome": outcome,
            "time": datetime.fromtimestamp(self._clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        for key, value in (
            ("identity", identity),
            ("pod", pod),
            ("podUid", pod_uid),
            ("client", client),
            ("actor", actor),
            ("reason", reason[:_MAX_REASON]),
        ):
            if value:
                line[key] = value
        if objects:
            line["objects"] = [o[:253] for o in objects][:256]
        if key_versions:
            line["keyVersions"] = sorted(set(key_versions))
        text = json.dumps(line, sort_keys=True)
        if self._stream is not None:
            self._stream.write(f"audit {text}\n")
            self._stream.flush()
        else:
            self._log.info(text)
        return line
