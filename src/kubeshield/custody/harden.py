"""Process hardening for the custody process: the generic code lives in :mod:`kubeshield.keys.harden`.

It moved down a layer so that the access agent (``kubeshield.access``) hardens itself the same way
without importing ``kubeshield.custody``; this module keeps the custody names working.
"""

from __future__ import annotations

from kubeshield.keys.harden import HardeningReport, drop_privileges, harden_process, hardening_report

__all__ = ["HardeningReport", "drop_privileges", "harden_process", "hardening_report"]
