"""A stand-in backend module whose SDK is not installed (for registry tests)."""

from __future__ import annotations

import kubeshield_test_sdk_that_does_not_exist  # noqa: F401

__all__: list[str] = []
