"""Suite-wide settings.

Hypothesis' per-example deadline is a timed assertion: on a loaded 2-core CI machine a slow first example
fails a correct test. Tests here never assert on time (benchmarks under ``bench/`` measure speed), so the
deadline is off for every property test; ``too_slow`` is suppressed for the same reason.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile("kubeshield", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("kubeshield")
