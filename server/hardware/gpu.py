"""NVIDIA GPU facts: NVML first, torch as a fallback, and Jetson's integrated GPU.

A GPU may vanish mid-probe and NVML may be missing or half-broken; each failure becomes a
`skipped` line and the GPUs that could be read are still reported.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Any

from server.hardware.facts import GpuFacts, JetsonFacts

logger = logging.getLogger(__name__)

# Jetson modules -> GPU compute capability (NVML is absent on most JetPack releases).
_JETSON_CAPABILITY = {
    "orin": "8.7",
    "xavier": "7.2",
    "tx2": "6.2",
    "nano": "5.3",
    "tx1": "5.3",
}


def precision_speeds(capability: str | None) -> dict[str, bool]:
    """Which reduced precisions run fast on a compute capability.

    fp16: tensor cores from Volta (7.0), plus the double-rate fp16 of 5.3/6.0/6.2;
    bf16: Ampere (8.0) and newer; int8: tensor-core int8 from Xavier/Turing (7.2).
    """
    if capability is None:
        return {"fast_fp16": False, "fast_bf16": False, "fast_int8": False}
    try:
        major, minor = (int(part) for part in capability.split(".", 1))
    except ValueError:
        return {"fast_fp16": False, "fast_bf16": False, "fast_int8": False}
    value = (major, minor)
    return {
        "fast_fp16": value >= (7, 0) or value in ((5, 3), (6, 0), (6, 2)),
        "fast_bf16": value >= (8, 0),
        "fast_int8": value >= (7, 2),
    }


# NVIDIA's management library, as pynvml loads it on Linux.
NVML_LIBRARY = "libnvidia-ml.so.1"


def load_nvml(skipped: list[str]) -> Any:
    """The pynvml module, or None (noted in `skipped`).

    Without NVIDIA's driver library there is no GPU for NVML to report, and pynvml's 1.9 MB of
    Python objects would stay resident in every CPU-only server for nothing: it is imported
    only once the library it wraps loads (the name pynvml itself loads on Linux)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(NVML_LIBRARY)
        except OSError:
            skipped.append(f"nvml: {NVML_LIBRARY} not found (no NVIDIA driver)")
            return None
    try:
        import pynvml
    except ImportError:
        skipped.append("nvml: nvidia-ml-py is not installed")
        return None
    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gpus_from_nvml(nvml: Any, skipped: list[str]) -> list[GpuFacts]:
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        skipped.append(f"nvml: init failed ({_text(exc) or type(exc).__name__})")
        return []
    gpus: list[GpuFacts] = []
    try:
        count = int(nvml.nvmlDeviceGetCount())
        for index in range(count):
            try:
                gpus.append(_nvml_gpu(nvml, index))
            except Exception as exc:  # a GPU that fell off the bus mid-probe
                skipped.append(f"gpu {index}: nvml failed ({_text(exc) or type(exc).__name__})")
    except Exception as exc:
        skipped.append(f"nvml: device count failed ({_text(exc) or type(exc).__name__})")
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception as exc:
            logger.debug("nvmlShutdown failed: %s", exc)
    return gpus


def _nvml_gpu(nvml: Any, index: int) -> GpuFacts:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = _text(nvml.nvmlDeviceGetName(handle))
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    capability = f"{major}.{minor}"
    return GpuFacts(
        index=index,
        name=name,
        source="nvml",
        memory_total_bytes=int(memory.total),
        memory_free_bytes=int(memory.free),
        compute_capability=capability,
        **precision_speeds(capability),
    )


def jetson_gpu(jetson: JetsonFacts) -> GpuFacts:
    """Jetson's integrated GPU: it has no memory of its own, it shares system memory."""
    lowered = jetson.model.lower()
    capability = next((value for key, value in _JETSON_CAPABILITY.items() if key in lowered), None)
    return GpuFacts(
        index=0,
        name=f"{jetson.model} integrated GPU",
        source="jetson",
        memory_total_bytes=jetson.shared_memory_bytes,
        compute_capability=capability,
        integrated=True,
        **precision_speeds(capability),
    )


def gpu_from_torch(skipped: list[str]) -> list[GpuFacts]:
    """CUDA GPUs as torch sees them; imports torch, so only the CLI probe asks for it."""
    try:
        import torch
    except ImportError:
        skipped.append("torch gpu fallback: torch is not installed")
        return []
    try:
        if not torch.cuda.is_available():
            return []
        gpus: list[GpuFacts] = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            free, total = torch.cuda.mem_get_info(index)
            capability = f"{props.major}.{props.minor}"
            gpus.append(
                GpuFacts(
                    index=index,
                    name=props.name,
                    source="torch",
                    memory_total_bytes=int(total),
                    memory_free_bytes=int(free),
                    compute_capability=capability,
                    **precision_speeds(capability),
                )
            )
        return gpus
    except Exception as exc:  # CUDA driver errors surface as RuntimeError and others
        skipped.append(f"torch gpu fallback: {exc}")
        return []
