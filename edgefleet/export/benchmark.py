"""Runtime cost on this device: eager PyTorch vs TorchScript vs ONNX Runtime, in one run.

Every runtime gets the same inputs and the same thread count, so the differences are what
Python and the runtime choice cost here. Latency is per call; throughput is items per second.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy.typing as npt

from edgefleet.export.runners import Runner


@dataclass(frozen=True)
class BenchResult:
    runtime: str
    batch: int
    p50_ms: float
    p95_ms: float
    items_per_s: float
    calls: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_facts(threads: int) -> dict[str, Any]:
    """The machine the numbers came from: CPU model, cores, memory, library versions."""
    import onnxruntime
    import psutil
    import torch

    cpu_model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            cpu_model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in cpuinfo
                    if line.startswith("model name")
                ),
                cpu_model,
            )
    except OSError:
        pass
    return {
        "cpu": cpu_model,
        "cores_available": len(os.sched_getaffinity(0)),
        # Intra-op threads both torch and ONNX Runtime used.
        "threads": threads,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
    }


def _timed_calls(
    runner: Runner, inputs: Sequence[npt.NDArray[Any]], min_seconds: float, min_calls: int
) -> tuple[list[float], float]:
    latencies: list[float] = []
    start = time.perf_counter()
    while len(latencies) < min_calls or time.perf_counter() - start < min_seconds:
        began = time.perf_counter()
        runner(inputs)
        latencies.append(time.perf_counter() - began)
    return latencies, time.perf_counter() - start


def benchmark_runtimes(
    runners: Mapping[str, Runner],
    inputs_by_batch: Mapping[int, Sequence[npt.NDArray[Any]]],
    min_seconds: float = 2.0,
    min_calls: int = 20,
    warmup: int = 3,
    rounds: int = 3,
) -> list[BenchResult]:
    """Each runtime at each batch size on the same inputs. The measuring time is split into
    `rounds` slices that rotate through the runtimes, so a busy neighbour on a shared machine
    slows every runtime alike instead of whichever happened to run at the time."""
    results = []
    for batch, inputs in inputs_by_batch.items():
        for runner in runners.values():
            for _ in range(warmup):
                runner(inputs)
        latencies: dict[str, list[float]] = {runtime: [] for runtime in runners}
        elapsed = dict.fromkeys(runners, 0.0)
        for _ in range(rounds):
            for runtime, runner in runners.items():
                slice_latencies, slice_elapsed = _timed_calls(
                    runner, inputs, min_seconds / rounds, -(-min_calls // rounds)
                )
                latencies[runtime] += slice_latencies
                elapsed[runtime] += slice_elapsed
        for runtime in runners:
            calls = latencies[runtime]
            cuts = statistics.quantiles(calls, n=100, method="inclusive")
            results.append(
                BenchResult(
                    runtime=runtime,
                    batch=batch,
                    p50_ms=statistics.median(calls) * 1000,
                    p95_ms=cuts[94] * 1000,
                    items_per_s=batch * len(calls) / elapsed[runtime],
                    calls=len(calls),
                )
            )
    return results
