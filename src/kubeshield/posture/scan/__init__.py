"""Repository scan: Kubernetes-aware checks first, then generic credential rules (gitleaks TOML accepted,
RE2 semantics), optional Git history, a baseline of accepted findings."""

from kubeshield.posture.scan.baseline import load_baseline, write_baseline
from kubeshield.posture.scan.rules import DEFAULT_RULES, RuleSet, load_rules
from kubeshield.posture.scan.scanner import Scanner, ScanOptions, ScanReport, scan

__all__ = [
    "DEFAULT_RULES",
    "RuleSet",
    "ScanOptions",
    "ScanReport",
    "Scanner",
    "load_baseline",
    "load_rules",
    "scan",
    "write_baseline",
]
