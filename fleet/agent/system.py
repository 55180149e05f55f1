"""Device vitals for telemetry: CPU, memory, temperature, and the GPU when NVML finds one."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import psutil


@dataclass(frozen=True)
class SystemSample:
    cpu_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_c: float
    has_gpu: bool = False
    gpu_utilization_percent: float = 0.0
    gpu_memory_used_bytes: int = 0


class SystemSampler:
    """Blocking (NVML, sensors): call it off the event loop."""

    def __init__(self) -> None:
        self._gpu: Any = None
        with contextlib.suppress(Exception):  # no NVML library or no GPU: the common edge case
            import pynvml

            pynvml.nvmlInit()
            if pynvml.nvmlDeviceGetCount() > 0:
                self._gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
        # The first cpu_percent call only primes the counter.
        psutil.cpu_percent(interval=None)

    def sample(self) -> SystemSample:
        memory = psutil.virtual_memory()
        sample = SystemSample(
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_used_bytes=memory.total - memory.available,
            memory_total_bytes=memory.total,
            temperature_c=_temperature(),
        )
        if self._gpu is None:
            return sample
        import pynvml

        try:
            utilization = pynvml.nvmlDeviceGetUtilizationRates(self._gpu)
            memory_info = pynvml.nvmlDeviceGetMemoryInfo(self._gpu)
        except pynvml.NVMLError:
            return sample
        return SystemSample(
            cpu_percent=sample.cpu_percent,
            memory_used_bytes=sample.memory_used_bytes,
            memory_total_bytes=sample.memory_total_bytes,
            temperature_c=sample.temperature_c,
            has_gpu=True,
            gpu_utilization_percent=float(utilization.gpu),
            gpu_memory_used_bytes=int(memory_info.used),
        )


def _temperature() -> float:
    reader = getattr(psutil, "sensors_temperatures", None)
    if reader is None:
        return math.nan
    try:
        sensors = reader()
    except OSError:
        return math.nan
    readings = [entry.current for entries in sensors.values() for entry in entries]
    return max(readings) if readings else math.nan
