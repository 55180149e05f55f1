"""Hardware planner benchmarks on this machine, EfficientNet-Lite0, all in one run:

1. the accuracy guard per int8 recipe (and two deliberately broken quantisations): every metric
   on the evaluation views, the verdict, and speed at batch 1 and at the planned batch;
2. the naive plan (batch 1, onnxruntime's default threads) vs the planner's default plan vs
   the autotuned plan, each run through the real backend (`load_backend`) under saturation.

Writes the `<!-- bench:planner -->` section of docs/benchmarks.md.

    .venv/bin/python -m bench.bench_planner [--seconds 4] [--autotune-s 20]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.machine import describe, write_section
from server.hardware.autotune import synthetic_inputs
from server.hardware.calibration import GuardInputs, constant_calibration, guard_inputs
from server.hardware.guard import LABELS, confident_note, format_value
from server.hardware.planner import HardwarePlanner
from server.hardware.policy import PlannerSettings
from server.hardware.precision import RECIPES, Conversion, convert_with_guard
from server.hardware.probe import probe_hardware
from server.manifest import ModelManifest, read_manifest
from server.models.backends.base import Backend
from server.models.backends.factory import load_backend
from server.models.runtime_plan import RuntimePlan
from server.settings import SandboxSettings
from testkit.repositories import BUILT_MODELS, copy_model

MODEL = "efficientnet_lite0"


def measure(
    version_dir: Path,
    manifest: ModelManifest,
    plans: list[RuntimePlan],
    seconds: float,
    rounds: int = 6,
) -> list[dict[str, float]]:
    """Saturated runs of each plan's batch through the real backend: frames/s, batch latency.

    The plans take turns in short rounds, so load from other work on a shared machine falls on
    all of them alike instead of on whichever ran at a bad moment.
    """
    outputs = [spec.name for spec in manifest.outputs]
    loaded: list[tuple[Backend, dict[str, np.ndarray], list[float]]] = []
    for plan in plans:
        backend = load_backend(version_dir, manifest, plan, SandboxSettings())
        inputs = synthetic_inputs(manifest, max(plan.max_batch_size, 1))
        for _ in range(3):
            backend.run(inputs, outputs)
        loaded.append((backend, inputs, []))
    for _ in range(rounds):
        for backend, inputs, times in loaded:
            deadline = time.perf_counter() + seconds / rounds
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                backend.run(inputs, outputs)
                times.append(time.perf_counter() - started)
    results = []
    for plan, (backend, _inputs, times) in zip(plans, loaded, strict=True):
        backend.close()
        batch = max(plan.max_batch_size, 1)
        millis = np.asarray(times) * 1000
        results.append(
            {
                "batch": batch,
                "p50": float(np.percentile(millis, 50)),
                "p95": float(np.percentile(millis, 95)),
                "fps": batch * len(times) / float(np.sum(times)),
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per row")
    parser.add_argument("--autotune-s", type=float, default=20.0, help="autotune time bound")
    args = parser.parse_args()
    machine = describe()
    facts = probe_hardware()
    workdir = Path(tempfile.mkdtemp(prefix="bench-planner-"))
    try:
        version_dir = copy_model(BUILT_MODELS, MODEL, workdir)
        manifest = read_manifest(version_dir)
        cache = workdir / "cache"
        threads = facts.cpu.compute_cores

        # 1. The guard per recipe. Each conversion is kept (accepted or not) so it can be timed:
        # thresholds of 0 admit everything; the verdict column applies the real defaults.
        inputs = guard_inputs(manifest, None)
        settings = PlannerSettings(cache_dir=cache)
        thresholds = settings.thresholds()
        keep_all = replace(
            thresholds, min_top1_confident=0.0, min_top5=0.0, max_kl_mean=float("inf")
        )
        candidates = [
            (name, RECIPES[name].description, inputs) for name in ("qdq", "qdq-fp32-ends", "qoperator")
        ] + [
            ("qdq", "broken: calibrated on constant grey frames",
             GuardInputs(constant_calibration(manifest), inputs.evaluation)),
            ("int4-per-tensor", RECIPES["int4-per-tensor"].description, inputs),
        ]  # fmt: skip
        conversions: list[tuple[str, str, Conversion, float]] = []
        for index, (recipe, description, chosen_inputs) in enumerate(candidates):
            started = time.perf_counter()
            conversion = convert_with_guard(
                model_path=version_dir / manifest.model_file,
                model_sha256=manifest.files[manifest.model_file],
                manifest=manifest,
                precision="int8",
                inputs=chosen_inputs,
                cache_dir=cache / f"recipe-{index}",
                key=b"bench" * 8,
                providers=("CPUExecutionProvider",),
                thresholds=keep_all,
                fingerprint=facts.fingerprint,
                recipe=recipe,
            )
            conversions.append((recipe, description, conversion, time.perf_counter() - started))
        base = RuntimePlan(
            backend="onnx",
            model_file=manifest.model_file,
            providers=("CPUExecutionProvider",),
            precision="fp32",
            intra_op_threads=threads,
            inter_op_threads=1,
            max_batch_size=1,
            max_queue_delay_us=0,
            max_queue_size=128,
        )
        planned_batch = max(
            HardwarePlanner(settings, facts=facts, background=True)
            .plan(version_dir, manifest)
            .max_batch_size,
            1,
        )
        timed = [base] + [
            replace(base, precision="int8", model_file=str(conversion.path))
            for _, _, conversion, _ in conversions
        ]
        batch_plans = [replace(plan, max_batch_size=batch) for plan in timed
                       for batch in (1, planned_batch)]  # fmt: skip
        speeds = measure(version_dir, manifest, batch_plans, args.seconds)
        speed_rows = [speeds[index : index + 2] for index in range(0, len(speeds), 2)]

        # 2. naive vs default plan vs autotuned plan, measured back to back.
        naive = replace(base, intra_op_threads=0)  # 0: onnxruntime picks its default
        default_plan = HardwarePlanner(PlannerSettings(cache_dir=cache), facts=facts).plan(
            version_dir, manifest
        )
        started = time.perf_counter()
        tuned_plan = HardwarePlanner(
            PlannerSettings(cache_dir=cache, autotune=True, autotune_time_s=args.autotune_s),
            facts=facts,
        ).plan(version_dir, manifest)
        tune_s = time.perf_counter() - started
        started = time.perf_counter()
        HardwarePlanner(
            PlannerSettings(cache_dir=cache, autotune=True, autotune_time_s=args.autotune_s),
            facts=facts,
        ).plan(version_dir, manifest)
        cached_tune_s = time.perf_counter() - started
        labelled = [
            ("naive: batch 1, onnxruntime default threads", naive),
            ("planner default (balanced)", default_plan),
            ("planner + autotune", tuned_plan),
        ]
        plan_results = measure(version_dir, manifest, [plan for _, plan in labelled], args.seconds)
        plan_rows = [
            (label, plan, result)
            for (label, plan), result in zip(labelled, plan_results, strict=True)
        ]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    fp32_speed = speed_rows[0]
    checks = conversions[0][2].verdict.checks(thresholds)
    columns = [c.metric for c in checks]
    gates = "; ".join(
        f"{LABELS[c.metric]} {c.op} {format_value(c.metric, c.threshold)}"
        for c in checks
        if c.gating
    )
    lines = [
        "## Hardware planner (`bench/bench_planner.py`)",
        "",
        f"Machine: {machine}. Probe: {facts.cpu.model}, {facts.cpu.usable_cores} usable cores, "
        f"ISA {', '.join(facts.cpu.features) or '-'}, fingerprint {facts.fingerprint}.",
        "Model: EfficientNet-Lite0 ONNX. Speed rows run the real backend (`load_backend`) on "
        f"synthetic 224x224 inputs for {args.seconds:g} s each under saturation; the rows of a "
        "table take turns in 6 short rounds in one process, so the shared machine's load falls "
        "on all of them alike: compare ratios within a table, not with other runs.",
        "",
        "### The accuracy guard per int8 recipe",
        "",
        f"Calibration: {inputs.calibration.source}; evaluation: {inputs.evaluation.source} "
        f"({confident_note(conversions[0][2].verdict.metrics, thresholds)}). Default "
        f"thresholds: {gates}.",
        "",
        "| recipe | " + " | ".join(LABELS[m] for m in columns) + " | verdict | convert+guard s "
        f"| batch 1 ms | vs fp32 | batch {planned_batch} frames/s | vs fp32 |",
        "|---|" + "---:|" * len(columns) + "---|---:|---:|---:|---:|---:|",
        f"| fp32 (reference) |{' |' * len(columns)} | | {fp32_speed[0]['p50']:.2f} | 1.00x "
        f"| {fp32_speed[1]['fps']:.1f} | 1.00x |",
    ]
    for (recipe, description, conversion, seconds), speed in zip(
        conversions, speed_rows[1:], strict=True
    ):
        verdict = conversion.verdict
        values = " | ".join(format_value(m, verdict.metrics[m]) for m in columns)
        accepted = "**accepted**" if verdict.passes(thresholds) else "rejected"
        lines.append(
            f"| {recipe}: {description} | {values} | {accepted} | {seconds:.0f} | "
            f"{speed[0]['p50']:.2f} | {fp32_speed[0]['p50'] / speed[0]['p50']:.2f}x | "
            f"{speed[1]['fps']:.1f} | {speed[1]['fps'] / fp32_speed[1]['fps']:.2f}x |"
        )
    naive_fps = plan_rows[0][2]["fps"]
    lines += [
        "",
        "### Plans: naive vs planner default vs autotuned",
        "",
        f"Autotune (bound {args.autotune_s:g} s): {tune_s:.1f} s for the first plan, "
        f"{cached_tune_s:.2f} s for the next (cached by model sha256, fingerprint, onnxruntime).",
        "",
        "| plan | precision | threads | batch | batch p50 ms | batch p95 ms | frames/s "
        "| vs naive |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, plan, result in plan_rows:
        threads_shown = plan.intra_op_threads or "default"
        lines.append(
            f"| {label} | {plan.precision} | {threads_shown} | {int(result['batch'])} | "
            f"{result['p50']:.2f} | {result['p95']:.2f} | {result['fps']:.1f} | "
            f"{result['fps'] / naive_fps:.2f}x |"
        )
    lines += ["", "Planner reasons (autotuned plan):", ""]
    lines += [f"- {key}: {reason}" for key, reason in tuned_plan.reasons.items()]
    write_section("planner", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
