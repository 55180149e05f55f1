"""The freshness scheduler's batch size follows what the model's measured run times say.

Run times are fed in, not measured: the rule is what is under test, and these are the two
shapes real devices show (docs/benchmarks.md): a GPU-like model whose batch of 8 costs little
more than a batch of 1, and a CPU-bound one whose run time grows with every row.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from server.frames.batch_sizer import PROBE_BATCHES, PROBE_EVERY, BatchSizer


def serve(
    sizer: BatchSizer, run_s: Callable[[int], float], batches: int, waiting: int
) -> list[int]:
    sizes = []
    for _ in range(batches):
        rows = sizer.rows(8, lambda: waiting)
        sizes.append(rows)
        sizer.ran(rows, run_s(rows))
    return sizes


def test_a_model_that_batches_cheaply_climbs_to_the_plans_batch() -> None:
    sizer = BatchSizer()
    sizes = serve(sizer, lambda rows: 0.004 + 0.0002 * rows, PROBE_EVERY * 20, waiting=8)
    assert sizes[0] == 1
    assert sizer.target == 8
    assert sizes[-PROBE_EVERY // 2 :] == [8] * (PROBE_EVERY // 2)


def test_a_model_whose_time_grows_with_rows_stays_at_one_frame() -> None:
    sizer = BatchSizer()
    sizes = serve(sizer, lambda rows: 0.009 * rows, PROBE_EVERY * 20, waiting=8)
    assert sizer.target == 1
    probes = [size for size in sizes if size != 1]
    # It keeps checking (load and clocks change): a few batches every PROBE_EVERY at most.
    assert probes and len(probes) <= PROBE_BATCHES * len(sizes) // PROBE_EVERY


def test_it_never_exceeds_the_plan_nor_probes_beyond_the_waiting_streams() -> None:
    sizer = BatchSizer()
    sizes = serve(sizer, lambda rows: 0.004, PROBE_EVERY * 20, waiting=2)
    assert max(sizes) == 2 and sizer.target == 2
    assert sizer.rows(1, lambda: 8) == 1  # a plan without batching caps it at once


def test_it_comes_back_down_when_batching_stops_paying() -> None:
    sizer = BatchSizer()
    serve(sizer, lambda rows: 0.004, PROBE_EVERY * 20, waiting=8)
    assert sizer.target == 8
    # The device got busy (or a swap brought a CPU-bound model): every row now costs in full.
    serve(sizer, lambda rows: 0.009 * rows, PROBE_EVERY * 20, waiting=8)
    assert sizer.target == 1


def test_a_noisy_shared_device_does_not_talk_it_into_batching() -> None:
    # Every row costs the same on average, but each run varies by +-30% and the device's
    # load drifts (other processes): a probe judged against stale averages would see
    # "cheaper" batches in every quiet moment. Seeded: the same run every time.
    noise = random.Random(9)
    sizer = BatchSizer()
    sizes = []
    for batch in range(PROBE_EVERY * 100):
        load = 1.0 + 0.8 * ((batch // 300) % 2)  # busy and quiet spells
        rows = sizer.rows(8, lambda: 8)
        sizes.append(sizer.target)
        sizer.ran(rows, 0.009 * rows * load * noise.uniform(0.7, 1.3))
    assert sizes.count(1) >= 0.9 * len(sizes)
