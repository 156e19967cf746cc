"""Suite-wide settings.

Hypothesis' per-example deadline is a timed assertion: on a loaded 2-core CI machine a slow first example
fails a correct test. Tests here never assert on time (benchmarks under ``bench/`` measure speed), so the
deadline is off for every property test; ``too_slow`` is suppressed for the same reason.

The suite is derandomized: every run explores the same examples, so a run's verdict does not depend on
luck (a counterexample found while exploring becomes a named regression test). To explore with random
seeds, run ``KUBESHIELD_HYPOTHESIS=explore make test``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "kubeshield",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=os.environ.get("KUBESHIELD_HYPOTHESIS") != "explore",
)
settings.load_profile("kubeshield")
