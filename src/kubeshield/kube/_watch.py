"""The bookkeeping of a correct watch, without I/O: what to resume from and what a re-list changed.

A watch that lasts must survive three things (client-go's reflector does the same):

* a dropped connection or a server-side timeout: open a new watch from the last resourceVersion seen
  (from an event or a BOOKMARK), so nothing is missed and nothing is delivered twice;
* ``410 Gone`` (the resourceVersion fell out of the server's history): list again and continue from the
  list's resourceVersion. What happened in between is reported as *synthetic* events from a diff of the
  objects seen before and the fresh list: ADDED for new objects, MODIFIED for changed ones, DELETED
  (with the last state seen) for the ones that vanished, so a controller converges without a restart;
* BOOKMARK events: they only move the resourceVersion on and are not handed to the caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["WatchEvent", "WatchState"]

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """``type`` is ADDED, MODIFIED or DELETED; ``synthetic`` marks events made from a list, not sent by
    the server (the initial list, or a re-list after 410 Gone)."""

    type: str
    object: JsonObject
    synthetic: bool = False

    @property
    def name(self) -> str:
        return str(self.object.get("metadata", {}).get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.object.get("metadata", {}).get("namespace", ""))


def _key(obj: JsonObject) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _rv(obj: JsonObject) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class WatchState:
    """The last resourceVersion and the objects seen so far (by namespace/name)."""

    def __init__(self, resource_version: str | None = None) -> None:
        self.resource_version = resource_version or None
        self.relists = 0
        self._known: dict[tuple[str, str], JsonObject] = {}

    def on_list(self, items: Iterable[JsonObject], list_rv: str, *, initial: bool) -> list[WatchEvent]:
        """A (re-)list arrived: remember it and say what changed since what was known."""
        fresh = {_key(obj): obj for obj in items}
        events: list[WatchEvent] = []
        if initial:
            events = [WatchEvent("ADDED", obj, synthetic=True) for obj in fresh.values()]
        else:
            self.relists += 1
            for key, obj in fresh.items():
                old = self._known.get(key)
                if old is None:
                    events.append(WatchEvent("ADDED", obj, synthetic=True))
                elif _rv(old) != _rv(obj):
                    events.append(WatchEvent("MODIFIED", obj, synthetic=True))
            for key, old in self._known.items():
                if key not in fresh:
                    events.append(WatchEvent("DELETED", old, synthetic=True))
        self._known = fresh
        self.resource_version = list_rv or self.resource_version
        return events

    def on_event(self, kind: str, obj: JsonObject) -> WatchEvent | None:
        """One event from the server; returns what to hand the caller (nothing for a BOOKMARK)."""
        rv = _rv(obj)
        if rv:
            self.resource_version = rv
        if kind == "BOOKMARK":
            return None
        key = _key(obj)
        if kind == "DELETED":
            self._known.pop(key, None)
        else:
            self._known[key] = obj
        return WatchEvent(kind, obj)

    def expired(self) -> None:
        """410 Gone: the resourceVersion is useless now; the next step is a fresh list."""
        self.resource_version = None
