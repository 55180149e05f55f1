"""What confining TorchScript costs per frame: the default efficientnet_lite0_torchscript run
in this process (the old way, kept only as this baseline) vs in its confined worker (uid nobody,
Landlock, seccomp; arrays over a socket pair), same run, same threads, same inputs.

CPU per frame counts every process that works for the frame: this one, plus the worker for the
confined runs. The two take turns in short rounds so that load from other work on a shared
machine falls on both alike. Writes the `<!-- bench:torchscript-confined -->` section of
docs/benchmarks.md.

    .venv/bin/python -m bench.bench_torchscript_confined [--seconds 4] [--rounds 4]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import psutil

from bench.machine import describe, write_section
from server.manifest import read_manifest
from server.models.backends import worker_wire
from server.models.backends.base import Backend
from server.models.backends.confined_torchscript import ConfinedTorchScriptBackend
from server.models.backends.torchscript import TorchScriptBackend
from server.models.runtime_plan import ManifestPlanner
from server.settings import SandboxSettings
from testkit.repositories import BUILT_MODELS, TORCHSCRIPT_MODEL

BATCHES = (1, 8)


@dataclass
class Totals:
    frames: int = 0
    cpu_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)


def _cpu_s(processes: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in processes)


def _round(
    backend: Backend, inputs: dict[str, np.ndarray], outputs: list[str],
    processes: list[psutil.Process], seconds: float, totals: Totals,
) -> None:  # fmt: skip
    """Run back to back for `seconds`, adding frames, CPU and latencies to `totals`."""
    rows = int(next(iter(inputs.values())).shape[0])
    cpu0 = _cpu_s(processes)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        backend.run(inputs, outputs)
        totals.latencies_ms.append((time.perf_counter() - start) * 1000)
        totals.frames += rows
    totals.cpu_s += _cpu_s(processes) - cpu0


def _ipc_alone(
    inputs: dict[str, np.ndarray], reply: np.ndarray, count: int = 300
) -> tuple[float, float]:
    """The exchange alone, over the same socket pair code (worker_wire) with an echo thread
    in place of the worker: (CPU ms, p50 ms) per round trip, both ends counted."""
    ours, theirs = socket.socketpair()

    def echo() -> None:
        try:
            while True:
                worker_wire.receive(theirs)
                worker_wire.send(theirs, {"ok": True, "outputs": ["y"]}, [reply])
        except worker_wire.PeerGone:
            return

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    names = list(inputs)
    latencies = []
    cpu0 = time.process_time()
    for _ in range(count):
        start = time.perf_counter()
        worker_wire.send(ours, {"inputs": names, "outputs": ["y"]}, [inputs[n] for n in names])
        worker_wire.receive(ours)
        latencies.append((time.perf_counter() - start) * 1000)
    cpu_ms = (time.process_time() - cpu0) * 1000 / count
    ours.close()
    thread.join()
    theirs.close()
    return cpu_ms, statistics.median(latencies)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0, help="per round and side")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    machine = describe()
    version_dir = BUILT_MODELS / TORCHSCRIPT_MODEL / "1"
    manifest = read_manifest(version_dir)
    plan = ManifestPlanner().plan(version_dir, manifest)
    model_path = version_dir / plan.model_file
    outputs = [spec.name for spec in manifest.outputs]
    me = psutil.Process()

    started = time.perf_counter()
    in_process = TorchScriptBackend.in_process(model_path, manifest, plan)
    in_process_load_s = time.perf_counter() - started
    started = time.perf_counter()
    confined = ConfinedTorchScriptBackend(
        model_path, version_dir, manifest, plan, SandboxSettings()
    )
    confined_load_s = time.perf_counter() - started
    worker = psutil.Process(confined.pid)
    sides: dict[str, tuple[Backend, list[psutil.Process]]] = {
        "in-process (old)": (in_process, [me]),
        "confined worker": (confined, [me, worker]),
    }
    rng = np.random.default_rng(0)
    rows = []
    identical = []
    ipc: list[str] = []
    for batch in BATCHES:
        shape = [batch if isinstance(d, str) else d for d in manifest.inputs[0].shape]
        inputs = {manifest.inputs[0].name: rng.standard_normal(shape).astype(np.float32)}
        answers = [backend.run(inputs, outputs) for backend, _ in sides.values()]  # warm-up
        identical.append(all(np.array_equal(answers[0][n], answers[1][n]) for n in outputs))
        ipc_cpu_ms, ipc_p50 = _ipc_alone(inputs, answers[0][outputs[0]])
        ipc.append(
            f"batch {batch} ({sum(a.nbytes for a in inputs.values()) / 2**10:.0f} KiB in, "
            f"{answers[0][outputs[0]].nbytes / 2**10:.0f} KiB out): {ipc_cpu_ms:.2f} ms CPU "
            f"per round trip ({ipc_cpu_ms / batch:.2f} per frame), p50 {ipc_p50:.2f} ms"
        )
        totals = {name: Totals() for name in sides}
        for _ in range(args.rounds):
            for name, (backend, processes) in sides.items():
                _round(backend, inputs, outputs, processes, args.seconds, totals[name])
        base = totals["in-process (old)"]
        base_cpu_ms = 1000 * base.cpu_s / base.frames
        base_p50 = statistics.median(base.latencies_ms)
        for name, side in totals.items():
            cpu_ms = 1000 * side.cpu_s / side.frames
            p50 = statistics.median(side.latencies_ms)
            p95 = float(np.percentile(side.latencies_ms, 95))
            rows.append(
                f"| {batch} | {name} | {side.frames / (args.rounds * args.seconds):.1f} | "
                f"**{cpu_ms:.1f}** | {cpu_ms - base_cpu_ms:+.1f} | {p50:.1f} | {p95:.1f} | "
                f"{p50 - base_p50:+.1f} |"
            )
    same = ", ".join(
        f"batch {batch}: {'yes' if equal else 'NO'}"
        for batch, equal in zip(BATCHES, identical, strict=True)
    )
    worker_rss = worker.memory_info().rss / 2**20
    description = confined.description
    confined.close()
    in_process.close()
    body = "\n".join(
        [
            "## TorchScript confined (`bench/bench_torchscript_confined.py`)",
            "",
            f"Machine: {machine}.",
            f"Model: {TORCHSCRIPT_MODEL} ({plan.intra_op_threads} intra-op threads, random "
            "inputs), back to back. In-process is the old way (torch in the server process), "
            f"kept only as this baseline; confined is how the server runs it now: {description}. "
            "CPU per frame counts this process and, for the confined runs, the worker too "
            f"(user + system). The two take turns in {args.rounds} rounds of {args.seconds:g} s "
            "each. Latency is per call (batch).",
            "",
            "| batch | runs | frames/s | CPU ms per frame | vs in-process | p50 ms | p95 ms | p50 vs in-process |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            "The exchange alone (same socket-pair code, an echo thread for the worker, "
            f"300 round trips): {'; '.join(ipc)}.",
            "",
            "Read with care: on a shared machine whose load average is above its cores, the "
            "end-to-end rows differ by noise far larger than the exchange; the exchange alone "
            "is what confinement adds to each frame (plus the worker's memory, below).",
            "",
            f"Outputs identical (np.array_equal) in-process vs confined: {same}. "
            f"Load: in-process {in_process_load_s:.1f} s, confined worker (start, import torch, "
            f"confine, load) {confined_load_s:.1f} s; worker RSS {worker_rss:.0f} MiB.",
            "",
            "Reproduce: `.venv/bin/python -m bench.bench_torchscript_confined`.",
        ]
    )
    write_section("torchscript-confined", body)
    print(body)


if __name__ == "__main__":
    main()
