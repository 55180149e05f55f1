"""No request, legal or not, leaves the server holding hundreds of MB.

Twenty KServe requests of 30 MB (under the 32 MB message limit, refused as the wrong size for
the input) and twenty of 64 MB (over the limit), one after the other, against a real
`edgefleet serve` process: RSS comes back near RSS when ready within 10 s. Before the
fixes the 30 MB series left it at +1 GB for good (refused requests held in reference cycles,
their pages kept by glibc's dynamic mmap threshold and per-thread arenas).

The peak while a request arrives is gRPC's: RSS climbs by ~130 MB while one 30 MB message is
received, before any edgefleet code runs (gRPC's read buffers, the message assembled, the
copy handed to the parser, the parsed message), and a series' next request may arrive before
the previous one's buffers are released.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from bench.footprint_probe import MB, PROBE_MODEL, ServeProcess, request_series
from testkit.repositories import ROOT

# A real server process and 40 big requests: about a minute.
pytestmark = pytest.mark.system

# The goals are +150 MB at the peak and ready + 30 MB within 10 s. Measured on a
# 2-core machine: peak +180 to +230 MB before an oversized payload was refused as it is parsed
# (server.grpc_api.raw_payload), +117 to +136 MB since (gRPC's receive path, above); +2 to
# +34 MB 10 s after (what the single heap's live allocations pin after a trim). The bounds
# asserted leave room for that spread on a loaded machine; before the fixes it was +1,100 MB
# and +980 MB.
PEAK_OVER_READY = 280 * MB
SETTLED_OVER_READY = 50 * MB
SETTLE_S = 10.0


@pytest.fixture
def serving(tmp_path: Path, built_models: Path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "edgefleet.cli"]
    with ServeProcess(command, built_models, "--model", PROBE_MODEL, env=env) as server:
        yield server


@pytest.mark.parametrize("size_mb", [30, 64])
def test_rss_stays_bounded_under_big_requests(serving: ServeProcess, size_mb: int):
    ready = serving.ready_rss
    series = request_series(
        serving, size_mb, 20, settle_s=SETTLE_S, settled_margin=SETTLED_OVER_READY, reference=ready
    )
    expected = "INVALID_ARGUMENT" if size_mb < 32 else "RESOURCE_EXHAUSTED"
    assert series.codes == (expected,), series.describe()
    assert series.peak_rss - ready <= PEAK_OVER_READY, (
        f"{series.describe()}; ready at {ready / MB:.0f} MB"
    )
    assert series.settled_s <= SETTLE_S, f"{series.describe()}; ready at {ready / MB:.0f} MB"
