"""Export benchmark: eager PyTorch vs TorchScript vs ONNX Runtime, in one run, on this machine.

For EfficientNet-Lite0 (traced) and the control-flow module (scripted: a recurrent loop over a
variable-length sequence), `edgefleet export --benchmark` measures every runtime at batch 1 and
batch 8 on the same inputs with the same thread count; eager PyTorch is the baseline. The
figures and the machine go into the `<!-- bench:export -->` section of docs/benchmarks.md.

    .venv/bin/python -m bench.bench_export [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from bench.machine import describe, write_section
from edgefleet.export.examples import parse_input_spec
from edgefleet.export.pipeline import ExportRequest, run_export
from edgefleet.export.report import ExportReport
from testkit.repositories import ROOT

DOC = ROOT / "docs" / "benchmarks.md"
CONTROL_FLOW = ROOT / "testkit" / "export_samples" / "control_flow.py"

CASES = [
    ("EfficientNet-Lite0", "edgefleet.export.zoo:efficientnet_lite0", "N,3,224,224"),
    ("Control-flow module (GRU-style loop + value branch, L=3)",
     f"{CONTROL_FLOW}:gated_recurrent_head", "N,L,4"),
]  # fmt: skip


def run_case(
    factory: str, shape: str, seconds: float, threads: int, repository: Path
) -> ExportReport:
    request = ExportRequest(
        factory=factory,
        inputs=(parse_input_spec(shape),),
        name=factory.rpartition(":")[2],
        repository=repository,
        overwrite=True,
        benchmark=True,
        bench_seconds=seconds,
        bench_threads=threads,
        max_batch=8,
    )
    report = run_export(request)
    if not report.succeeded:
        raise SystemExit(f"{factory}: export failed: {report.failures()}")
    return report


def ms(value: float) -> str:
    """Milliseconds with three significant digits below 1 ms, where the small module lives."""
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def table(report: ExportReport) -> list[str]:
    """Mean throughput counts every stall a busy neighbour caused; the p50 speed-up over eager
    is the robust comparison on a shared machine, so both are shown."""
    eager = {row.batch: row for row in report.benchmark if row.runtime == "eager"}
    lines = [
        "| runtime | batch | p50 ms | p95 ms | items/s (mean) | p50 speed-up vs eager |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in report.benchmark:
        speedup = eager[row.batch].p50_ms / row.p50_ms
        lines.append(
            f"| {row.runtime} | {row.batch} | {ms(row.p50_ms)} | {ms(row.p95_ms)} | "
            f"{row.items_per_s:.1f} | {speedup:.2f}x |"
        )
    return lines


def findings(results: list[tuple[str, ExportReport]]) -> list[str]:
    """One line per model and thread count: what TorchScript and ONNX Runtime save over eager
    at p50, and how eager and ONNX Runtime scale from 1 thread to all cores."""
    p50: dict[tuple[str, int, str, int], float] = {}
    for title, report in results:
        threads = int((report.device or {}).get("threads", 0))
        for row in report.benchmark:
            p50[(title, threads, row.runtime, row.batch)] = row.p50_ms
    lines = []
    for title, threads, _, batch in sorted(k for k in p50 if k[2] == "eager"):
        eager = p50[(title, threads, "eager", batch)]
        parts = [
            f"{runtime} {eager / p50[(title, threads, runtime, batch)]:.2f}x"
            for runtime in ("torchscript", "onnx")
            if (title, threads, runtime, batch) in p50
        ]
        lines.append(
            f"- {title}, {threads} thread(s), batch {batch}: eager p50 {ms(eager)} ms; "
            f"speed-up over eager: {', '.join(parts)}."
        )
    thread_counts = sorted({key[1] for key in p50})
    if len(thread_counts) > 1:
        low, high = thread_counts[0], thread_counts[-1]
        for title in dict.fromkeys(title for title, _ in results):
            for runtime in ("eager", "onnx"):
                one, many = p50.get((title, low, runtime, 1)), p50.get((title, high, runtime, 1))
                if one and many:
                    lines.append(
                        f"- {title}, {runtime}, batch 1: p50 {ms(one)} ms with {low} thread, "
                        f"{ms(many)} ms with {high} ({one / many:.2f}x from more threads)."
                    )
    return lines


def section(results: list[tuple[str, ExportReport]], seconds: float, machine: str) -> str:
    device = results[0][1].device or {}
    load_after = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    lines = [
        "## export: eager PyTorch vs TorchScript vs ONNX Runtime (`bench/bench_export.py`)",
        "",
        f"Machine: {machine}; load average at the end {load_after}; torch {device.get('torch')}.",
        "",
        "Method: `edgefleet export --benchmark --bench-threads T` for T = 1 and T = all cores; "
        f"each runtime and batch size runs 3 warm-up calls, then at least {seconds:g} s and 20 "
        "calls on the same random inputs, in 3 slices that rotate through the runtimes so "
        "background load hits all alike. torch and ONNX Runtime use the same T intra-op "
        "threads. Eager PyTorch (`inference_mode`) is the baseline; TorchScript and ONNX are "
        "the files written to the repository. The machine is shared with other engineers' "
        "builds and benchmarks, so absolute figures are noisy (see p95); the p50 ratios "
        "within one table are the finding.",
        "",
    ]
    for title, report in results:
        threads = (report.device or {}).get("threads")
        lines += [
            f"### {title}, {threads} thread(s): {report.method}",
            "",
            f"Why {report.method}: {report.reason}",
            "",
            *table(report),
            "",
        ]
    lines += ["### Findings (computed from the tables above)", "", *findings(results), ""]
    lines.append("Reproduce: `.venv/bin/python -m bench.bench_export` (or `make bench`).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="per runtime and batch")
    args = parser.parse_args()
    machine = describe()
    cores = len(os.sched_getaffinity(0))
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for title, factory, shape in CASES:
            for threads in sorted({1, cores}):
                report = run_case(factory, shape, args.seconds, threads, Path(scratch))
                results.append((title, report))
                print(f"## {title}, {threads} thread(s) ({report.method})")
                print("\n".join(table(report)))
    write_section("export", section(results, args.seconds, machine))
    print(f"wrote the export section of {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
