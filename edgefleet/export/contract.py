"""What the exported model promises the server: tensor names, dtypes and shapes (with dynamic
dimensions named), how frames become its input, how its output becomes labels.

Output shapes are not declared by the user: they are read off eager runs on the examples. A
dimension that changes across examples is dynamic and takes the name of the input dimension
whose sizes it followed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import numpy.typing as npt

from edgefleet.export.errors import ExampleRejected, InvalidRequest
from edgefleet.export.examples import InputSpec
from edgefleet.export.runners import as_output_list
from edgefleet.export.verify import first_line
from server.manifest import DType, Preprocess, TensorSpec

if TYPE_CHECKING:
    import torch

Example = tuple["torch.Tensor", ...]
Outputs = list[npt.NDArray[Any]]


@dataclass(frozen=True)
class ModelContract:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # The output holding class scores, for classifiers.
    classifier_output: str | None
    # labels.txt content, one class per line, checked against the classifier's width.
    labels_text: str | None
    preprocess: Preprocess | None
    # The first dimension of the first input is dynamic: the server may batch requests.
    batched: bool

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The ONNX exporter's `dynamic_axes`: every named dimension of every tensor."""
        return {
            spec.name: {axis: dim for axis, dim in enumerate(spec.shape) if isinstance(dim, str)}
            for spec in [*self.inputs, *self.outputs]
        }


def run_eager(model: torch.nn.Module, examples: Sequence[Example], hint: str = "") -> list[Outputs]:
    """The reference outputs; an example the model cannot run is the user's error to fix."""
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
                f"the model rejects example {index} ({shapes}): {first_line(exc)}{hint}"
            ) from exc
        references.append([tensor.numpy().copy() for tensor in outputs])
    return references


def tensor_names(given: Sequence[str], count: int, stem: str) -> list[str]:
    if not given:
        return [stem] if count == 1 else [f"{stem}_{index}" for index in range(count)]
    if len(given) != count:
        raise InvalidRequest(f"{len(given)} {stem} names given for {count} {stem}s")
    return list(given)


def output_specs(
    names: Sequence[str],
    specs: Sequence[InputSpec],
    examples: Sequence[Example],
    references: Sequence[Outputs],
) -> list[TensorSpec]:
    # Input dimensions by the sizes they took across examples; two names may share sizes
    # (H=224/320, W=224/320), so the one at the same axis is preferred.
    input_dims: dict[tuple[int, ...], dict[int, str]] = {}
    for spec_index, spec in enumerate(specs):
        for axis, dim in enumerate(spec.dims):
            if isinstance(dim, str):
                sizes = tuple(example[spec_index].shape[axis] for example in examples)
                input_dims.setdefault(sizes, {}).setdefault(axis, dim)
    result = []
    for index, name in enumerate(names):
        arrays = [reference[index] for reference in references]
        dims: list[int | str] = []
        for axis, size in enumerate(arrays[0].shape):
            sizes = tuple(array.shape[axis] for array in arrays)
            if len(set(sizes)) == 1:
                dims.append(int(size))
            elif sizes in input_dims:
                by_axis = input_dims[sizes]
                dims.append(by_axis.get(axis, next(iter(by_axis.values()))))
            else:
                dims.append(f"{name}_dim{axis}")
        dtype = str(arrays[0].dtype)
        if dtype not in get_args(DType):
            raise InvalidRequest(f"output {name} has dtype {dtype}, which edge runtimes lack")
        result.append(TensorSpec(name=name, dtype=dtype, shape=dims))
    return result


def read_labels(path: Path, classifier: TensorSpec | None) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidRequest(f"labels file {path}: {exc.strerror}") from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if classifier is None:
        raise InvalidRequest("--labels needs a classifier; drop --no-classifier")
    classes = classifier.shape[-1]
    if isinstance(classes, int) and classes != len(labels):
        raise InvalidRequest(
            f"labels file {path} has {len(labels)} labels but output {classifier.name} "
            f"has {classes} classes"
        )
    return "\n".join(labels) + "\n"


def build_preprocess(
    fields: dict[str, Any] | None, spec: InputSpec, input_name: str
) -> Preprocess | None:
    """`--preprocess` fields; `input`, `height` and `width` default from the first input."""
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


def describe_model(
    inputs: Sequence[InputSpec],
    examples: Sequence[Example],
    references: Sequence[Outputs],
    *,
    input_names: Sequence[str] = (),
    output_names: Sequence[str] = (),
    classifier: bool = False,
    labels: Path | None = None,
    preprocess: dict[str, Any] | None = None,
) -> ModelContract:
    names_in = tensor_names(input_names, len(inputs), "input")
    names_out = tensor_names(output_names, len(references[0]), "output")
    outputs = output_specs(names_out, inputs, examples, references)
    classifier_spec = outputs[0] if classifier else None
    return ModelContract(
        inputs=[
            TensorSpec(name=name, dtype=spec.dtype, shape=list(spec.dims))
            for name, spec in zip(names_in, inputs, strict=True)
        ],
        outputs=outputs,
        classifier_output=classifier_spec.name if classifier_spec else None,
        labels_text=read_labels(labels, classifier_spec) if labels else None,
        preprocess=build_preprocess(preprocess, inputs[0], names_in[0]),
        batched=isinstance(inputs[0].dims[0], str),
    )
