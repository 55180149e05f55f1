"""YOLO detectors recognised by the metadata their exporter writes, so they drop in.

Ultralytics' ONNX export stores `task` ("detect"), `names` (a Python dict literal such as
"{0: 'person', 1: 'bicycle'}"), `imgsz` ("[640, 640]"), `stride`, `batch`, `author`,
`version` and `description` in the model's metadata_props; YOLOv5's own exporter stores
`stride` and `names` only. From them a drop-in `model.onnx` gets the preprocess and
postprocess Ultralytics' own predictor applies: letterbox to the input size (grey 114
padding), RGB scaled to 0..1, NCHW, and the `yolo` decoder with its predict defaults (conf
0.25, iou 0.7, max_det 300) and the model's class names.

The metadata is untrusted input: `names` is parsed as a literal (never evaluated) from a
bounded string, and anything malformed is logged and leaves the model as a plain drop-in
(raw outputs), as it was before this module existed.
"""

from __future__ import annotations

import ast
import logging
from dataclasses import dataclass
from typing import Any

from server.manifest import Postprocess, Preprocess, TensorSpec, YoloOptions

log = logging.getLogger(__name__)

# Ultralytics' predict defaults (ultralytics/cfg/default.yaml: conf, iou, max_det).
SCORE_THRESHOLD = 0.25
IOU_THRESHOLD = 0.7
MAX_DETECTIONS = 300
# Ultralytics letterboxes with grey 114 and feeds RGB / 255.
PAD_VALUE = 114
# A metadata string parsed as a literal is refused beyond this size (LVIS' 1203 names take
# about 20 KB), so a hostile model cannot make the loader parse megabytes.
MAX_LITERAL_CHARS = 256 * 1024
MAX_CLASSES = 10_000
# Metadata keys kept in the manifest's provenance, for an operator to read.
_PROVENANCE_KEYS = ("author", "version", "description", "task", "stride", "imgsz", "batch")


@dataclass(frozen=True)
class YoloSections:
    """What a recognised detector adds to its drop-in manifest."""

    preprocess: Preprocess
    postprocess: Postprocess
    description: str
    provenance: dict[str, str]


class _Malformed(ValueError):
    """Metadata that claims a YOLO detector but cannot be used; the message says why."""


def yolo_sections(
    metadata: dict[str, str], inputs: list[TensorSpec], outputs: list[TensorSpec], where: str
) -> YoloSections | None:
    """The preprocess and postprocess of a YOLO detector its metadata describes, or None
    (logged when the metadata claims a detector the server cannot serve as one)."""
    if "names" not in metadata:
        if metadata.get("task") == "detect":
            log.warning(
                "%s: model.onnx metadata says task detect but lists no `names`; served with raw "
                "outputs (write a manifest with labels to serve it for camera frames)", where,
            )  # fmt: skip
        return None  # otherwise not a YOLO export: a plain drop-in, nothing to say
    task = metadata.get("task", "detect")  # YOLOv5's exporter writes no task
    if task != "detect":
        log.info(
            "%s: model.onnx metadata says task %r; only `detect` is served from metadata, so it "
            "is served with raw outputs", where, task[:40],
        )  # fmt: skip
        return None
    try:
        return _sections(metadata, inputs, outputs, where)
    except _Malformed as exc:
        log.warning(
            "%s: model.onnx has YOLO metadata that cannot be used (%s); served with raw outputs "
            "and no preprocess, as a drop-in without metadata",
            where, exc,
        )  # fmt: skip
        return None


def _sections(
    metadata: dict[str, str], inputs: list[TensorSpec], outputs: list[TensorSpec], where: str
) -> YoloSections:
    if metadata.get("end2end", "").lower() == "true":
        raise _Malformed("end-to-end exports (NMS inside the graph) are not decoded yet")
    names = parse_names(metadata["names"])
    if len(inputs) != 1 or len(outputs) != 1:
        raise _Malformed(
            f"a detect export has one input and one output, this one has {len(inputs)} and "
            f"{len(outputs)}"
        )
    image, output = inputs[0], outputs[0]
    height, width = _input_size(image, metadata.get("imgsz"), metadata.get("stride"), where)
    layout = _layout(output, len(names))
    preprocess = Preprocess(
        input=image.name, height=height, width=width, resize="letterbox", pad_value=PAD_VALUE,
        color="rgb", mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0), layout="nchw",
        dtype="float16" if image.dtype == "float16" else "float32",
    )  # fmt: skip
    postprocess = Postprocess(
        kind="yolo",
        output=output.name,
        labels=names,
        yolo=YoloOptions(
            layout=layout,
            score_threshold=SCORE_THRESHOLD,
            iou_threshold=IOU_THRESHOLD,
            max_detections=MAX_DETECTIONS,
        ),
    )
    exporter = metadata.get("description") or "YOLO detector"
    return YoloSections(
        preprocess=preprocess,
        postprocess=postprocess,
        description=f"{exporter[:200]} ({len(names)} classes, letterbox {height}x{width})",
        provenance={key: metadata[key][:200] for key in _PROVENANCE_KEYS if key in metadata},
    )


