"""What the probe found on a device: facts only, no decisions.

Every part is optional because every source may be missing; `skipped` says what could not be
read and why. Facts are plain JSON (`to_dict`/`from_dict`) so recorded profiles, the planner's
tests and the fleet agent's reports all use the same shape.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# The CPU features the planner cares about, as the probe names them (Linux cpuinfo spelling is
# mapped onto these in the probe).
X86_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
ARM_FEATURES = ("neon", "dotprod", "i8mm", "fp16", "bf16")
# Instructions that make int8 matrix products faster than fp32 ones.
INT8_DOT_FEATURES = ("avx512_vnni", "avx_vnni", "amx_int8", "dotprod", "i8mm")


class _Fact(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CpuFacts(_Fact):
    architecture: str
    model: str | None = None
    physical_cores: int | None = None
    logical_cores: int | None = None
    # CPUs this process may run on (sched affinity); None when not probing this process.
    affinity_cores: int | None = None
    # The cgroup CPU quota in cores (cpu.max / cfs_quota_us); None means unlimited.
    quota_cores: float | None = None
    features: tuple[str, ...] = ()

    @property
    def usable_cores(self) -> int:
        """CPUs work may run on: the tightest of logical cores, affinity and the cgroup quota."""
        cores = self._scheduled_cpus()
        if self.quota_cores is not None:
            cores = min(cores, max(1, math.floor(self.quota_cores)))
        return max(1, cores)

    @property
    def compute_cores(self) -> int:
        """Usable cores without hyperthread siblings: one intra-op thread per real core.

        Siblings are dropped from the CPUs the scheduler offers; a cgroup quota then caps the
        result, since a quota limits CPU time whichever siblings run it.
        """
        cores = self._scheduled_cpus()
        if self.physical_cores and self.logical_cores and self.logical_cores > self.physical_cores:
            cores = max(1, cores * self.physical_cores // self.logical_cores)
        if self.quota_cores is not None:
            cores = min(cores, max(1, math.floor(self.quota_cores)))
        return max(1, cores)

    def _scheduled_cpus(self) -> int:
        candidates = [
            value for value in (self.logical_cores, self.affinity_cores) if value is not None
        ]
        return min(candidates) if candidates else 1

    def has(self, feature: str) -> bool:
        return feature in self.features


class MemoryFacts(_Fact):
    total_bytes: int | None = None
    available_bytes: int | None = None
    # cgroup memory limit (memory.max / memory.limit_in_bytes); None means unlimited.
    cgroup_limit_bytes: int | None = None
    cgroup_usage_bytes: int | None = None

    @property
    def usable_bytes(self) -> int | None:
        """What a new model may still take: available memory, capped by the cgroup headroom."""
        candidates: list[int] = []
        if self.available_bytes is not None:
            candidates.append(self.available_bytes)
        if self.cgroup_limit_bytes is not None:
            candidates.append(self.cgroup_limit_bytes - (self.cgroup_usage_bytes or 0))
        return max(0, min(candidates)) if candidates else None


class GpuFacts(_Fact):
    index: int
    name: str
    # "nvml", "torch" or "jetson": where these facts came from.
    source: str
    memory_total_bytes: int | None = None
    memory_free_bytes: int | None = None
    # "8.6"; None when the source cannot tell.
    compute_capability: str | None = None
    # Tensor-core throughput for these precisions (from the compute capability).
    fast_fp16: bool = False
    fast_bf16: bool = False
    fast_int8: bool = False
    # Jetson and other integrated GPUs share system memory.
    integrated: bool = False


class JetsonFacts(_Fact):
    model: str
    # CPU and GPU share this memory.
    shared_memory_bytes: int | None = None
    l4t_release: str | None = None


class ThermalReading(_Fact):
    zone: str
    kind: str
    celsius: float


class HardwareFacts(_Fact):
    cpu: CpuFacts
    memory: MemoryFacts = MemoryFacts()
    gpus: tuple[GpuFacts, ...] = ()
    jetson: JetsonFacts | None = None
    onnx_providers: tuple[str, ...] = ()
    onnxruntime_version: str | None = None
    torch_installed: bool = False
    torch_version: str | None = None
    # Resident memory of a confined TorchScript worker before its model, as the first worker
    # this server started measured it (HardwarePlanner.observe_process); None until then.
    torch_worker_bytes: int | None = None
    thermal: tuple[ThermalReading, ...] = ()
    # "what: why" for every source that was missing, unreadable or made no sense.
    skipped: tuple[str, ...] = Field(default=())
    fingerprint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HardwareFacts:
        facts = cls.model_validate(data)
        if not facts.fingerprint:
            facts = facts.model_copy(update={"fingerprint": hardware_fingerprint(facts)})
        return facts

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @property
    def gpu(self) -> GpuFacts | None:
        """The first GPU, the one the planner uses."""
        return self.gpus[0] if self.gpus else None


def hardware_fingerprint(facts: HardwareFacts) -> str:
    """A stable id of the hardware: the same board gives the same id across reboots and load.

    Only things that do not change while a device runs go in: no free memory, temperatures or
    software versions (autotune caches add the runtime version to their own key).
    """
    gib = 1 << 30
    total = facts.memory.total_bytes
    stable = {
        "arch": facts.cpu.architecture,
        "cpu": facts.cpu.model,
        "physical": facts.cpu.physical_cores,
        "logical": facts.cpu.logical_cores,
        "quota": facts.cpu.quota_cores,
        "features": sorted(facts.cpu.features),
        "memory_gib": round(total / gib) if total else None,
        "cgroup_memory": facts.memory.cgroup_limit_bytes,
        "gpus": [
            [gpu.name, gpu.compute_capability, round((gpu.memory_total_bytes or 0) / gib)]
            for gpu in facts.gpus
        ],
        "jetson": facts.jetson.model if facts.jetson else None,
    }
    text = json.dumps(stable, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
