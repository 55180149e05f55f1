"""How many frames the freshness scheduler puts in one batch: as many as make frames cheaper.

Every frame of a batch waits for the whole batch, so a row that does not lower the model's
time per frame only ages every result in it. On a GPU a batch of 8 costs little more than a
batch of 1; on a small CPU it often costs 8 times as much (EfficientNet-Lite0 on 2 cores:
the same 15 ms of CPU per frame at batch 1, 4 and 8), and a batch of 8 camera frames then
answers 8 cameras with results a whole batch-run old.

So the sizer learns the model's run time per frame at each batch size it tries, on the
frames it serves: it starts at one frame, now and then tries the next size up (doubling, up
to the plan's batch size) when enough streams are waiting to fill it, moves up when that
size is clearly cheaper per frame, and back down when the size below is as cheap. Nothing
is configured per device: the same rule picks 8 on a GPU and 1 on a busy ARM board.
"""

from __future__ import annotations

from dataclasses import dataclass

# A larger batch must cut the time per frame by this much to be worth its extra age.
MIN_GAIN = 0.15
# Batches between two tries of a neighbouring size (load and clocks change what is cheaper).
PROBE_EVERY = 48
# Weight of the newest observation in each size's moving average.
SMOOTHING = 0.25


@dataclass
class _SizeCost:
    per_frame_s: float
    samples: int


class BatchSizer:
    """Chooses the next batch's row count from measured per-frame run time."""

    def __init__(self) -> None:
        self._costs: dict[int, _SizeCost] = {}
        self._target = 1
        self._max_rows = 1
        self._since_probe = 0

    @property
    def target(self) -> int:
        return self._target

    def rows(self, max_rows: int, waiting: int) -> int:
        """Rows for the next batch, given the plan's limit and the streams with a frame
        waiting (a probe of a larger size needs enough of them to be a real batch of it)."""
        self._max_rows = max(1, max_rows)
        self._target = min(self._target, self._max_rows)
        if self._since_probe < PROBE_EVERY:
            return self._target
        self._since_probe = 0
        up = self._up(self._target)
        if up > self._target and waiting >= up:
            return up
        return self._down(self._target)

    def ran(self, rows: int, run_s: float) -> None:
        """One batch of `rows` frames took `run_s` in the model."""
        if rows < 1 or run_s <= 0:
            return
        per_frame = run_s / rows
        cost = self._costs.get(rows)
        if cost is None:
            self._costs[rows] = _SizeCost(per_frame, 1)
        else:
            cost.per_frame_s += SMOOTHING * (per_frame - cost.per_frame_s)
            cost.samples += 1
        self._since_probe += 1
        self._decide()

    def _up(self, size: int) -> int:
        return min(size * 2, self._max_rows)

    @staticmethod
    def _down(size: int) -> int:
        # The ladder is 1, 2, 4, ... and the plan's limit: halving lands on a rung.
        return 1 << max(0, (size - 1).bit_length() - 1)

    def _decide(self) -> None:
        current = self._costs.get(self._target)
        if current is None or current.samples < 2:
            return
        up = self._costs.get(self._up(self._target))
        if up is not None and up.per_frame_s <= (1 - MIN_GAIN) * current.per_frame_s:
            self._target = self._up(self._target)
            return
        if self._target > 1:
            down = self._costs.get(self._down(self._target))
            if down is not None and current.per_frame_s > (1 - MIN_GAIN) * down.per_frame_s:
                self._target = self._down(self._target)
