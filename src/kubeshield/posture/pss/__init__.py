"""Pod Security Standards, evaluated exactly as upstream ``k8s.io/pod-security-admission`` does, for every
policy version from v1.0 to the newest (see :mod:`kubeshield.posture.pss.checks`), and the admission
decision built on them (:mod:`kubeshield.posture.pss.admission`)."""

from kubeshield.posture.pss.api import (
    LATEST,
    LevelVersion,
    Policy,
    Version,
    parse_level,
    parse_version,
    policy_from_labels,
)
from kubeshield.posture.pss.checks import CHECKS, Violation
from kubeshield.posture.pss.evaluator import NEWEST_VERSION, Evaluator, aggregate_detail, evaluate
from kubeshield.posture.pss.extract import POD_KINDS, PodRef, extract_pod

__all__ = [
    "CHECKS",
    "LATEST",
    "NEWEST_VERSION",
    "POD_KINDS",
    "Evaluator",
    "LevelVersion",
    "PodRef",
    "Policy",
    "Version",
    "Violation",
    "aggregate_detail",
    "evaluate",
    "extract_pod",
    "parse_level",
    "parse_version",
    "policy_from_labels",
]
