"""The probe on this machine, on recorded devices (through a fake `/`), and on broken sources."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from server.hardware.facts import HardwareFacts
from server.hardware.probe import probe_hardware
from testkit.hardware import (
    FIXTURES,
    ORIN_CPUINFO,
    PI4_CPUINFO,
    PI4_MEMINFO,
    FakeGpu,
    FakeNvml,
    recorded_h200,
    write_root,
)
from testkit.repositories import ROOT

GIB = 1 << 30


def test_this_machine_gives_a_complete_serialisable_fact_set() -> None:
    facts = probe_hardware(torch_fallback=False)
    cpu = facts.cpu
    assert cpu.architecture and cpu.model
    assert cpu.logical_cores and cpu.logical_cores >= 1
    assert cpu.physical_cores and 1 <= cpu.physical_cores <= cpu.logical_cores
    assert cpu.affinity_cores and 1 <= cpu.usable_cores <= cpu.logical_cores
    assert facts.memory.total_bytes and facts.memory.available_bytes
    assert 0 < facts.memory.available_bytes <= facts.memory.total_bytes
    assert "CPUExecutionProvider" in facts.onnx_providers
    assert facts.onnxruntime_version
    assert facts.torch_installed and facts.torch_version  # the dev install has CPU torch
    # No GPU here: the probe says why instead of failing.
    assert facts.gpus == () or all(gpu.source == "nvml" for gpu in facts.gpus)
    if not facts.gpus:
        assert any(line.startswith("nvml:") for line in facts.skipped)
    # Plain JSON round trip, and the fingerprint is stable across probes.
    text = json.dumps(facts.to_dict())
    again = HardwareFacts.from_dict(json.loads(text))
    assert again == facts
    assert probe_hardware(torch_fallback=False).fingerprint == facts.fingerprint


# A fresh Python process.
@pytest.mark.system
def test_probing_never_imports_torch() -> None:
    # An ONNX-only edge server probes at start; torch must stay unloaded (seconds, 100s of MB).
    code = (
        "import sys; from server.hardware.probe import probe_hardware; "
        "facts = probe_hardware(); assert facts.torch_installed; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_raspberry_pi4_root_matches_its_recorded_profile(tmp_path: Path) -> None:
    root = write_root(
        tmp_path,
        {
            "/proc/cpuinfo": PI4_CPUINFO,
            "/proc/meminfo": PI4_MEMINFO,
            "/sys/devices/system/cpu/online": "0-3\n",
            "/sys/class/thermal/thermal_zone0/type": "cpu-thermal\n",
            "/sys/class/thermal/thermal_zone0/temp": "51600\n",
        },
    )
    facts = probe_hardware(root, machine="aarch64", affinity=lambda: 4)
    recorded = HardwareFacts.from_dict(json.loads((FIXTURES / "raspberry_pi4.json").read_text()))
    assert facts.cpu == recorded.cpu
    assert facts.memory == recorded.memory
    assert facts.thermal == recorded.thermal
    assert facts.gpus == () and facts.jetson is None
    assert not facts.cpu.has("dotprod")  # Cortex-A72 is ARMv8.0


def test_jetson_is_detected_with_its_shared_memory_gpu(tmp_path: Path) -> None:
    root = write_root(
        tmp_path,
        {
            "/proc/cpuinfo": ORIN_CPUINFO,
            "/proc/meminfo": "MemTotal:        7620628 kB\nMemAvailable:    5843204 kB\n",
            "/proc/device-tree/model": "NVIDIA Jetson Orin Nano Developer Kit\x00",
            "/etc/nv_tegra_release": "# R36 (release), REVISION: 3.0, GCID: 36191598\n",
        },
    )
    facts = probe_hardware(
        root,
        nvml=FakeNvml(init_error="NVML Shared Library Not Found"),
        machine="aarch64",
        onnx_providers=lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
    )
    assert facts.jetson is not None
    assert facts.jetson.shared_memory_bytes == 7620628 * 1024
    assert facts.jetson.l4t_release and facts.jetson.l4t_release.startswith("R36")
    (gpu,) = facts.gpus
    assert gpu.integrated and gpu.source == "jetson"
    assert gpu.compute_capability == "8.7" and gpu.fast_fp16 and gpu.fast_int8
    assert facts.cpu.model == "Cortex-A78AE" and facts.cpu.physical_cores == 6
    assert {"neon", "dotprod", "fp16"} <= set(facts.cpu.features)
    assert any("NVML Shared Library Not Found" in line for line in facts.skipped)


def test_recorded_h200_machine_probes_through_the_same_code(tmp_path: Path) -> None:
    # Captured live on an NVIDIA H200 machine (files + NVML answers); replayed here.
    capture, nvml = recorded_h200()
    root = write_root(tmp_path, capture["files"])
    facts = probe_hardware(root, nvml=nvml, machine="x86_64", affinity=lambda: 16)
    (gpu,) = facts.gpus
    assert gpu.name == "NVIDIA H200" and gpu.compute_capability == "9.0"
    assert gpu.fast_fp16 and gpu.fast_bf16 and gpu.fast_int8
    assert gpu.memory_total_bytes is not None and gpu.memory_total_bytes > 140 * GIB
    assert facts.cpu.logical_cores == 16
    assert {"avx512_vnni", "amx_int8", "avx_vnni"} <= set(facts.cpu.features)
    assert facts.memory.cgroup_limit_bytes is None  # memory.max said "max"
    assert nvml.shutdowns == 1


def test_container_quota_and_memory_limit_from_cgroup_v2(tmp_path: Path) -> None:
    root = write_root(
        tmp_path,
        {
            "/proc/self/cgroup": "0::/\n",
            "/sys/fs/cgroup/cpu.max": "200000 100000\n",
            "/sys/fs/cgroup/memory.max": f"{GIB}\n",
            "/sys/fs/cgroup/memory.current": f"{150 << 20}\n",
            "/proc/meminfo": "MemTotal:  263000000 kB\nMemAvailable: 199229440 kB\n",
            "/sys/devices/system/cpu/online": "0-127\n",
        },
    )
    facts = probe_hardware(root, machine="x86_64", affinity=lambda: 128)
    assert facts.cpu.quota_cores == 2.0
    assert facts.cpu.usable_cores == 2
    assert facts.memory.cgroup_limit_bytes == GIB
    assert facts.memory.usable_bytes == GIB - (150 << 20)


def test_cgroup_v1_quota_in_a_nested_group(tmp_path: Path) -> None:
    root = write_root(
        tmp_path,
        {
            "/proc/self/cgroup": "4:memory:/pod/a\n3:cpu,cpuacct:/pod/a\n",
            "/sys/fs/cgroup/cpu,cpuacct/pod/a/cpu.cfs_quota_us": "150000\n",
            "/sys/fs/cgroup/cpu,cpuacct/pod/a/cpu.cfs_period_us": "100000\n",
            "/sys/fs/cgroup/memory/pod/a/memory.limit_in_bytes": "536870912\n",
            "/sys/fs/cgroup/memory/pod/a/memory.usage_in_bytes": "1000\n",
        },
    )
    facts = probe_hardware(root, machine="x86_64")
    assert facts.cpu.quota_cores == 1.5 and facts.cpu.usable_cores == 1
    assert facts.memory.cgroup_limit_bytes == 512 << 20


def test_junk_and_unreadable_sources_degrade_and_are_named(tmp_path: Path) -> None:
    root = write_root(
        tmp_path,
        {
            "/proc/cpuinfo": "\x00\x01 garbage without colons\n",
            "/proc/meminfo": "MemTotal: lots\n",
            "/proc/self/cgroup": "0::/\n",
            "/sys/fs/cgroup/cpu.max": "unlimited-ish\n",
            "/sys/fs/cgroup/memory.max": "1.5G\n",
            "/sys/devices/system/cpu/online": "zero-to-three\n",
            "/sys/class/thermal/thermal_zone0/temp": "hot\n",
        },
    )
    # A directory where a file should be: reading it fails with an OSError, not a missing file.
    (root / "proc/device-tree/model").mkdir(parents=True)
    broken_gpu = FakeGpu("Tesla T4", 16 * GIB, 15 * GIB, (7, 5), fail_on="memory")
    good_gpu = FakeGpu("NVIDIA L4", 24 * GIB, 23 * GIB, (8, 9))
    facts = probe_hardware(
        root,
        nvml=FakeNvml(gpus=[broken_gpu, good_gpu]),
        machine="x86_64",
        onnx_providers=lambda: (_ for _ in ()).throw(RuntimeError("provider lookup broke")),
    )
    skipped = "\n".join(facts.skipped)
    assert "/proc/cpuinfo: no processor entries" in skipped
    assert "/proc/meminfo: no MemTotal" in skipped
    assert "cpu.max: junk" in skipped
    assert "memory.max: not a number" in skipped
    assert "/sys/devices/system/cpu/online: junk" in skipped
    assert "thermal_zone0/temp: not a number" in skipped
    assert "/proc/device-tree/model: unreadable" in skipped
    assert "gpu 0: nvml failed (GPU is lost)" in skipped
    assert "onnxruntime providers: provider lookup broke" in skipped
    # What could be read is still there.
    assert [gpu.name for gpu in facts.gpus] == ["NVIDIA L4"]
    assert facts.cpu.quota_cores is None and facts.memory.total_bytes is None
    json.dumps(facts.to_dict())


def test_an_empty_root_gives_facts_and_a_list_of_what_is_missing(tmp_path: Path) -> None:
    facts = probe_hardware(tmp_path, nvml=FakeNvml(init_error="Driver Not Loaded"))
    assert facts.cpu.architecture == "unknown"
    assert facts.cpu.usable_cores == 1
    assert "/proc/cpuinfo: missing" in facts.skipped
    assert "/proc/meminfo: missing" in facts.skipped
    assert "nvml: init failed (Driver Not Loaded)" in facts.skipped
    assert facts.fingerprint


def test_torch_fallback_finds_no_cuda_here_and_says_nothing_broke() -> None:
    # NVML is absent here; the CLI probe may ask torch instead (CPU torch: no CUDA devices).
    facts = probe_hardware(nvml=FakeNvml(init_error="NVML Shared Library Not Found"),
                           torch_fallback=True)  # fmt: skip
    assert facts.gpus == ()
    assert not any(line.startswith("torch gpu fallback") for line in facts.skipped)
    assert "nvml: init failed (NVML Shared Library Not Found)" in facts.skipped
