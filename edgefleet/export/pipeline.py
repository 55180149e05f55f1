"""One export: build the module, convert it, write each target, verify it, measure, commit.

Everything that can be refused cheaply (existing version, bad module, weights, examples) is
checked before any file is written; the targets are staged and renamed into the repository
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

import numpy.typing as npt

from edgefleet.export import onnx_target
from edgefleet.export.benchmark import BenchResult, benchmark_runtimes, device_facts
from edgefleet.export.conversion import Conversion, Method, convert
from edgefleet.export.errors import ExampleRejected, InvalidRequest, OnnxExportFailed
from edgefleet.export.examples import InputSpec, batch_inputs, make_examples
from edgefleet.export.loading import build_module
from edgefleet.export.report import REPORT_FILE, ExportReport, TargetOutcome
from edgefleet.export.runners import (
    Runner,
    as_output_list,
    onnx_file_runner,
    recorded_warnings,
    torch_runner,
    torchscript_file_runner,
)
from edgefleet.export.verify import Tolerance, first_line, verify_target
from edgefleet.export.writer import ensure_free, next_version, staging
from server.manifest import (
    Batching,
    ModelManifest,
    Postprocess,
    Preprocess,
    TensorSpec,
    hash_directory,
    write_manifest,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Target = Literal["onnx", "torchscript"]
TARGETS: tuple[Target, ...] = ("onnx", "torchscript")
MODEL_FILES: dict[Target, str] = {"onnx": "model.onnx", "torchscript": "model.pt"}
LABELS_FILE = "labels.txt"
# The names the server's registry accepts (server/registry.py); a dot-name is never a model.
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
    max_batch: int = 8
    opset: int = onnx_target.DEFAULT_OPSET
    description: str = ""

    def entry_names(self) -> dict[Target, str]:
        """One target takes the name; with both, TorchScript gets a `_torchscript` suffix
        (the layout `make models` uses: one format per model name)."""
        if len(self.targets) == 1:
            return {self.targets[0]: self.name}
        return {t: self.name if t == "onnx" else f"{self.name}_{t}" for t in self.targets}


def _names(given: Sequence[str], count: int, stem: str, what: str) -> list[str]:
    if not given:
        return [stem] if count == 1 else [f"{stem}_{index}" for index in range(count)]
    if len(given) != count:
        raise InvalidRequest(f"{len(given)} {what} names given for {count} {what}s")
    return list(given)


def run_eager(
    model: torch.nn.Module, examples: Sequence[tuple[torch.Tensor, ...]]
) -> list[list[npt.NDArray[Any]]]:
    import torch

    references = []
    for index, example in enumerate(examples):
        try:
            with torch.inference_mode():
                outputs = as_output_list(model(*example))
        except ExampleRejected:
            raise
        except Exception as exc:
            shapes = ", ".join(
                f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in example
            )
            raise ExampleRejected(
                f"the model rejects example {index} ({shapes}): {first_line(exc)}"
            ) from exc
        references.append([tensor.numpy().copy() for tensor in outputs])
    return references


def output_specs(
    names: Sequence[str],
    specs: Sequence[InputSpec],
    examples: Sequence[tuple[torch.Tensor, ...]],
    references: Sequence[Sequence[npt.NDArray[Any]]],
) -> list[TensorSpec]:
    """Output shapes: a dimension that changes across examples is dynamic, named after the
    input dimension whose sizes it followed."""
    input_dim_sizes: dict[tuple[int, ...], str] = {}
    for spec_index, spec in enumerate(specs):
        for axis, dim in enumerate(spec.dims):
            if isinstance(dim, str):
                sizes = tuple(example[spec_index].shape[axis] for example in examples)
                input_dim_sizes.setdefault(sizes, dim)
    result = []
    for index, name in enumerate(names):
        arrays = [reference[index] for reference in references]
        dims: list[int | str] = []
        for axis, size in enumerate(arrays[0].shape):
            sizes = tuple(array.shape[axis] for array in arrays)
            if len(set(sizes)) == 1:
                dims.append(int(size))
            else:
                dims.append(input_dim_sizes.get(sizes, f"{name}_dim{axis}"))
        dtype = str(arrays[0].dtype)
        result.append(TensorSpec(name=name, dtype=dtype, shape=dims))
    return result


def read_labels(path: Path, outputs: Sequence[TensorSpec], classifier_output: str | None) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidRequest(f"labels file {path}: {exc.strerror}") from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    spec = next((o for o in outputs if o.name == classifier_output), None)
    classes = spec.shape[-1] if spec else None
    if isinstance(classes, int) and classes != len(labels):
        raise InvalidRequest(
            f"labels file {path} has {len(labels)} labels but output {classifier_output} "
            f"has {classes} classes"
        )
    return "\n".join(labels) + "\n"


def build_preprocess(
    fields: dict[str, Any] | None, spec: InputSpec, input_name: str
) -> Preprocess | None:
    if fields is None:
        return None
    values = dict(fields)
    values.setdefault("input", input_name)
    layout = values.get("layout", "nchw")
    spatial = spec.dims[2:4] if layout == "nchw" else spec.dims[1:3]
    for key, dim in zip(("height", "width"), spatial, strict=False):
        if isinstance(dim, int):
            values.setdefault(key, dim)
    try:
        return Preprocess.model_validate(values)
    except ValueError as exc:
        raise InvalidRequest(f"--preprocess: {exc}") from None


def run_export(request: ExportRequest) -> ExportReport:

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

    model = build_module(request.factory, request.weights)
    input_names = _names(request.input_names, len(request.inputs), "input", "input")
    examples = make_examples(request.inputs)
    references = run_eager(model, examples)
    output_names = _names(request.output_names, len(references[0]), "output", "output")
    outputs = output_specs(output_names, request.inputs, examples, references)
    classifier = request.classifier if request.classifier is not None else bool(request.labels)
    classifier_output = output_names[0] if classifier else None
    labels = read_labels(request.labels, outputs, classifier_output) if request.labels else None
    preprocess = build_preprocess(request.preprocess, request.inputs[0], input_names[0])

    conversion = convert(
        model, examples, references, output_names, request.method, request.tolerance
    )
    log.info("converted with %s: %s", conversion.method, conversion.reason)
    example_arrays = [[tensor.numpy() for tensor in example] for example in examples]
    dynamic_axes = {
        name: {axis: dim for axis, dim in enumerate(spec.shape) if isinstance(dim, str)}
        for name, spec in [
            *zip(input_names, _input_tensor_specs(request, input_names), strict=True),
            *((o.name, o) for o in outputs),
        ]
    }

    with staging(request.repository) as stage:
        outcomes: list[TargetOutcome] = []
        runners: dict[str, Runner] = {}
        for target in request.targets:
            entry = f"{entries[target]}/{version}"
            version_dir = stage.version_dir(entries[target], version)
            model_path = version_dir / MODEL_FILES[target]
            try:
                runner = _write_target(
                    target, conversion, examples[0], model_path, input_names, output_names,
                    dynamic_axes, request.opset,
                )  # fmt: skip
            except OnnxExportFailed as exc:
                log.error("%s", exc)
                stage.discard(entries[target], version)
                outcomes.append(TargetOutcome(target, entry, None, written=False, error=str(exc)))
                continue
            verification = verify_target(
                target, runner, example_arrays, references, output_names, request.tolerance,
                classifier_output,
            )  # fmt: skip
            written = verification.passed or request.force
            if not written:
                stage.discard(entries[target], version)
            else:
                runners[target] = runner
            outcomes.append(TargetOutcome(target, entry, verification, written))

        benchmark: list[BenchResult] = []
        device = None
        if request.benchmark:
            benchmark = _benchmark(request, model, runners)
            device = device_facts()
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
        batching = (
            Batching(max_batch_size=request.max_batch)
            if isinstance(request.inputs[0].dims[0], str)
            else Batching(max_batch_size=0)
        )
        for outcome in outcomes:
            if not outcome.written:
                continue
            name = entries[outcome.target]  # type: ignore[index]
            version_dir = stage.root / name / version
            if labels is not None:
                (version_dir / LABELS_FILE).write_text(labels, encoding="utf-8")
            (version_dir / REPORT_FILE).write_text(
                json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8"
            )
            manifest = ModelManifest(
                name=name,
                version=version,
                format=outcome.target,
                model_file=MODEL_FILES[outcome.target],  # type: ignore[index]
                inputs=_input_tensor_specs(request, input_names),
                outputs=outputs,
                preprocess=preprocess,
                postprocess=Postprocess(
                    kind="classification", output=classifier_output,
                    labels_file=LABELS_FILE if labels is not None else None,
                ) if classifier_output else Postprocess(),
                batching=batching,
                files=hash_directory(version_dir),
                description=request.description,
                provenance={"export": report.provenance(outcome.target)},
            )  # fmt: skip
            write_manifest(version_dir, manifest)
        for placed in stage.commit(request.overwrite):
            log.info("wrote %s", placed)
    return report


def _input_tensor_specs(request: ExportRequest, names: Sequence[str]) -> list[TensorSpec]:
    return [
        TensorSpec(name=name, dtype=spec.dtype, shape=list(spec.dims))
        for name, spec in zip(names, request.inputs, strict=True)
    ]


def _write_target(
    target: Target,
    conversion: Conversion,
    example: tuple[torch.Tensor, ...],
    model_path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> Runner:
    import torch

    if target == "torchscript":
        with recorded_warnings():  # torch.jit.save is deprecated in 2.13; we serve it on purpose
            torch.jit.save(conversion.module, str(model_path))
        return torchscript_file_runner(model_path)
    onnx_target.export_onnx(
        conversion.module, example, model_path, input_names, output_names, dynamic_axes, opset
    )
    # Same intra-op thread count as torch, so a benchmark compares runtimes, not threads.
    return onnx_file_runner(model_path, input_names, threads=torch.get_num_threads())


def _benchmark(
    request: ExportRequest, model: torch.nn.Module, runners: dict[str, Runner]
) -> list[BenchResult]:
    """Eager vs every written target at batch 1 and the planned batch, on the same inputs."""
    import torch

    candidates: dict[str, Runner] = {"eager": torch_runner(model)}
    candidates.update(
        (target, runners[target]) for target in ("torchscript", "onnx") if target in runners
    )
    batched = isinstance(request.inputs[0].dims[0], str)
    batches = sorted({1, request.max_batch}) if batched and request.max_batch > 1 else [1]
    generator = torch.Generator().manual_seed(1234)
    inputs_by_batch = {
        batch: [t.numpy() for t in batch_inputs(request.inputs, batch, generator)]
        for batch in batches
    }
    return benchmark_runtimes(candidates, inputs_by_batch, min_seconds=request.bench_seconds)
