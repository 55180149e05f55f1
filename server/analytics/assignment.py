"""Optimal one-to-one matching of tracks to detections by IoU.

Why written here: ByteTrack solves this with `lap.lapjv` (or scipy's linear_sum_assignment).
scipy is far too big for a device install; `lap` is a 1.7 MB wheel that would fit, but it is
not a dependency of the server today, and the matrices here are small and mostly trivial (each
object overlaps only its own track). So the trivial pairs are taken directly, and only the
tangled rest goes through a shortest-augmenting-path Hungarian solver (O(n^3), vectorised over
columns with numpy), using the same padding as `lap.lapjv(extend_cost=True, cost_limit=...)`
so that leaving a track or detection unmatched is always allowed.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]


def match_by_iou(iou: Array, least_iou: float) -> list[tuple[int, int]]:
    """Pairs (row, column) with IoU >= `least_iou`, each row and column at most once,
    maximising the total IoU of the pairs (ByteTrack's cost 1 - IoU with a cost limit)."""
    if iou.size == 0:
        return []
    feasible = iou >= least_iou
    row_counts = feasible.sum(axis=1)
    col_counts = feasible.sum(axis=0)
    # A pair that is the only candidate of both its row and its column is its own component:
    # matching it is optimal whatever the rest does.
    alone = feasible & (row_counts[:, None] == 1) & (col_counts[None, :] == 1)
    rows, cols = np.nonzero(alone)
    pairs = list(zip(rows.tolist(), cols.tolist(), strict=True))
    tangled = feasible & ~alone
    if tangled.any():
        for rows_of, cols_of in _components(tangled):
            sub = iou[np.ix_(rows_of, cols_of)]
            if len(rows_of) <= SMALL and len(cols_of) <= SMALL:
                found = _small_assignment(sub, least_iou)
            else:
                found = _limited_assignment(1.0 - sub, 1.0 - least_iou)
            pairs.extend((rows_of[row], cols_of[col]) for row, col in found)
    return sorted(pairs)


# Components up to this many rows and columns are solved by trying every partial matching
# (at most 4^3 = 64): two objects crossing is the common tangle, and numpy's per-call cost
# makes the Hungarian solver's loop slower than that for a few boxes.
SMALL = 3


def _components(feasible: npt.NDArray[np.bool_]) -> list[tuple[list[int], list[int]]]:
    """The connected components (rows, columns) of the bipartite graph of feasible pairs."""
    row_links: dict[int, list[int]] = {}
    col_links: dict[int, list[int]] = {}
    for row, col in zip(*(axis.tolist() for axis in np.nonzero(feasible)), strict=True):
        row_links.setdefault(row, []).append(col)
        col_links.setdefault(col, []).append(row)
    seen_rows: set[int] = set()
    components = []
    for start in row_links:
        if start in seen_rows:
            continue
        rows, cols, queue = {start}, set(), [start]
        while queue:
            for col in row_links[queue.pop()]:
                if col not in cols:
                    cols.add(col)
                    for row in col_links[col]:
                        if row not in rows:
                            rows.add(row)
                            queue.append(row)
        seen_rows |= rows
        components.append((sorted(rows), sorted(cols)))
    return components


def _small_assignment(iou: Array, least_iou: float) -> list[tuple[int, int]]:
    """The best partial matching of a few rows and columns by exhaustive search, under the
    same objective as `_limited_assignment`: the most total IoU, where each pair taken trades
    two unmatched sides (costing half the limit each) for its own cost."""
    rows, cols = iou.shape
    values = iou.tolist()
    limit = 1.0 - least_iou
    best: tuple[float, list[tuple[int, int]]] = (float(rows + cols) * limit / 2, [])

    def search(row: int, used: frozenset[int], cost: float, chosen: list[tuple[int, int]]) -> None:
        nonlocal best
        if row == rows:
            total = cost + (rows + cols - 2 * len(chosen)) * limit / 2
            if total < best[0] - 1e-12:
                best = (total, list(chosen))
            return
        search(row + 1, used, cost, chosen)
        for col in range(cols):
            if col not in used and values[row][col] >= least_iou:
                chosen.append((row, col))
                search(row + 1, used | {col}, cost + 1.0 - values[row][col], chosen)
                chosen.pop()

    search(0, frozenset(), 0.0, [])
    return best[1]


def _limited_assignment(cost: Array, cost_limit: float) -> list[tuple[int, int]]:
    """Minimum-cost partial assignment where a pair costing more than `cost_limit` is never
    taken: the n x m matrix is padded to (n + m) square with `cost_limit / 2` for 'unmatched'
    (so taking a pair beats leaving both sides unmatched only when it costs under the limit)."""
    n, m = cost.shape
    size = n + m
    padded = np.full((size, size), cost_limit / 2)
    padded[:n, :m] = np.where(cost <= cost_limit, cost, cost_limit + 1.0)
    padded[n:, m:] = 0.0
    assigned = hungarian(padded)
    return [
        (row, int(col))
        for row, col in enumerate(assigned[:n])
        if col < m and cost[row, col] <= cost_limit
    ]


def hungarian(cost: Array) -> npt.NDArray[np.int64]:
    """The column assigned to each row of a square cost matrix, minimising the total: the
    shortest augmenting path method with row and column potentials (Kuhn-Munkres as improved
    by Jonker and Volgenant), one augmentation per row."""
    n = cost.shape[0]
    u = np.zeros(n + 1)
    v = np.zeros(n + 1)
    # owner[j]: the row (1-based) holding column j; column 0 is the search's virtual start.
    owner = np.zeros(n + 1, dtype=np.int64)
    way = np.zeros(n + 1, dtype=np.int64)
    for row in range(1, n + 1):
        owner[0] = row
        column = 0
        min_reduced = np.full(n + 1, np.inf)
        used = np.zeros(n + 1, dtype=bool)
        while True:
            used[column] = True
            current_row = owner[column]
            reduced = cost[current_row - 1] - u[current_row] - v[1:]
            free = ~used[1:]
            better = free & (reduced < min_reduced[1:])
            min_reduced[1:][better] = reduced[better]
            way[1:][better] = column
            candidates = np.where(free, min_reduced[1:], np.inf)
            next_column = int(np.argmin(candidates)) + 1
            delta = candidates[next_column - 1]
            u[owner[used]] += delta
            v[used] -= delta
            min_reduced[1:][free] -= delta
            column = next_column
            if owner[column] == 0:
                break
        while column:
            previous = way[column]
            owner[column] = owner[previous]
            column = previous
    assigned = np.zeros(n, dtype=np.int64)
    assigned[owner[1:] - 1] = np.arange(n)
    return assigned
