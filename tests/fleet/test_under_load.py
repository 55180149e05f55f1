"""The fleet demo and the failover test on a loaded machine (issue 24, item 3): the same tests,
run beside a CPU hog this module starts (one busy process per core, bounded in time), prove
that a rollout of an identical model does not depend on a quiet machine. The last wave is
judged against a control cohort measured at the same time, not against history."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.fleet import test_fleet_demo, test_replicas

# The tests themselves, collected again here, where the hog below runs beside them.
test_the_demo_succeeds_beside_a_cpu_hog = test_fleet_demo.test_the_demo_succeeds_and_says_so
test_failover_beside_a_cpu_hog = (
    test_replicas.test_killing_the_driving_replica_mid_wave_hands_the_rollout_over
)

# No hog outlives this, even if the test process is killed before it can stop them.
HOG_S = 300
_HOG = f"import time\nend = time.monotonic() + {HOG_S}\nwhile time.monotonic() < end: pass\n"


@pytest.fixture(autouse=True)
def cpu_hog() -> Iterator[None]:
    hogs = [subprocess.Popen([sys.executable, "-c", _HOG]) for _ in range(os.cpu_count() or 1)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
