"""Measure (threads, batch size) pairs on the real model and keep the best, within a time bound.

Inputs are synthetic (the speed of a convolution does not depend on pixel values). Every
measurement is cached on disk keyed by the model file's sha256, the hardware fingerprint and the
onnxruntime version, so a restart applies the result without measuring again; which pair wins
is recomputed from the cached table, so changing the latency budget needs no new measurement.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from server.manifest import ModelManifest

logger = logging.getLogger(__name__)

# Per candidate: one warm-up run, then runs for up to this long (at least MIN_RUNS of them).
MEASURE_S = 0.6
MIN_RUNS = 3
CACHE_VERSION = 1


@dataclass(frozen=True)
class Measurement:
    intra_op_threads: int
    batch_size: int
    runs: int
    batch_p50_ms: float
    batch_p95_ms: float
    throughput_fps: float


@dataclass(frozen=True)
class TuneResult:
    best: Measurement
    measurements: tuple[Measurement, ...]
    within_budget: bool
    seconds: float
    cached: bool
    skipped_candidates: int


def candidate_threads(cores: int) -> list[int]:
    return sorted({1, max(1, cores // 2), cores})


def candidate_batches(max_batch: int) -> list[int]:
    """Powers of two up to the plan's (memory-checked) batch; 0 means the model does not batch."""
    if max_batch <= 1:
        return [max(max_batch, 0)]
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch]


def autotune(
    *,
    model_path: Path,
    model_sha256: str,
    manifest: ModelManifest,
    providers: tuple[str, ...],
    threads: list[int],
    batches: list[int],
    fingerprint: str,
    cache_dir: Path,
    time_budget_s: float,
    queue_delay_ms: float,
    latency_budget_ms: float | None,
    clock: Callable[[], float] = time.monotonic,
) -> TuneResult:
    import onnxruntime

    started = clock()
    key = f"autotune-{model_sha256[:16]}-{fingerprint}-ort{onnxruntime.__version__}"
    cache_file = cache_dir / f"{key}.json"
    wanted = [(thread, batch) for thread in threads for batch in batches]
    measurements = _load_cache(cache_file, wanted)
    cached = measurements is not None
    skipped = 0
    if measurements is None:
        measurements, skipped = _measure_all(
            model_path, manifest, providers, wanted, started + time_budget_s, clock
        )
        if skipped == 0:  # only a complete table may answer a later start on its own
            cache_dir.mkdir(parents=True, exist_ok=True)
            payload = {"version": CACHE_VERSION, "measurements": [asdict(m) for m in measurements]}
            cache_file.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    best, within = pick_best(measurements, queue_delay_ms, latency_budget_ms)
    return TuneResult(
        best=best,
        measurements=tuple(measurements),
        within_budget=within,
        seconds=clock() - started,
        cached=cached,
        skipped_candidates=skipped,
    )


def _load_cache(cache_file: Path, wanted: list[tuple[int, int]]) -> list[Measurement] | None:
    try:
        payload = json.loads(cache_file.read_text(encoding="utf-8"))
        if payload.get("version") != CACHE_VERSION:
            return None
        measurements = [Measurement(**item) for item in payload["measurements"]]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    have = {(m.intra_op_threads, m.batch_size) for m in measurements}
    return measurements if set(wanted) <= have else None


def _measure_all(
    model_path: Path,
    manifest: ModelManifest,
    providers: tuple[str, ...],
    wanted: list[tuple[int, int]],
    deadline: float,
    clock: Callable[[], float],
) -> tuple[list[Measurement], int]:
    import onnxruntime as ort

    offered = set(ort.get_available_providers())
    usable = [name for name in providers if name in offered] or ["CPUExecutionProvider"]
    output_names = [spec.name for spec in manifest.outputs]
    measurements: list[Measurement] = []
    done = 0
    for thread in sorted({thread for thread, _ in wanted}, reverse=True):
        if clock() >= deadline and measurements:
            break
        options = ort.SessionOptions()
        options.intra_op_num_threads = thread
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(model_path), sess_options=options, providers=usable)
        for batch in [batch for candidate, batch in wanted if candidate == thread]:
            # The first candidate is always measured, so a plan never lacks a number.
            if clock() >= deadline and measurements:
                break
            inputs = synthetic_inputs(manifest, max(batch, 1))
            session.run(output_names, inputs)  # warm-up: allocations, kernel selection
            times: list[float] = []
            run_until = min(clock() + MEASURE_S, deadline)
            while len(times) < MIN_RUNS or clock() < run_until:
                before = clock()
                session.run(output_names, inputs)
                times.append(clock() - before)
                if clock() >= deadline:
                    break
            measurements.append(_summarise(thread, batch, times))
            done += 1
        del session
    return measurements, len(wanted) - done


def _summarise(thread: int, batch: int, times: list[float]) -> Measurement:
    millis = np.asarray(times) * 1000
    p50 = float(np.percentile(millis, 50))
    return Measurement(
        intra_op_threads=thread,
        batch_size=batch,
        runs=len(times),
        batch_p50_ms=round(p50, 3),
        batch_p95_ms=round(float(np.percentile(millis, 95)), 3),
        throughput_fps=round(max(batch, 1) * 1000 / p50, 2),
    )


def pick_best(
    measurements: list[Measurement], queue_delay_ms: float, latency_budget_ms: float | None
) -> tuple[Measurement, bool]:
    """Best throughput whose worst-case request latency (queue wait + batch run) fits."""
    if latency_budget_ms is None:
        return max(measurements, key=lambda m: m.throughput_fps), True
    fitting = [
        m
        for m in measurements
        if (queue_delay_ms if m.batch_size > 1 else 0) + m.batch_p95_ms <= latency_budget_ms
    ]
    if fitting:
        return max(fitting, key=lambda m: m.throughput_fps), True
    return min(measurements, key=lambda m: m.batch_p95_ms), False


def synthetic_inputs(manifest: ModelManifest, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    inputs: dict[str, np.ndarray] = {}
    pre = manifest.preprocess
    for spec in manifest.inputs:
        dims = spec.fixed_dims()
        if dims and dims[0] == -1:
            dims[0] = batch
        if pre is not None and spec.name == pre.input and len(dims) == 4:
            spatial = (1, 2) if pre.layout == "nhwc" else (2, 3)
            dims[spatial[0]] = dims[spatial[0]] if dims[spatial[0]] > 0 else pre.height
            dims[spatial[1]] = dims[spatial[1]] if dims[spatial[1]] > 0 else pre.width
        dims = [dim if dim > 0 else 1 for dim in dims]
        if np.issubdtype(np.dtype(spec.dtype), np.integer):
            inputs[spec.name] = rng.integers(0, 255, size=dims).astype(spec.dtype)
        else:
            inputs[spec.name] = rng.standard_normal(dims).astype(spec.dtype)
    return inputs