def _literal(text: str, key: str) -> Any:
    """A Python literal from metadata, parsed (never evaluated) from a bounded string."""
    if len(text) > MAX_LITERAL_CHARS:
        raise _Malformed(f"`{key}` is {len(text)} characters, over {MAX_LITERAL_CHARS}")
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise _Malformed(f"`{key}` is not a Python literal: {text[:60]!r}") from None


def parse_names(text: str) -> list[str]:
    """Class names from `names`: a dict {0: 'person', ...} with ids 0..n-1 (or a list)."""
    value = _literal(text, "names")
    if isinstance(value, list):
        value = dict(enumerate(value))
    if not isinstance(value, dict) or not value:
        raise _Malformed(f"`names` is not a non-empty dict of class names: {text[:60]!r}")
    if len(value) > MAX_CLASSES:
        raise _Malformed(f"`names` lists {len(value)} classes, over {MAX_CLASSES}")
    # Ids as ints, or digit strings as Ultralytics' own check_class_names accepts them.
    ids = [
        int(key) if isinstance(key, str) and key.isdigit() and len(key) < 6 else key
        for key in value
    ]
    ids_are_ints = all(isinstance(key, int) and not isinstance(key, bool) for key in ids)
    if not ids_are_ints or set(ids) != set(range(len(value))):
        raise _Malformed("`names` keys are not the class ids 0..n-1")
    value = dict(zip(ids, value.values(), strict=True))
    if not all(isinstance(name, str) for name in value.values()):
        raise _Malformed("`names` values are not all strings")
    return [value[class_id] for class_id in range(len(value))]


def _input_size(
    image: TensorSpec, imgsz: str | None, stride: str | None, where: str
) -> tuple[int, int]:
    """The letterbox size: the input's fixed height and width, which win over `imgsz` (the
    graph is what runs); `imgsz` only for an input whose height and width are dynamic, where
    both sides must be multiples of `stride` (the head's feature maps must tile them)."""
    if len(image.shape) != 4 or image.shape[1] != 3 or image.dtype not in ("float32", "float16"):
        raise _Malformed(
            f"input {image.name!r} is {image.dtype} {image.shape}, not a float [N, 3, H, W] image"
        )
    declared = _imgsz(imgsz) if imgsz is not None else None
    dims = image.shape[2:]
    if all(isinstance(dim, int) and dim > 0 for dim in dims):
        fixed = (int(dims[0]), int(dims[1]))
        if declared is not None and declared != fixed:
            log.warning(
                "%s: model.onnx metadata imgsz %s disagrees with input %r of %dx%d; the input's "
                "shape wins (letterbox to %dx%d)",
                where, list(declared), image.name, *fixed, *fixed,
            )  # fmt: skip
        return fixed
    if declared is None:
        raise _Malformed(f"input {image.name!r} has a dynamic size {image.shape} and no `imgsz`")
    step = stride.strip() if stride is not None else ""
    if step.isdigit() and int(step) > 0 and any(side % int(step) for side in declared):
        raise _Malformed(f"`imgsz` {list(declared)} is not a multiple of `stride` {step}")
    return declared


def _imgsz(text: str) -> tuple[int, int]:
    value = _literal(text, "imgsz")
    if isinstance(value, int):
        value = [value, value]
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(side, int) and not isinstance(side, bool) for side in value)
        or not all(0 < side <= 8192 for side in value)
    ):
        raise _Malformed(f"`imgsz` is not [height, width]: {text[:60]!r}")
    return int(value[0]), int(value[1])


def _layout(output: TensorSpec, classes: int) -> str:
    """v8 ([N, 4 + classes, boxes], v8 and v11 heads) or v5 ([N, boxes, 5 + classes]), from the
    output's shape and the number of names; a shape that fits neither is refused."""
    shape = output.shape
    if len(shape) != 3:
        raise _Malformed(f"output {output.name!r} has shape {shape}, not [N, rows, columns]")
    if shape[1] == 4 + classes:
        return "v8"
    if shape[2] == 5 + classes:
        return "v5"
    raise _Malformed(
        f"output {output.name!r} of shape {shape} fits neither [N, 4 + {classes}, boxes] (v8) "
        f"nor [N, boxes, 5 + {classes}] (v5) for the {classes} classes in `names`"
    )
