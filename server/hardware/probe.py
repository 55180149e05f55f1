"""Read the facts of this device (or of a recorded root directory) without ever crashing.

Every source is a parameter: `root` stands for `/` (so tests and recorded profiles run a fake
/proc and /sys through this same code), `nvml` is the pynvml module or None, and the onnxruntime
and affinity lookups are callables. Each reader returns what it could read and appends "what: why"
to `skipped` for the rest.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import platform
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from server.hardware.facts import (
    ARM_FEATURES,
    X86_FEATURES,
    CpuFacts,
    HardwareFacts,
    JetsonFacts,
    MemoryFacts,
    ThermalReading,
    hardware_fingerprint,
)
from server.hardware.gpu import gpu_from_torch, gpus_from_nvml, jetson_gpu, load_nvml

logger = logging.getLogger(__name__)

# Linux cpuinfo spelling -> the names the planner uses.
_ARM_FLAG_NAMES = {
    "neon": "neon",
    "asimd": "neon",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "asimdhp": "fp16",
    "fphp": "fp16",
    "bf16": "bf16",
}
# ARM CPU part numbers (implementer 0x41, Arm Ltd) -> core names, for boards whose cpuinfo has
# no model name (Raspberry Pi, Jetson).
_ARM_PARTS = {
    "0xd03": "Cortex-A53",
    "0xd04": "Cortex-A35",
    "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73",
    "0xd0a": "Cortex-A75",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1",
    "0xd0d": "Cortex-A77",
    "0xd40": "Neoverse-V1",
    "0xd41": "Cortex-A78",
    "0xd42": "Cortex-A78AE",
    "0xd49": "Neoverse-N2",
    "0xd4f": "Neoverse-V2",
}
# Values at or above this in cgroup v1 limit files mean "no limit".
_CGROUP_V1_UNLIMITED = 1 << 60

# Sentinel: find pynvml by itself.
AUTO = "auto"


def probe_hardware(
    root: Path = Path("/"),
    *,
    nvml: Any = AUTO,
    onnx_providers: Callable[[], Sequence[str]] | None = None,
    affinity: Callable[[], int] | None = None,
    machine: str | None = None,
    torch_fallback: bool = False,
) -> HardwareFacts:
    """Probe a device. Never raises: what cannot be read is listed in `skipped`.

    `root="/"` with the defaults probes this process's machine. `torch_fallback` lets the probe
    import torch to find CUDA GPUs when NVML is missing; servers leave it off so an ONNX-only
    server never imports torch.
    """
    skipped: list[str] = []
    is_live = root == Path("/")
    if affinity is None and is_live:
        affinity = _sched_affinity
    if machine is None and is_live:
        machine = platform.machine()
    cpu = _probe_cpu(root, machine, affinity, skipped)
    memory = _probe_memory(root, skipped)
    jetson = _probe_jetson(root, memory, skipped)
    thermal = _probe_thermal(root, skipped)

    if nvml == AUTO:
        nvml = load_nvml(skipped) if is_live else None
    gpus = gpus_from_nvml(nvml, skipped) if nvml is not None else []
    if not gpus and jetson is not None:
        gpus = [jetson_gpu(jetson)]
    if not gpus and torch_fallback and is_live:
        gpus = gpu_from_torch(skipped)

    providers, ort_version = _probe_onnxruntime(onnx_providers, is_live, skipped)
    torch_version = _installed_version("torch") if is_live else None
    facts = HardwareFacts(
        cpu=cpu,
        memory=memory,
        gpus=tuple(gpus),
        jetson=jetson,
        onnx_providers=tuple(providers),
        onnxruntime_version=ort_version,
        torch_installed=torch_version is not None,
        torch_version=torch_version,
        thermal=tuple(thermal),
        skipped=tuple(skipped),
    )
    return facts.model_copy(update={"fingerprint": hardware_fingerprint(facts)})


def _sched_affinity() -> int:
    return len(os.sched_getaffinity(0))


def _read(root: Path, relative: str, skipped: list[str], *, quiet: bool = False) -> str | None:
    """The text of `root/relative`, or None (noted in `skipped` unless `quiet`)."""
    path = root / relative.lstrip("/")
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        if not quiet:
            skipped.append(f"/{relative.lstrip('/')}: missing")
    except OSError as exc:
        skipped.append(f"/{relative.lstrip('/')}: unreadable ({exc.strerror or exc})")
    return None


def _int_or_none(text: str | None, what: str, skipped: list[str]) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        skipped.append(f"{what}: not a number ({text.strip()[:40]!r})")
        return None


def _cpu_range_count(text: str) -> int:
    """Count CPUs in a Linux cpu list such as "0-3,6,8-9"."""
    count = 0
    for part in text.strip().split(","):
        if "-" in part:
            low, high = part.split("-", 1)
            count += int(high) - int(low) + 1
        elif part:
            count += 1
    return count


def _parse_cpuinfo(text: str) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            continue
        key, sep, value = line.partition(":")
        if sep:
            blocks[-1][key.strip().lower()] = value.strip()
    return [block for block in blocks if block]


def _probe_cpu(
    root: Path, machine: str | None, affinity: Callable[[], int] | None, skipped: list[str]
) -> CpuFacts:
    cpuinfo = _read(root, "proc/cpuinfo", skipped)
    blocks = _parse_cpuinfo(cpuinfo) if cpuinfo else []
    processors = [block for block in blocks if "processor" in block]
    if cpuinfo is not None and not processors:
        skipped.append("/proc/cpuinfo: no processor entries")
    first = processors[0] if processors else {}
    header = next((block for block in blocks if "hardware" in block), {})

    raw_flags = set((first.get("flags") or first.get("features") or "").split())
    architecture = machine or _guess_architecture(first)
    if architecture in ("x86_64", "amd64", "i686"):
        features = tuple(name for name in X86_FEATURES if name in raw_flags)
    else:
        mapped = {_ARM_FLAG_NAMES[flag] for flag in raw_flags if flag in _ARM_FLAG_NAMES}
        if architecture == "aarch64" and raw_flags:
            mapped.add("neon")  # Advanced SIMD is mandatory on ARMv8-A
        features = tuple(name for name in ARM_FEATURES if name in mapped)

    # ARM kernels often say only "ARMv8 Processor rev 1 (v8l)"; the part number names the core.
    model = _arm_core_name(first) or first.get("model name") or header.get("hardware")
    if model is None and processors:
        skipped.append("cpu model: not in /proc/cpuinfo")

    logical: int | None = None
    online = _read(root, "sys/devices/system/cpu/online", skipped, quiet=True)
    if online is not None:
        try:
            logical = _cpu_range_count(online)
        except ValueError:
            skipped.append(f"/sys/devices/system/cpu/online: junk ({online.strip()[:40]!r})")
    if logical is None and processors:
        logical = len(processors)
    if logical is None:
        skipped.append("logical cores: neither /sys/devices/system/cpu/online nor /proc/cpuinfo")

    physical = _physical_cores(processors, architecture) or logical
    affinity_cores: int | None = None
    if affinity is not None:
        try:
            affinity_cores = affinity()
        except OSError as exc:
            skipped.append(f"cpu affinity: {exc}")
    return CpuFacts(
        architecture=architecture,
        model=model,
        physical_cores=physical,
        logical_cores=logical,
        affinity_cores=affinity_cores,
        quota_cores=_cpu_quota(root, skipped),
        features=features,
    )


def _guess_architecture(first: dict[str, str]) -> str:
    if "flags" in first:
        return "x86_64"
    if "cpu architecture" in first:
        return "aarch64" if first["cpu architecture"].strip() in ("8", "AArch64") else "armv7l"
    return "unknown"


def _arm_core_name(block: dict[str, str]) -> str | None:
    if block.get("cpu implementer", "").lower() != "0x41":
        return None
    return _ARM_PARTS.get(block.get("cpu part", "").lower())


def _physical_cores(processors: list[dict[str, str]], architecture: str) -> int | None:
    """Distinct (package, core) pairs; ARM cores have no SMT, so each processor is a core."""
    pairs = {
        (block.get("physical id", "0"), block["core id"])
        for block in processors
        if "core id" in block
    }
    if pairs:
        return len(pairs)
    if architecture.startswith(("aarch64", "arm")) and processors:
        return len(processors)
    return None


def _cgroup_paths(root: Path, controller: str, skipped: list[str]) -> list[str]:
    """Candidate cgroup directories (relative to root) for a controller, most specific first."""
    text = _read(root, "proc/self/cgroup", skipped, quiet=True) or ""
    candidates: list[str] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        path = path.strip().lstrip("/")
        if controllers == "":  # cgroup v2
            candidates.append(f"sys/fs/cgroup/{path}".rstrip("/"))
        elif controller in controllers.split(","):
            base = f"sys/fs/cgroup/{controllers}"
            candidates.append(f"{base}/{path}".rstrip("/"))
            candidates.append(base)
    candidates += ["sys/fs/cgroup", f"sys/fs/cgroup/{controller}"]
    return list(dict.fromkeys(candidates))


def _cpu_quota(root: Path, skipped: list[str]) -> float | None:
    for directory in _cgroup_paths(root, "cpu", skipped):
        text = _read(root, f"{directory}/cpu.max", skipped, quiet=True)
        if text is not None:  # cgroup v2: "max 100000" or "200000 100000"
            fields = text.split()
            if fields and fields[0] == "max":
                return None
            try:
                quota, period = int(fields[0]), int(fields[1])
            except (ValueError, IndexError):
                skipped.append(f"/{directory}/cpu.max: junk ({text.strip()[:40]!r})")
                return None
            return quota / period if period > 0 else None
        quota_text = _read(root, f"{directory}/cpu.cfs_quota_us", skipped, quiet=True)
        if quota_text is not None:  # cgroup v1
            quota_value = _int_or_none(quota_text, f"/{directory}/cpu.cfs_quota_us", skipped)
            period_value = _int_or_none(
                _read(root, f"{directory}/cpu.cfs_period_us", skipped),
                f"/{directory}/cpu.cfs_period_us",
                skipped,
            )
            if quota_value is None or quota_value <= 0 or not period_value:
                return None
            return quota_value / period_value
    return None


def _probe_memory(root: Path, skipped: list[str]) -> MemoryFacts:
    meminfo: dict[str, int] = {}
    text = _read(root, "proc/meminfo", skipped)
    for line in (text or "").splitlines():
        match = re.match(r"^(\w+):\s+(\d+)\s*kB", line)
        if match:
            meminfo[match.group(1)] = int(match.group(2)) * 1024
    if text is not None and "MemTotal" not in meminfo:
        skipped.append("/proc/meminfo: no MemTotal")
    available = meminfo.get("MemAvailable")
    if available is None and "MemFree" in meminfo:
        available = meminfo["MemFree"] + meminfo.get("Cached", 0)
    limit, usage = _memory_cgroup(root, skipped)
    return MemoryFacts(
        total_bytes=meminfo.get("MemTotal"),
        available_bytes=available,
        cgroup_limit_bytes=limit,
        cgroup_usage_bytes=usage,
    )


def _memory_cgroup(root: Path, skipped: list[str]) -> tuple[int | None, int | None]:
    for directory in _cgroup_paths(root, "memory", skipped):
        for limit_name, usage_name in (
            ("memory.max", "memory.current"),
            ("memory.limit_in_bytes", "memory.usage_in_bytes"),
        ):
            text = _read(root, f"{directory}/{limit_name}", skipped, quiet=True)
            if text is None:
                continue
            if text.strip() == "max":
                return None, None
            limit = _int_or_none(text, f"/{directory}/{limit_name}", skipped)
            if limit is None or limit >= _CGROUP_V1_UNLIMITED:
                return None, None
            usage = _int_or_none(
                _read(root, f"{directory}/{usage_name}", skipped, quiet=True),
                f"/{directory}/{usage_name}",
                skipped,
            )
            return limit, usage
    return None, None


def _probe_jetson(root: Path, memory: MemoryFacts, skipped: list[str]) -> JetsonFacts | None:
    model = (_read(root, "proc/device-tree/model", skipped, quiet=True) or "").strip("\x00 \n")
    release = _read(root, "etc/nv_tegra_release", skipped, quiet=True)
    if "jetson" not in model.lower() and release is None:
        return None
    release_line = release.splitlines()[0].lstrip("# ").strip() if release else None
    return JetsonFacts(
        model=model or "NVIDIA Jetson (unknown model)",
        shared_memory_bytes=memory.total_bytes,
        l4t_release=release_line,
    )


def _probe_thermal(root: Path, skipped: list[str]) -> list[ThermalReading]:
    base = root / "sys/class/thermal"
    try:
        zones = sorted(path for path in base.glob("thermal_zone*") if path.is_dir())
    except OSError as exc:
        skipped.append(f"/sys/class/thermal: unreadable ({exc})")
        return []
    readings: list[ThermalReading] = []
    for zone in zones:
        relative = zone.relative_to(root).as_posix()
        millidegrees = _int_or_none(
            _read(root, f"{relative}/temp", skipped), f"/{relative}/temp", skipped
        )
        if millidegrees is None:
            continue
        kind = (_read(root, f"{relative}/type", skipped, quiet=True) or "unknown").strip()
        readings.append(ThermalReading(zone=zone.name, kind=kind, celsius=millidegrees / 1000))
    return readings


def _probe_onnxruntime(
    onnx_providers: Callable[[], Sequence[str]] | None, is_live: bool, skipped: list[str]
) -> tuple[list[str], str | None]:
    if onnx_providers is not None:
        try:
            return list(onnx_providers()), _installed_version("onnxruntime") if is_live else None
        except Exception as exc:  # a provider lookup hook may fail in any way
            skipped.append(f"onnxruntime providers: {exc}")
            return [], None
    if not is_live:
        return [], None
    try:
        import onnxruntime
    except ImportError as exc:
        skipped.append(f"onnxruntime: not importable ({exc})")
        return [], None
    return list(onnxruntime.get_available_providers()), onnxruntime.__version__


def _installed_version(distribution: str) -> str | None:
    """Version of an installed package without importing it (importing torch costs seconds)."""
    if distribution in sys.modules or importlib.util.find_spec(distribution) is not None:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"
    return None
