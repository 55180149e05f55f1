"""`edgefleet probe`: print this device's facts and, for a model, the plan with its reasons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from server.hardware.facts import HardwareFacts
    from server.hardware.policy import PlannerSettings
    from server.hardware.precision import GuardVerdict
    from server.models.runtime_plan import RuntimePlan


def register(app: click.Group) -> None:
    app.add_command(probe)


def planner_settings(
    *,
    policy: str | None = None,
    latency_budget_ms: float | None = None,
    memory_budget_mb: float | None = None,
    autotune: bool | None = None,
    autotune_time_s: float | None = None,
    precision: str | None = None,
    intra_op_threads: int | None = None,
    max_batch_size: int | None = None,
    providers: list[str] | None = None,
) -> PlannerSettings:
    """PlannerSettings from command-line values; options left out fall back to EDGEFLEET_PLANNER_*.

    `precision`, `intra_op_threads`, `max_batch_size` and `providers` are pins: they win over the
    manifest and the planner. Shared by `probe` and `serve`.
    """
    from pydantic import ValidationError

    from server.hardware.policy import PlannerSettings
    from server.manifest import RuntimePins

    given: dict[str, Any] = {
        "policy": policy,
        "latency_budget_ms": latency_budget_ms,
        "memory_budget_mb": memory_budget_mb,
        "autotune": autotune,
        "autotune_time_s": autotune_time_s,
    }
    try:
        pins = RuntimePins.model_validate(
            {
                "precision": precision,
                "intra_op_threads": intra_op_threads,
                "max_batch_size": max_batch_size,
                "providers": providers or None,
            }
        )
        return PlannerSettings(
            **{key: value for key, value in given.items() if value is not None}, pins=pins
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise click.BadParameter(f"{where}: {first['msg']}") from None


def resolve_version_dir(model: Path) -> Path:
    """A version directory as given, or the newest numbered version inside a model directory."""
    from server.manifest import MANIFEST_FILENAME

    if (model / MANIFEST_FILENAME).is_file():
        return model
    versions = (
        sorted(
            (child for child in model.iterdir() if child.is_dir() and child.name.isdigit()),
            key=lambda child: int(child.name),
        )
        if model.is_dir()
        else []
    )
    if not versions:
        raise click.BadParameter(f"{model} has no manifest.json and no numbered versions")
    return versions[-1]


@click.command("probe")
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    default=None,
    help="Model directory (newest version) or version directory to plan.",
)
@click.option("--policy", default=None, help="latency, throughput or balanced.")
@click.option(
    "--latency-budget-ms", type=float, default=None, help="End-to-end latency budget per request."
)
@click.option("--memory-budget-mb", type=float, default=None, help="Memory the model may take.")
@click.option(
    "--autotune/--no-autotune",
    default=None,
    help="Measure threads and batch sizes on the real model.",
)
@click.option("--autotune-time-s", type=float, default=None, help="Time bound for autotune.")
@click.option("--precision", default=None, help="Pin the precision: fp32, fp16 or int8.")
@click.option("--intra-op-threads", type=int, default=None, help="Pin intra-op threads.")
@click.option("--max-batch-size", type=int, default=None, help="Pin the max batch size.")
@click.option("--provider", multiple=True, help="Pin execution providers, in order (repeatable).")
@click.option(
    "--torch-gpu/--no-torch-gpu",
    default=True,
    help="Let the probe import torch to find CUDA GPUs when NVML is missing.",
)
@click.option("--output", default="table", help="table or json.")
def probe(
    model: Path | None,
    policy: str | None,
    latency_budget_ms: float | None,
    memory_budget_mb: float | None,
    autotune: bool | None,
    autotune_time_s: float | None,
    precision: str | None,
    intra_op_threads: int | None,
    max_batch_size: int | None,
    provider: tuple[str, ...],
    torch_gpu: bool,
    output: str,
) -> None:
    """Print the device's hardware facts and, with --model, the runtime plan and its reasons."""
    import logging

    from server.errors import EdgeError
    from server.hardware.planner import HardwarePlanner
    from server.hardware.probe import probe_hardware
    from server.manifest import read_manifest

    if output not in ("table", "json"):
        raise click.BadParameter("--output must be table or json")
    if policy is not None and policy not in ("latency", "throughput", "balanced"):
        raise click.BadParameter("--policy must be latency, throughput or balanced")
    settings = planner_settings(
        policy=policy,
        latency_budget_ms=latency_budget_ms,
        memory_budget_mb=memory_budget_mb,
        autotune=autotune,
        autotune_time_s=autotune_time_s,
        precision=precision,
        intra_op_threads=intra_op_threads,
        max_batch_size=max_batch_size,
        providers=list(provider),
    )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    facts = probe_hardware(torch_fallback=torch_gpu)
    plan: RuntimePlan | None = None
    error: str | None = None
    label: str | None = None
    verdict: GuardVerdict | None = None
    if model is not None:
        version_dir = resolve_version_dir(model)
        planner = HardwarePlanner(settings, facts=facts)
        try:
            manifest = read_manifest(version_dir)
            label = f"{manifest.name}/{manifest.version}"
            plan = planner.plan(version_dir, manifest)
        except EdgeError as exc:
            error = str(exc)
        verdict = planner.last_verdict
    if output == "json":
        payload = {
            "facts": facts.to_dict(),
            "model": label,
            "plan": plan.to_dict() if plan else None,
            "guard": _guard_json(verdict, settings) if verdict else None,
            "error": error,
        }
        click.echo(json.dumps(payload, indent=2, sort_keys=True))
    else:
        _print_tables(facts, label, plan, error)
        if verdict is not None:
            _print_guard(verdict, settings)
    if error is not None:
        raise click.exceptions.Exit(1)


