"""The Secrets Store CSI driver provider: :mod:`.params` (what a Mount asks), :mod:`.provider` (the Mount,
transport-free), :mod:`.server` (the gRPC service on the driver's unix socket), ``api`` (generated stubs)."""

from __future__ import annotations

__all__: list[str] = []
