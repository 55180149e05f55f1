"""Hardware for tests: the recorded device profiles, probe sources (a fake `/` on disk) and an
NVML stand-in.

NVML is replaced because no NVIDIA GPU or driver exists on the test machine; the stand-in
answers the same calls pynvml does (or fails them the way a vanishing GPU does), so the probe's
real NVML code path runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.hardware.facts import HardwareFacts
from testkit.repositories import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "hardware"


def load_profile(name: str) -> HardwareFacts:
    """A recorded device profile (tests/fixtures/hardware/NAME.json): what the probe reported."""
    return HardwareFacts.from_dict(json.loads((FIXTURES / f"{name}.json").read_text()))


def write_root(root: Path, files: dict[str, str | None]) -> Path:
    """Lay `files` ({"/proc/cpuinfo": text}) out under `root`; None entries are left absent."""
    for absolute, text in files.items():
        if text is None:
            continue
        path = root / absolute.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


class NVMLError(Exception):
    pass


@dataclass
class FakeGpu:
    name: str
    total: int
    free: int
    capability: tuple[int, int]
    # Fail this call, as NVML does when the GPU falls off the bus mid-probe.
    fail_on: str | None = None


@dataclass
class _Memory:
    total: int
    free: int
    used: int = 0


@dataclass
class FakeNvml:
    gpus: list[FakeGpu] = field(default_factory=list)
    init_error: str | None = None
    shutdowns: int = 0

    def nvmlInit(self) -> None:
        if self.init_error:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        return self.gpus[index]

    def _check(self, gpu: FakeGpu, call: str) -> None:
        if gpu.fail_on == call:
            raise NVMLError("GPU is lost")

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> bytes:
        self._check(gpu, "name")
        return gpu.name.encode()

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu) -> _Memory:
        self._check(gpu, "memory")
        return _Memory(total=gpu.total, free=gpu.free, used=gpu.total - gpu.free)

    def nvmlDeviceGetCudaComputeCapability(self, gpu: FakeGpu) -> tuple[int, int]:
        self._check(gpu, "capability")
        return gpu.capability


def recorded_h200() -> tuple[dict[str, Any], FakeNvml]:
    """The sources captured on a real H200 machine (see the fixture), and NVML replaying them."""
    capture = json.loads((FIXTURES / "h200_recorded_sources.json").read_text())
    gpus = [
        FakeGpu(
            name=device["name"],
            total=device["total"],
            free=device["free"],
            capability=(device["cc"][0], device["cc"][1]),
        )
        for device in capture["nvml"]["devices"]
    ]
    return capture, FakeNvml(gpus=gpus)


PI4_CPUINFO = (
    "".join(
        f"processor\t: {index}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n"
        "CPU revision\t: 3\n\n"
        for index in range(4)
    )
    + "Hardware\t: BCM2835\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n"
)

PI4_MEMINFO = (
    "MemTotal:        3978148 kB\nMemFree:         2912344 kB\nMemAvailable:    3312408 kB\n"
)

ORIN_CPUINFO = "".join(
    f"processor\t: {index}\nmodel name\t: ARMv8 Processor rev 1 (v8l)\nBogoMIPS\t: 62.50\n"
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
    "asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm paca pacg\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd42\n\n"
    for index in range(6)
)
