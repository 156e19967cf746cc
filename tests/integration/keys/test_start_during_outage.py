"""Issue 15 item 3: ``kms serve`` starts while Transit, AWS KMS or the PKCS#11 token is down, and heals.

The scenarios (tests/support/outage.py) run the real console script against the real servers: OpenBao
(raft-backed, stopped and started again), moto (nothing listening at start), SoftHSM2 (the token
directory appears later). Before the fix, ``kms serve`` exited at start in each case.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.outage import SCENARIOS


@pytest.mark.parametrize("backend", sorted(SCENARIOS))
def test_kms_serve_starts_during_the_outage_and_heals_without_a_restart(backend: str, tmp_path: Path) -> None:
    run = SCENARIOS[backend](tmp_path)
    assert run.backend == backend
    if backend == "transit":  # the only scenario with Secrets written before the outage
        assert run.break_glass_decrypts >= 1
