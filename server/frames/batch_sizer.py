"""How many frames the freshness scheduler puts in one batch: as many as make frames cheaper.

Every frame of a batch waits for the whole batch, so a row that does not lower the model's
time per frame only ages every result in it. On a GPU a batch of 8 costs little more than a
batch of 1; on a small CPU it often costs 8 times as much (EfficientNet-Lite0 on 2 cores:
the same 15 ms of CPU per frame at batch 1, 4 and 8), and a batch of 8 camera frames then
answers 8 cameras with results a whole batch-run old.

So the sizer measures the model's run time per frame at each batch size it tries, on the
frames it serves: it runs one size (starting at one frame) and every PROBE_EVERY batches tries
a neighbour, the next size up (doubling, up to the plan's batch size, when enough streams are
waiting to fill it) or the one below. A probe is judged against the batches of the current
size just before it, not against an average from another moment: on a shared device the load
changes from second to second and would otherwise decide. It moves up only when two probes
agree the larger size is clearly cheaper per frame, and back down when two say the smaller
one costs about as much. Nothing is configured per device: the same rule picks 8 on a GPU and
1 on a busy ARM board.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

# A larger batch must cut the time per frame by this much to be worth its extra age.
MIN_GAIN = 0.15
# Batches of the current size between two probes of a neighbouring size.
PROBE_EVERY = 48
# A probe runs this many batches of the neighbour, judged against the current size's last
# RECENT batches: single runs on a shared device vary by a third.
PROBE_BATCHES = 4
RECENT = 8
# Probes that must all agree before the size changes.
PROBES_TO_DECIDE = 2


class BatchSizer:
    """Chooses the next batch's row count from measured per-frame run time."""

    def __init__(self) -> None:
        self._target = 1
        self._max_rows = 1
        self._recent: deque[float] = deque(maxlen=RECENT)  # current size, s per frame
        self._ratios: dict[int, list[float]] = {}  # neighbour: its probes' cost ratios
        self._since_probe = 0
        self._probe: int | None = None
        self._probe_costs: list[float] = []
        self._baseline_s = 0.0
        self._probe_up_next = True

    @property
    def target(self) -> int:
        return self._target

    def rows(self, max_rows: int, waiting: Callable[[], int]) -> int:
        """Rows for the next batch, given the plan's limit and how to count the streams with
        a frame waiting (asked only when a probe of a larger size is due: it needs enough of
        them to be a real batch of it)."""
        self._max_rows = max(1, max_rows)
        if self._target > self._max_rows:
            self._move(self._max_rows)
        if self._probe is not None:
            if self._probe <= self._max_rows and (
                self._probe < self._target or waiting() >= self._probe
            ):
                return self._probe
            self._probe = None  # the streams went away: abandon it
        if self._since_probe < PROBE_EVERY or len(self._recent) < RECENT:
            return self._target
        up, down = self._up(), self._down()
        can_grow = up > self._target and waiting() >= up
        can_shrink = down < self._target
        if can_grow and (self._probe_up_next or not can_shrink):
            self._probe = up
        elif can_shrink:
            self._probe = down
        self._probe_up_next = not self._probe_up_next
        if self._probe is None:
            return self._target
        self._since_probe = 0
        self._probe_costs = []
        self._baseline_s = sum(self._recent) / len(self._recent)
        return self._probe

    def ran(self, rows: int, run_s: float) -> None:
        """One batch of `rows` frames took `run_s` in the model."""
        if rows < 1 or run_s <= 0:
            return
        per_frame = run_s / rows
        if self._probe is not None and rows == self._probe:
            self._probe_costs.append(per_frame)
            if len(self._probe_costs) >= PROBE_BATCHES:
                probed, self._probe = self._probe, None
                ratio = sum(self._probe_costs) / len(self._probe_costs) / self._baseline_s
                self._judge(probed, ratio)
            return
        if rows == self._target:
            self._recent.append(per_frame)
        # Otherwise a partial batch (fewer streams waiting): no evidence either way.
        self._since_probe += 1

    def _judge(self, rows: int, ratio: float) -> None:
        ratios = self._ratios.setdefault(rows, [])
        ratios.append(ratio)
        if len(ratios) < PROBES_TO_DECIDE:
            return
        # Every one of the last probes must agree: one probe caught across a change of load
        # (a busy spell ending) reads far off, its neighbours do not.
        last = ratios[-PROBES_TO_DECIDE:]
        grow = rows > self._target and max(last) <= 1 - MIN_GAIN
        shrink = rows < self._target and min(last) < 1 / (1 - MIN_GAIN)
        if grow or shrink:
            self._move(rows)

    def _move(self, rows: int) -> None:
        self._target = rows
        self._recent.clear()  # measured afresh at the new size
        self._ratios.clear()
        self._probe = None
        self._since_probe = 0

    def _up(self) -> int:
        return min(self._target * 2, self._max_rows)

    def _down(self) -> int:
        # The ladder is 1, 2, 4, ... and the plan's limit: halving lands on a rung.
        return 1 << max(0, (self._target - 1).bit_length() - 1)
