"""`edgefleet export MODULE:FACTORY`: a PyTorch module in, a verified repository entry out.

`register` stays cheap: torch, onnx and onnxruntime are imported inside the command.
"""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from edgefleet.export.report import ExportReport

log = logging.getLogger(__name__)


class MethodChoice(StrEnum):
    auto = "auto"
    trace = "trace"
    script = "script"


class OutputFormat(StrEnum):
    text = "text"
    json = "json"


def parse_preprocess(text: str) -> dict[str, Any]:
    """`color=rgb,mean=127,std=128,layout=nchw` (a triple as `a/b/c`), or a JSON object."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise typer.BadParameter("expected a JSON object")
        return value
    fields: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE")
        if key in ("mean", "std"):
            numbers = [float(number) for number in raw.split("/")]
            fields[key] = tuple(numbers * 3 if len(numbers) == 1 else numbers)
        elif key == "size":
            height, _, width = raw.partition("x")
            fields["height"], fields["width"] = int(height), int(width or height)
        else:
            fields[key] = raw
    return fields


def _render(report: ExportReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped: rich's 80 columns would truncate the table
        console = Console(width=120)
    console.print(f"[bold]method:[/bold] {report.method} — {report.reason}")
    for finding in report.trace_findings:
        console.print(f"  trace finding: {finding}")
    table = Table(title="verification against eager PyTorch")
    for column in ("target", "example", "inputs", "output", "max abs", "max rel", "top-1", "ok"):
        table.add_column(column)
    for outcome in report.targets:
        if outcome.verification is None:
            table.add_row(outcome.target, "-", "-", "-", "-", "-", "-", "[red]no model[/red]")
            continue
        for example in outcome.verification.examples:
            shapes = " ".join("x".join(map(str, shape)) for shape in example.input_shapes)
            if example.error:
                table.add_row(
                    outcome.target, str(example.example), shapes, "-", "-", "-", "-", "[red]error"
                )
            for check in example.outputs:
                top1 = "-" if check.top1_agreement is None else f"{check.top1_agreement:.2f}"
                table.add_row(
                    outcome.target, str(example.example), shapes, check.output,
                    f"{check.max_abs_diff:.2e}", f"{check.max_rel_diff:.2e}", top1,
                    "[green]pass" if check.passed else "[red]FAIL",
                )  # fmt: skip
    console.print(table)
    if report.benchmark:
        bench = Table(title="runtime cost on this device")
        for column in ("runtime", "batch", "p50 ms", "p95 ms", "items/s"):
            bench.add_column(column, justify="right")
        for result in report.benchmark:
            bench.add_row(
                result.runtime, str(result.batch), f"{result.p50_ms:.2f}",
                f"{result.p95_ms:.2f}", f"{result.items_per_s:.1f}",
            )  # fmt: skip
        console.print(bench)
    for outcome in report.targets:
        state = "written" if outcome.written else "NOT written"
        console.print(f"{outcome.target}: {outcome.entry} {state}")


def export(
    factory: Annotated[
        str, typer.Argument(help="MODULE:FACTORY or FILE.py:FACTORY returning an nn.Module.")
    ],
    example_input: Annotated[
        list[str],
        typer.Option(
            "--example-input",
            help="SHAPE[:DTYPE] per model input, e.g. N,3,224,224 (names are dynamic dims).",
        ),
    ],
    weights: Annotated[Path | None, typer.Option(help="state_dict file to load.")] = None,
    method: Annotated[MethodChoice, typer.Option(help="auto traces, then checks.")] = (
        MethodChoice.auto
    ),
    to: Annotated[str, typer.Option(help="Targets: onnx,torchscript.")] = "onnx,torchscript",
    name: Annotated[str | None, typer.Option(help="Model name (default: factory's).")] = None,
    version: Annotated[str | None, typer.Option(help="Default: next free version.")] = None,
    input_name: Annotated[list[str] | None, typer.Option(help="Per input, in order.")] = None,
    output_name: Annotated[list[str] | None, typer.Option(help="Per output, in order.")] = None,
    preprocess: Annotated[
        str | None, typer.Option(help="e.g. color=rgb,mean=127,std=128,layout=nchw or JSON.")
    ] = None,
    labels: Annotated[Path | None, typer.Option(help="One class name per line.")] = None,
    classifier: Annotated[
        bool | None, typer.Option("--classifier/--no-classifier", help="Default: if --labels.")
    ] = None,
    repository: Annotated[Path, typer.Option(envvar="EDGEFLEET_REPOSITORY")] = Path("models"),
    atol: Annotated[float, typer.Option(help="Absolute tolerance vs eager.")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Relative tolerance vs eager.")] = 1e-3,
    min_top1: Annotated[float, typer.Option(help="Top-1 agreement needed (classifiers).")] = 1.0,
    force: Annotated[bool, typer.Option(help="Write targets that fail verification.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing version.")] = False,
    benchmark: Annotated[bool, typer.Option(help="Measure eager/TorchScript/ORT here.")] = False,
    bench_seconds: Annotated[
        float, typer.Option(help="Measuring time per runtime and batch.", min=0.0)
    ] = 2.0,
    bench_threads: Annotated[
        int | None, typer.Option(help="Intra-op threads (default: cores).", min=1)
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Planned batch size.", min=1)] = 8,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    description: Annotated[str, typer.Option()] = "",
    output: Annotated[OutputFormat, typer.Option(help="text or json.")] = OutputFormat.text,
) -> None:
    """Export a PyTorch module to TorchScript and ONNX, verify both against eager, and write
    a repository entry `edgefleet serve` loads as it is."""
    from edgefleet.export.errors import ExportError
    from edgefleet.export.examples import parse_input_spec
    from edgefleet.export.pipeline import TARGETS, ExportRequest, run_export
    from edgefleet.export.verify import Tolerance

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    targets = tuple(dict.fromkeys(part.strip() for part in to.split(",") if part.strip()))
    unknown = [target for target in targets if target not in TARGETS]
    if not targets or unknown:
        raise typer.BadParameter(f"targets must be among {', '.join(TARGETS)}", param_hint="--to")
    try:
        request = ExportRequest(
            factory=factory,
            inputs=tuple(parse_input_spec(spec) for spec in example_input),
            name=name or factory.rpartition(":")[2].replace(".", "_"),
            repository=repository,
            targets=targets,  # type: ignore[arg-type]
            version=version,
            weights=weights,
            input_names=tuple(input_name or ()),
            output_names=tuple(output_name or ()),
            method=method.value,
            preprocess=parse_preprocess(preprocess) if preprocess else None,
            labels=labels,
            classifier=classifier,
            tolerance=Tolerance(atol=atol, rtol=rtol, min_top1=min_top1),
            force=force,
            overwrite=overwrite,
            benchmark=benchmark,
            bench_seconds=bench_seconds,
            bench_threads=bench_threads,
            max_batch=max_batch,
            opset=opset,
            description=description,
        )
        report = run_export(request)
    except ExportError as exc:
        typer.echo(f"error: {exc}", err=True)
        if output is OutputFormat.json:  # scripts get an answer on stdout either way
            typer.echo(json.dumps({"error": str(exc), "kind": type(exc).__name__}))
        raise typer.Exit(2) from None
    if output is OutputFormat.json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _render(report)
    if not report.succeeded:
        for line in report.failures():
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
