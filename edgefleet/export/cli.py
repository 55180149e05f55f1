"""`edgefleet export MODULE:FACTORY`: a PyTorch module in, a verified repository entry out.

`register` stays cheap: torch, onnx and onnxruntime are imported inside the command.
"""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

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
            raise click.BadParameter(f"not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise click.BadParameter("expected a JSON object")
        return value
    fields: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE")
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
    from common.text_table import TextTable

    click.echo(f"method: {report.method} — {report.reason}")
    for finding in report.trace_findings:
        click.echo(f"  trace finding: {finding}")
    table = TextTable(
        "target", "example", "inputs", "output", "max abs", "max rel", "top-1", "ok",
        title="verification against eager PyTorch",
    )  # fmt: skip
    for outcome in report.targets:
        if outcome.verification is None:
            table.add_row(outcome.target, "-", "-", "-", "-", "-", "-", "no model")
            continue
        for example in outcome.verification.examples:
            shapes = " ".join("x".join(map(str, shape)) for shape in example.input_shapes)
            if example.error:
                table.add_row(outcome.target, str(example.example), shapes, "-", "-", "-", "-",
                              "error")  # fmt: skip
            for check in example.outputs:
                top1 = "-" if check.top1_agreement is None else f"{check.top1_agreement:.2f}"
                table.add_row(
                    outcome.target, str(example.example), shapes, check.output,
                    f"{check.max_abs_diff:.2e}", f"{check.max_rel_diff:.2e}", top1,
                    "pass" if check.passed else "FAIL",
                )  # fmt: skip
    click.echo(table)
    if report.benchmark:
        columns = ("runtime", "batch", "p50 ms", "p95 ms", "items/s")
        bench = TextTable(*columns, title="runtime cost on this device", right=columns)
        for result in report.benchmark:
            bench.add_row(
                result.runtime, str(result.batch), f"{result.p50_ms:.2f}",
                f"{result.p95_ms:.2f}", f"{result.items_per_s:.1f}",
            )  # fmt: skip
        click.echo(bench)
    for outcome in report.targets:
        state = "written" if outcome.written else "NOT written"
        click.echo(f"{outcome.target}: {outcome.entry} {state}")


@click.command("export")
@click.argument("factory")
@click.option(
    "--example-input",
    multiple=True,
    required=True,
    help="SHAPE[:DTYPE] per model input, e.g. N,3,224,224 (names are dynamic dims).",
)
@click.option(
    "--weights", type=click.Path(path_type=Path), default=None, help="state_dict file to load."
)
@click.option(
    "--method",
    type=click.Choice(MethodChoice),
    default=MethodChoice.auto,
    help="auto traces, then checks.",
)
@click.option("--to", default="onnx,torchscript", help="Targets: onnx,torchscript.")
@click.option("--name", default=None, help="Model name (default: factory's).")
@click.option("--version", default=None, help="Default: next free version.")
@click.option("--input-name", multiple=True, help="Per input, in order.")
@click.option("--output-name", multiple=True, help="Per output, in order.")
@click.option(
    "--preprocess", default=None, help="e.g. color=rgb,mean=127,std=128,layout=nchw or JSON."
)
@click.option(
    "--labels", type=click.Path(path_type=Path), default=None, help="One class name per line."
)
@click.option("--classifier/--no-classifier", default=None, help="Default: if --labels.")
@click.option(
    "--repository",
    type=click.Path(path_type=Path),
    default=Path("models"),
    envvar="EDGEFLEET_REPOSITORY",
    show_envvar=True,
)
@click.option("--atol", type=float, default=0.0001, help="Absolute tolerance vs eager.")
@click.option("--rtol", type=float, default=0.001, help="Relative tolerance vs eager.")
@click.option("--min-top1", type=float, default=1.0, help="Top-1 agreement needed (classifiers).")
@click.option("--force/--no-force", default=False, help="Write targets that fail verification.")
@click.option("--overwrite/--no-overwrite", default=False, help="Replace an existing version.")
@click.option(
    "--benchmark/--no-benchmark", default=False, help="Measure eager/TorchScript/ORT here."
)
@click.option(
    "--bench-seconds", type=float, default=2.0, help="Measuring time per runtime and batch."
)
@click.option("--bench-threads", type=int, default=None, help="Intra-op threads (default: cores).")
@click.option("--max-batch", type=int, default=8, help="Planned batch size.")
@click.option("--opset", type=int, default=17, help="ONNX opset.")
@click.option("--description", default="")
@click.option(
    "--output", type=click.Choice(OutputFormat), default=OutputFormat.text, help="text or json."
)
def export(
    factory: str,
    example_input: tuple[str, ...],
    weights: Path | None,
    method: MethodChoice,
    to: str,
    name: str | None,
    version: str | None,
    input_name: tuple[str, ...],
    output_name: tuple[str, ...],
    preprocess: str | None,
    labels: Path | None,
    classifier: bool | None,
    repository: Path,
    atol: float,
    rtol: float,
    min_top1: float,
    force: bool,
    overwrite: bool,
    benchmark: bool,
    bench_seconds: float,
    bench_threads: int | None,
    max_batch: int,
    opset: int,
    description: str,
    output: OutputFormat,
) -> None:
    """Export a PyTorch module to TorchScript and ONNX, verify both against eager, and write
    a repository entry `edgefleet serve` loads as it is.

    FACTORY: MODULE:FACTORY or FILE.py:FACTORY returning an nn.Module."""
    from edgefleet.export.errors import ExportError
    from edgefleet.export.examples import parse_input_spec
    from edgefleet.export.pipeline import TARGETS, ExportRequest, run_export
    from edgefleet.export.verify import Tolerance

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    targets = tuple(dict.fromkeys(part.strip() for part in to.split(",") if part.strip()))
    unknown = [target for target in targets if target not in TARGETS]
    if not targets or unknown:
        raise click.BadParameter(f"targets must be among {', '.join(TARGETS)}", param_hint="--to")
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
        click.echo(f"error: {exc}", err=True)
        if output is OutputFormat.json:  # scripts get an answer on stdout either way
            click.echo(json.dumps({"error": str(exc), "kind": type(exc).__name__}))
        raise click.exceptions.Exit(2) from None
    if output is OutputFormat.json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _render(report)
    if not report.succeeded:
        for line in report.failures():
            click.echo(f"error: {line}", err=True)
        raise click.exceptions.Exit(1)


def register(app: click.Group) -> None:
    app.add_command(export)
