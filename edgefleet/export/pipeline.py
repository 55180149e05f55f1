"""One export: build the module, convert it, write each target, verify it, measure, commit.

Everything that can be refused cheaply (name, existing version, bad module, weights, examples)
is checked before any file is written; the targets are staged and renamed into the repository
only at the end, so a failure leaves the repository as it was.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edgefleet.export import onnx_target
from edgefleet.export.benchmark import BenchResult, benchmark_runtimes, device_facts
from edgefleet.export.contract import Example, ModelContract, Outputs, describe_model, run_eager
from edgefleet.export.conversion import Conversion, Method, convert
from edgefleet.export.errors import InvalidRequest, OnnxExportFailed
from edgefleet.export.examples import InputSpec, batch_inputs, make_examples
from edgefleet.export.loading import build_module
from edgefleet.export.report import REPORT_FILE, ExportReport, TargetOutcome
from edgefleet.export.runners import (
    Runner,
    onnx_file_runner,
    recorded_warnings,
    torch_runner,
    torchscript_file_runner,
)
from edgefleet.export.verify import Tolerance, verify_target
from edgefleet.export.writer import Staging, ensure_free, next_version, staging
from server.manifest import Batching, ModelManifest, Postprocess, hash_directory, write_manifest

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Target = Literal["onnx", "torchscript"]
TARGETS: tuple[Target, ...] = ("onnx", "torchscript")
MODEL_FILES: dict[str, str] = {"onnx": "model.onnx", "torchscript": "model.pt"}
LABELS_FILE = "labels.txt"
# The names the server's registry accepts (server/models/registry.py); a dot-name is never a model.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ExportRequest:
    factory: str
    inputs: tuple[InputSpec, ...]
    name: str
    repository: Path
    targets: tuple[Target, ...] = TARGETS
    # None: one above the highest existing version.
    version: str | None = None
    weights: Path | None = None
    # Defaults: input / output, or input_0.. / output_0.. when there are several.
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    method: Method = "auto"
    # Preprocess fields; `input`, `height` and `width` default from the first input's shape.
    preprocess: dict[str, Any] | None = None
    labels: Path | None = None
    # None: a classifier exactly when labels are given.
    classifier: bool | None = None
    tolerance: Tolerance = field(default_factory=Tolerance)
    force: bool = False
    overwrite: bool = False
    benchmark: bool = False
    # Minimum measuring time per runtime and batch size.
    bench_seconds: float = 2.0
    # Intra-op threads for torch and ONNX Runtime alike; None: torch's default (the cores).
    bench_threads: int | None = None
    max_batch: int = 8
    opset: int = onnx_target.DEFAULT_OPSET
    description: str = ""
    # Written into every manifest's `provenance` beside `export` (source, licence of weights).
    provenance: dict[str, Any] = field(default_factory=dict)

    def entry_names(self) -> dict[str, str]:
        """One target takes the name; with both, TorchScript gets a `_torchscript` suffix
        (the layout `make models` uses: one format per model name)."""
        if len(self.targets) == 1:
            return {self.targets[0]: self.name}
        return {t: self.name if t == "onnx" else f"{self.name}_{t}" for t in self.targets}


def _reserve(request: ExportRequest) -> tuple[dict[str, str], str]:
    """Entry names and the version, refused before any work if the server could not serve
    them or they exist (without --overwrite)."""
    entries = request.entry_names()
    for name in entries.values():
        if not _MODEL_NAME.match(name):
            raise InvalidRequest(
                f"model name {name!r}: use letters, digits, '_', '.', '-', starting with a "
                "letter or digit"
            )
    if request.version is not None and (not request.version.isdigit() or int(request.version) < 1):
        raise InvalidRequest(f"version {request.version!r} must be a positive integer")
    version = request.version or next_version(request.repository, entries.values())
    ensure_free(request.repository, entries.values(), version, request.overwrite)
    return entries, version


def run_export(request: ExportRequest) -> ExportReport:
    entries, version = _reserve(request)
    model = build_module(request.factory, request.weights)
    examples = make_examples(request.inputs)
    dynamic = any(spec.dynamic_names() for spec in request.inputs)
    hint = (
        " (if a dynamic dimension needs particular sizes, give one per example, e.g. H=224/320)"
        if dynamic
        else ""
    )
    references = run_eager(model, examples, hint)
    contract = describe_model(
        request.inputs, examples, references,
        input_names=request.input_names, output_names=request.output_names,
        classifier=request.classifier if request.classifier is not None else bool(request.labels),
        labels=request.labels, preprocess=request.preprocess,
    )  # fmt: skip
    conversion = convert(
        model, examples, references, contract.output_names, request.method, request.tolerance
    )
    log.info("converted with %s: %s", conversion.method, conversion.reason)

    with staging(request.repository) as stage:
        outcomes: list[TargetOutcome] = []
        kept: dict[str, Path] = {}
        for target in request.targets:
            outcome, model_path = _build_target(
                stage, request, target, entries[target], version, conversion, contract,
                examples, references,
            )  # fmt: skip
            outcomes.append(outcome)
            if model_path is not None:
                kept[target] = model_path
        benchmark, device = (
            _benchmark(request, model, kept, contract) if request.benchmark else ([], None)
        )
        report = ExportReport(
            factory=request.factory,
            method=conversion.method,
            reason=conversion.reason,
            trace_findings=conversion.trace_findings,
            script_error=conversion.script_error,
            tolerance=request.tolerance,
            forced=request.force,
            targets=outcomes,
            benchmark=benchmark,
            device=device,
        )
        for outcome in outcomes:
            if outcome.written:
                version_dir = stage.root / entries[outcome.target] / version
                _complete_entry(version_dir, request, outcome.target, contract, report)
        for placed in stage.commit(request.overwrite):
            log.info("wrote %s", placed)
    return report


def _build_target(
    stage: Staging,
    request: ExportRequest,
    target: Target,
    name: str,
    version: str,
    conversion: Conversion,
    contract: ModelContract,
    examples: Sequence[Example],
    references: Sequence[Outputs],
) -> tuple[TargetOutcome, Path | None]:
    """Write one target's model file, verify it against eager; keep it if it passes (or
    --force). The model file comes back for the benchmark when the target is kept."""
    entry = f"{name}/{version}"
    model_path = stage.version_dir(name, version) / MODEL_FILES[target]
    try:
        runner = _write_model(target, conversion, examples[0], model_path, contract, request.opset)
    except OnnxExportFailed as exc:
        log.error("%s", exc)
        stage.discard(name, version)
        return TargetOutcome(target, entry, None, written=False, error=str(exc)), None
    verification = verify_target(
        target, runner,
        [[tensor.numpy() for tensor in example] for example in examples], references,
        contract.output_names, request.tolerance, contract.classifier_output,
    )  # fmt: skip
    written = verification.passed or request.force
    if not written:
        stage.discard(name, version)
    return TargetOutcome(target, entry, verification, written), model_path if written else None


def _write_model(
    target: Target,
    conversion: Conversion,
    example: Example,
    model_path: Path,
    contract: ModelContract,
    opset: int,
) -> Runner:
    import torch

    if target == "torchscript":
        with recorded_warnings():  # torch.jit.save is deprecated in 2.13; we serve it on purpose
            torch.jit.save(conversion.module, str(model_path))
        return torchscript_file_runner(model_path)
    onnx_target.export_onnx(
        conversion.module, example, model_path, contract.input_names, contract.output_names,
        contract.dynamic_axes(), opset,
    )  # fmt: skip
    return onnx_file_runner(model_path, contract.input_names)


def _complete_entry(
    version_dir: Path,
    request: ExportRequest,
    target: str,
    contract: ModelContract,
    report: ExportReport,
) -> None:
    """Labels, the report and last the manifest, which hashes everything beside it."""
    if contract.labels_text is not None:
        (version_dir / LABELS_FILE).write_text(contract.labels_text, encoding="utf-8")
    (version_dir / REPORT_FILE).write_text(
        json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8"
    )
    postprocess = (
        Postprocess(
            kind="classification",
            output=contract.classifier_output,
            labels_file=LABELS_FILE if contract.labels_text is not None else None,
        )
        if contract.classifier_output
        else Postprocess()
    )
    manifest = ModelManifest(
        name=version_dir.parent.name,
        version=version_dir.name,
        format=target,
        model_file=MODEL_FILES[target],
        inputs=contract.inputs,
        outputs=contract.outputs,
        preprocess=contract.preprocess,
        postprocess=postprocess,
        batching=Batching(max_batch_size=request.max_batch if contract.batched else 0),
        files=hash_directory(version_dir),
        description=request.description,
        provenance={**request.provenance, "export": report.provenance(target)},
    )
    write_manifest(version_dir, manifest)


def _benchmark(
    request: ExportRequest,
    model: torch.nn.Module,
    model_files: dict[str, Path],
    contract: ModelContract,
) -> tuple[list[BenchResult], dict[str, Any]]:
    """Eager vs every written target at batch 1 and the planned batch, on the same inputs,
    with the same intra-op thread count for torch and ONNX Runtime."""
    import torch

    default_threads = torch.get_num_threads()
    threads = request.bench_threads or default_threads
    torch.set_num_threads(threads)
    try:
        candidates: dict[str, Runner] = {"eager": torch_runner(model)}
        if "torchscript" in model_files:
            candidates["torchscript"] = torchscript_file_runner(model_files["torchscript"])
        if "onnx" in model_files:
            candidates["onnx"] = onnx_file_runner(
                model_files["onnx"], contract.input_names, threads=threads
            )
        batched = isinstance(request.inputs[0].dims[0], str)
        batches = sorted({1, request.max_batch}) if batched and request.max_batch > 1 else [1]
        generator = torch.Generator().manual_seed(1234)
        inputs_by_batch = {
            batch: [t.numpy() for t in batch_inputs(request.inputs, batch, generator)]
            for batch in batches
        }
        results = benchmark_runtimes(candidates, inputs_by_batch, min_seconds=request.bench_seconds)
        return results, device_facts(threads)
    finally:
        torch.set_num_threads(default_threads)
