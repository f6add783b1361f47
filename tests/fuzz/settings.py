"""hypothesis settings shared by the fuzz tests: derandomized in CI, scalable by WAYPOST_FUZZ_EXAMPLES."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# A multiplier of every test's example count. Unset (CI): 1, derandomized, so every run checks the same
# examples and a failure reproduces. Set (a campaign): N times as many, freshly random each run.
SCALE = int(os.environ.get("WAYPOST_FUZZ_EXAMPLES", "0") or 0)
CAMPAIGN = SCALE > 0

# Per-example time bound: a load that takes longer than this is a hang for our purposes.
DEADLINE_MS = 2000


def fuzz(examples: int, **extra):
    return settings(
        max_examples=examples * (SCALE or 1),
        derandomize=not CAMPAIGN,
        deadline=DEADLINE_MS,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
        **extra,
    )
