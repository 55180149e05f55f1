"""`edgefleet probe`: print this device's facts and, for a model, the plan with its reasons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from server.hardware.facts import HardwareFacts
    from server.hardware.policy import PlannerSettings
    from server.hardware.precision import GuardVerdict
    from server.models.runtime_plan import RuntimePlan


def register(app: typer.Typer) -> None:
    app.command("probe")(probe)


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
        raise typer.BadParameter(f"{where}: {first['msg']}") from None


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
        raise typer.BadParameter(f"{model} has no manifest.json and no numbered versions")
    return versions[-1]


def probe(
    model: Annotated[Path | None, typer.Option(help="Model directory (newest version) or version directory to plan.")] = None,
    policy: Annotated[str | None, typer.Option(help="latency, throughput or balanced.")] = None,
    latency_budget_ms: Annotated[float | None, typer.Option(help="End-to-end latency budget per request.")] = None,
    memory_budget_mb: Annotated[float | None, typer.Option(help="Memory the model may take.")] = None,
    autotune: Annotated[bool | None, typer.Option("--autotune/--no-autotune", help="Measure threads and batch sizes on the real model.")] = None,
    autotune_time_s: Annotated[float | None, typer.Option(help="Time bound for autotune.")] = None,
    precision: Annotated[str | None, typer.Option(help="Pin the precision: fp32, fp16 or int8.")] = None,
    intra_op_threads: Annotated[int | None, typer.Option(help="Pin intra-op threads.")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Pin the max batch size.")] = None,
    provider: Annotated[list[str] | None, typer.Option("--provider", help="Pin execution providers, in order (repeatable).")] = None,
    torch_gpu: Annotated[bool, typer.Option(help="Let the probe import torch to find CUDA GPUs when NVML is missing.")] = True,
    output: Annotated[str, typer.Option(help="table or json.")] = "table",
) -> None:  # fmt: skip
    """Print the device's hardware facts and, with --model, the runtime plan and its reasons."""
    import logging

    from server.errors import EdgeError
    from server.hardware.planner import HardwarePlanner
    from server.hardware.probe import probe_hardware
    from server.manifest import read_manifest

    if output not in ("table", "json"):
        raise typer.BadParameter("--output must be table or json")
    if policy is not None and policy not in ("latency", "throughput", "balanced"):
        raise typer.BadParameter("--policy must be latency, throughput or balanced")
    settings = planner_settings(
        policy=policy,
        latency_budget_ms=latency_budget_ms,
        memory_budget_mb=memory_budget_mb,
        autotune=autotune,
        autotune_time_s=autotune_time_s,
        precision=precision,
        intra_op_threads=intra_op_threads,
        max_batch_size=max_batch_size,
        providers=provider,
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
        typer.echo(json.dumps(payload, indent=2, sort_keys=True))
    else:
        _print_tables(facts, label, plan, error)
        if verdict is not None:
            _print_guard(verdict, settings)
    if error is not None:
        raise typer.Exit(1)


def _print_tables(
    facts: HardwareFacts, label: str | None, plan: RuntimePlan | None, error: str | None
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"Hardware facts (fingerprint {facts.fingerprint})", show_header=False)
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
    console.print(table)
    if plan is not None:
        plan_table = Table(title=f"Plan for {label}")
        plan_table.add_column("decision")
        plan_table.add_column("value")
        plan_table.add_column("why")
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
        console.print(plan_table)
    if error is not None:
        console.print(f"[red]plan refused for {label or 'model'}:[/red] {error}")


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
    from rich.console import Console
    from rich.table import Table

    from server.hardware.guard import LABELS, confident_note, format_value

    thresholds = settings.thresholds()
    accepted = verdict.passes(thresholds)
    table = Table(
        title=f"Accuracy guard: {verdict.precision} ({verdict.recipe}) vs fp32 -> "
        f"{'accepted' if accepted else 'rejected'}"
    )
    for column in ("metric", "value", "needs", "result"):
        table.add_column(column)
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
    console = Console()
    console.print(table)
    note = confident_note(verdict.metrics, thresholds)
    console.print(
        f"judged on {verdict.evaluation}{'; ' + note if note else ''}; "
        f"calibrated on {verdict.calibration}"
    )


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / (1 << 30):.2f} GiB"