def _print_tables(
    facts: HardwareFacts, label: str | None, plan: RuntimePlan | None, error: str | None
) -> None:
    from common.text_table import TextTable

    table = TextTable(title=f"Hardware facts (fingerprint {facts.fingerprint})", header=False)
    cpu = facts.cpu
    quota = f", quota {cpu.quota_cores:g}" if cpu.quota_cores is not None else ""
    table.add_row("cpu", f"{cpu.model or '?'} ({cpu.architecture})")
    table.add_row(
        "cores",
        f"{cpu.physical_cores} physical, {cpu.logical_cores} logical, "
        f"affinity {cpu.affinity_cores}{quota} -> {cpu.usable_cores} usable",
    )
    table.add_row("isa", ", ".join(cpu.features) or "-")
    memory = facts.memory
    table.add_row(
        "memory",
        f"total {_gib(memory.total_bytes)}, available {_gib(memory.available_bytes)}, "
        f"cgroup limit {_gib(memory.cgroup_limit_bytes)}",
    )
    for gpu in facts.gpus:
        fast = [name for name, on in (("fp16", gpu.fast_fp16), ("bf16", gpu.fast_bf16),
                                      ("int8", gpu.fast_int8)) if on]  # fmt: skip
        table.add_row(
            f"gpu {gpu.index}",
            f"{gpu.name} cc {gpu.compute_capability}, {_gib(gpu.memory_free_bytes)} free of "
            f"{_gib(gpu.memory_total_bytes)}, fast {'/'.join(fast) or '-'} ({gpu.source})",
        )
    if facts.jetson:
        table.add_row("jetson", f"{facts.jetson.model}, {facts.jetson.l4t_release or ''}")
    table.add_row(
        "onnxruntime", f"{facts.onnxruntime_version}: {', '.join(facts.onnx_providers) or '-'}"
    )
    table.add_row("torch", facts.torch_version or "not installed")
    for reading in facts.thermal:
        table.add_row(f"thermal {reading.zone}", f"{reading.kind} {reading.celsius:.1f} C")
    for line in facts.skipped:
        table.add_row("skipped", line)
    click.echo(table)
    if plan is not None:
        plan_table = TextTable("decision", "value", "why", title=f"Plan for {label}")
        data = plan.to_dict()
        for key in ("backend", "model_file", "providers", "precision", "intra_op_threads",
                    "inter_op_threads", "max_batch_size", "max_queue_delay_us",
                    "max_queue_size", "instance_count"):  # fmt: skip
            value = data[key]
            shown = ", ".join(value) if isinstance(value, list) else str(value)
            pinned = " (pinned)" if key in plan.pinned else ""
            plan_table.add_row(key, shown + pinned, plan.reasons.get(key, ""))
        for key in ("memory", "autotune"):
            if key in plan.reasons:
                plan_table.add_row(key, "", plan.reasons[key])
        click.echo(plan_table)
    if error is not None:
        click.echo(f"plan refused for {label or 'model'}: {error}")


def _guard_json(verdict: GuardVerdict, settings: PlannerSettings) -> dict[str, Any]:
    thresholds = settings.thresholds()
    return {
        "precision": verdict.precision,
        "recipe": verdict.recipe,
        "accepted": verdict.passes(thresholds),
        "checks": [
            {
                "metric": c.metric,
                "value": c.value,
                "op": c.op,
                "threshold": c.threshold,
                "gating": c.gating,
                "passed": c.passed,
            }
            for c in verdict.checks(thresholds)
        ],  # fmt: skip
        "metrics": verdict.metrics,
        "calibration": verdict.calibration,
        "evaluation": verdict.evaluation,
        "speed_ms": verdict.speed_ms,
    }


def _print_guard(verdict: GuardVerdict, settings: PlannerSettings) -> None:
    """The accuracy guard's verdict: one row per metric, its threshold and the result."""
    from common.text_table import TextTable
    from server.hardware.guard import LABELS, confident_note, format_value

    thresholds = settings.thresholds()
    accepted = verdict.passes(thresholds)
    table = TextTable(
        "metric", "value", "needs", "result",
        title=f"Accuracy guard: {verdict.precision} ({verdict.recipe}) vs fp32 -> "
        f"{'accepted' if accepted else 'rejected'}",
    )  # fmt: skip
    for check in verdict.checks(thresholds):
        needs = f"{check.op} {format_value(check.metric, check.threshold)}" if check.gating else ""
        result = ("ok" if check.passed else "FAILS") if check.gating else "reported"
        table.add_row(
            LABELS.get(check.metric, check.metric),
            format_value(check.metric, check.value),
            needs,
            result,
        )
    if verdict.speed_ms:
        table.add_row(
            "batch-1 ms (fp32 / candidate)",
            f"{verdict.speed_ms.get('fp32', 0):.1f} / {verdict.speed_ms.get('candidate', 0):.1f}",
            "",
            "reported",
        )
    click.echo(table)
    note = confident_note(verdict.metrics, thresholds)
    click.echo(
        f"judged on {verdict.evaluation}{'; ' + note if note else ''}; "
        f"calibrated on {verdict.calibration}"
    )


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / (1 << 30):.2f} GiB"
