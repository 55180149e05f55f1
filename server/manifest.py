"""The model manifest: `<repository>/<name>/<version>/manifest.json`.

One manifest describes one model version: its format and file, its tensors, how camera frames
become its input (preprocess), how its output becomes labels (postprocess), batching, pinned
runtime choices, and the sha256 of every file in the version directory. It is the contract
between `make models` / `edgefleet export`, the server, the hardware planner and the fleet.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from server.errors import InvalidManifest

MANIFEST_FILENAME = "manifest.json"
SCHEMA_VERSION = 1

DType = Literal[
    "bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
    "float16", "float32", "float64",
]  # fmt: skip
# A dimension is a fixed size, or dynamic: -1 or a symbolic name such as "N".
Dim = int | str
Precision = Literal["fp32", "fp16", "int8"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str
    dtype: DType
    # Full shape, batch dimension first when the model batches.
    shape: list[Dim]

    @field_validator("shape")
    @classmethod
    def _dims_are_valid(cls, shape: list[Dim]) -> list[Dim]:
        for dim in shape:
            if isinstance(dim, int) and dim < -1:
                raise ValueError(f"dimension {dim} is invalid: use a size >= 0, -1 or a name")
        return shape

    def fixed_dims(self) -> list[int]:
        """The shape with every dynamic dimension as -1."""
        return [dim if isinstance(dim, int) else -1 for dim in self.shape]


class Preprocess(_Strict):
    """How a camera frame (uint8 HWC) becomes the model's input tensor."""

    input: str
    # Height and width the model expects.
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    # stretch: plain resize to height x width; letterbox: keep aspect ratio, pad with
    # `pad_value`. Two sizes follow the frame, for models with dynamic height and width:
    # limit_side: keep aspect ratio, scale so the shorter (limit_type "min") or longer ("max")
    #   side is `limit_side_len`, never beyond `max_side_len`, each side a multiple of
    #   `size_multiple` (PP-OCR's detector); height x width is then only the warm-up size.
    # fit_height: scale to `height`, width following the aspect ratio, right-padded with zeros
    #   (after normalisation) to at least `width` and at most `max_width` (text recognisers).
    resize: Literal["stretch", "letterbox", "limit_side", "fit_height"] = "stretch"
    pad_value: int = Field(default=114, ge=0, le=255)
    limit_side_len: int = Field(default=736, gt=0)
    limit_type: Literal["min", "max"] = "min"
    max_side_len: int = Field(default=2000, gt=0)
    size_multiple: int = Field(default=32, ge=1)
    max_width: int = Field(default=2304, gt=0)
    # Colour order the model was trained on.
    color: Literal["rgb", "bgr"] = "rgb"
    # Applied on the 0..255 scale: (pixel - mean) / std, per channel.
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: Literal["nchw", "nhwc"] = "nchw"
    dtype: Literal["float32", "float16", "uint8"] = "float32"

    @field_validator("std")
    @classmethod
    def _std_nonzero(cls, std: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(value == 0 for value in std):
            raise ValueError("std must not contain 0")
        return std


class YoloOptions(_Strict):
    """Decoding of YOLO ONNX exports (server/vision/decoders/yolo.py)."""

    # v5: [N, boxes, 5 + classes] (cx, cy, w, h, objectness, class scores);
    # v8: [N, 4 + classes, boxes] (v8, v11: cx, cy, w, h, class scores; no objectness);
    # auto: the layout whose class count matches the labels, else v8 when the middle axis is
    # the shorter one (thousands of boxes, few classes), else v5.
    layout: Literal["auto", "v5", "v8"] = "auto"
    score_threshold: float = Field(default=0.25, ge=0, le=1)
    iou_threshold: float = Field(default=0.45, gt=0, le=1)
    # Candidates kept (best scores first) before NMS, so a noisy frame stays bounded in time.
    max_candidates: int = Field(default=3000, ge=1)
    max_detections: int = Field(default=300, ge=1)
    # True: one NMS over all classes; False: boxes of different classes never suppress each other.
    class_agnostic: bool = False


class DbOptions(_Strict):
    """PP-OCR's differentiable-binarisation text detector (server/vision/decoders/db_text.py),
    with the thresholds PaddleOCR documents (det_db_thresh, det_db_box_thresh,
    det_db_unclip_ratio)."""

    thresh: float = Field(default=0.3, ge=0, le=1)
    box_thresh: float = Field(default=0.5, ge=0, le=1)
    unclip_ratio: float = Field(default=1.6, gt=0)
    max_candidates: int = Field(default=1000, ge=1)
    use_dilation: bool = True
    # Boxes whose shorter side is below this many map pixels are noise.
    min_size: int = Field(default=3, ge=1)


class CtcOptions(_Strict):
    """Greedy CTC decoding for text recognisers (server/vision/decoders/ctc_text.py)."""

    # ONNX metadata key holding the character list, one per line (PaddleOCR exports have it);
    # `labels_file` is the fallback. Index 0 is the CTC blank.
    characters_metadata_key: str = "character"
    # PaddleOCR appends a space to the character list (use_space_char).
    append_space: bool = True


# Postprocess kinds whose result is detections in source pixels (a frame's own geometry).
DETECTION_KINDS = ("yolo", "db_text")


class Postprocess(_Strict):
    """How the model's output becomes a result."""

    kind: Literal["classification", "raw", "yolo", "db_text", "ctc_text"] = "raw"
    # The output tensor the postprocess reads (every kind but raw).
    output: str | None = None
    softmax: bool = True
    top_k: int = Field(default=5, ge=1)
    # One label per line, class id = line number; relative to the version directory.
    labels_file: str | None = None
    # Class names inline, class id = index (drop-in detectors take them from their metadata);
    # the alternative to `labels_file`, never both.
    labels: list[str] | None = None
    yolo: YoloOptions | None = None
    db: DbOptions | None = None
    ctc: CtcOptions | None = None

    @model_validator(mode="after")
    def _kind_names_output(self) -> Postprocess:
        if self.kind != "raw" and not self.output:
            raise ValueError(f"{self.kind} postprocess needs `output`")
        if self.labels is not None and self.labels_file is not None:
            raise ValueError("give class names as `labels` or `labels_file`, not both")
        return self


class CascadeStage(_Strict):
    """A stage of a cascade detector such as MTCNN (server/frames/work/cascade.py): the member
    scores candidate windows (`prob`: [N, 2] or [N, 2, h, w], the second channel the object)
    and moves their corners (`reg`: [N, 4] or [N, 4, h, w], as fractions of the window's side);
    the last stage may also place keypoints (`landmarks`: [N, 2K], K x then K y, as
    fractions)."""

    # Probability a candidate needs to go on.
    threshold: float = Field(default=0.7, ge=0, le=1)
    # Overlap above which NMS drops the weaker of two candidates; "min" measures it over the
    # smaller box (MTCNN's last stage), "union" is IoU.
    nms_iou: float = Field(default=0.7, gt=0, le=1)
    nms_over: Literal["union", "min"] = "union"
    # Candidates this stage hands on (best first), so a busy frame stays bounded in time.
    max_candidates: int = Field(default=512, ge=1)
    # pyramid: the smallest object in source pixels, and the size step between levels.
    min_size: float = Field(default=20.0, ge=12)
    scale_factor: float = Field(default=0.709, ge=0.1, lt=1)
    # pyramid: IoU for the NMS within one level, before the NMS over all levels.
    level_nms_iou: float = Field(default=0.5, gt=0, le=1)
    # Output names in the member.
    score_output: str = "prob"
    offsets_output: str = "reg"
    keypoints_output: str = "landmarks"
    # What the detections are, and their keypoints' names in the order the member gives them.
    label: str = ""
    keypoint_names: list[str] = Field(default_factory=list)


class PipelineStage(_Strict):
    """One stage of a pipeline, run by server/frames/work/pipeline.py.

    detect: the model sees the whole frame (its own preprocess) and its postprocess (yolo,
      db_text) yields detections in source pixels.
    crop: every detection so far is cut out of the source frame (its axis-aligned box, or its
      quadrilateral perspective-corrected), the crops of one frame go to the model as batches,
      and its postprocess fills the detection: ctc_text sets `text` and `score`,
      classification sets `class_id`, `label` and `score`.
    pyramid: a fully convolutional proposal network (MTCNN's P-Net) over an image pyramid of the
      frame; candidate windows come out square (server/frames/work/cascade.py).
    refine: the candidates so far, cut square from the frame at the member's input size and
      batched, are scored and moved (R-Net, then O-Net); the last stage gives the detections
      and their keypoints.
    """

    kind: Literal["detect", "crop", "pyramid", "refine"]
    model: str
    # Empty: the member's active version, so hot swaps of a member apply to the pipeline.
    version: str = ""
    # crop: cut the detection's quadrilateral (perspective-corrected) or its box.
    crop: Literal["quad", "box"] = "quad"
    # crop: crops at least 1.5x taller than wide turn 90 degrees (vertical text lines).
    rotate_tall: bool = True
    # crop: detections whose new score is below this are dropped (PaddleOCR's drop_score).
    min_score: float = Field(default=0.0, ge=0, le=1)
    # pyramid and refine: thresholds, NMS and the member's outputs.
    cascade: CascadeStage = CascadeStage()


class FrameBudget(_Strict):
    """The most work one camera frame may cost a pipeline. A frame over it is answered with
    what fits (counted as truncated in metrics), never failed: one hostile or unusual frame (a
    page of text, an 8K photo) costs a bounded share of the device. 0: no limit."""

    # detect/crop pipelines: detections each crop stage reads, best scores first (PaddleOCR
    # reads a page of 280 lines in ~12 CPU-s on one core; 128 lines cost ~5).
    max_crops: int = Field(default=128, ge=0)
    # cascades: the region the cascade sees is scaled down to this longer side first (an 8K
    # frame costs 9.7 CPU-s and 1.6 GB at full size); faces smaller than the pyramid's
    # minimum at the reduced scale are missed.
    max_side: int = Field(default=1920, ge=0)


class PipelineSpec(_Strict):
    stages: Annotated[list[PipelineStage], Field(min_length=1)]
    budget: FrameBudget = FrameBudget()

    @model_validator(mode="after")
    def _detect_first(self) -> PipelineSpec:
        first, rest = self.stages[0].kind, [stage.kind for stage in self.stages[1:]]
        if first == "pyramid":
            if any(kind != "refine" for kind in rest):
                raise ValueError("a `pyramid` stage is followed by `refine` stages only")
            return self
        if "refine" in rest or "pyramid" in rest:
            raise ValueError("`refine` stages follow a `pyramid` stage, which comes first")
        if first != "detect":
            raise ValueError("the first pipeline stage must be `detect` or `pyramid`")
        if "detect" in rest:
            raise ValueError("only the first pipeline stage may be `detect`")
        return self


class Batching(_Strict):
    # 0 disables batching; the model's first dimension is then not a batch dimension.
    max_batch_size: int = Field(default=8, ge=0)
    max_queue_delay_us: int = Field(default=2000, ge=0)
    # Requests waiting for a batch; beyond this the model answers Overloaded.
    max_queue_size: int = Field(default=128, ge=1)


class RuntimePins(_Strict):
    """Choices the operator pinned; the hardware planner never overrides them."""

    providers: list[str] | None = None
    precision: Precision | None = None
    intra_op_threads: int | None = Field(default=None, ge=1)
    inter_op_threads: int | None = Field(default=None, ge=1)
    max_batch_size: int | None = Field(default=None, ge=0)
    max_queue_delay_us: int | None = Field(default=None, ge=0)
    instance_count: int | None = Field(default=None, ge=1)
    autotune: bool | None = None


class ModelManifest(_Strict):
    schema_version: Literal[1] = 1
    name: str
    version: str
    # pipeline: no model file of its own; `pipeline` chains other models of the repository.
    format: Literal["onnx", "torchscript", "pipeline"]
    # The model file, relative to the version directory ("" for a pipeline).
    model_file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocess: Preprocess | None = None
    postprocess: Postprocess = Postprocess()
    batching: Batching = Batching()
    runtime: RuntimePins = RuntimePins()
    # sha256 of every file in the version directory except the manifest itself.
    files: dict[str, str]
    description: str = ""
    # Free-form provenance written by tools (export verification report, ...).
    provenance: dict[str, Any] = Field(default_factory=dict)
    pipeline: PipelineSpec | None = None

    @field_validator("version")
    @classmethod
    def _version_is_number(cls, version: str) -> str:
        if not version.isdigit() or int(version) < 1:
            raise ValueError(f"version {version!r} must be a positive integer")
        return version

    @model_validator(mode="after")
    def _references_resolve(self) -> ModelManifest:
        input_names = {spec.name for spec in self.inputs}
        output_names = {spec.name for spec in self.outputs}
        if (self.format == "pipeline") != (self.pipeline is not None):
            raise ValueError("format `pipeline` and a `pipeline` section go together")
        if self.pipeline is not None:
            return self._pipeline_is_plain()
        if not self.inputs or not self.outputs:
            raise ValueError("a model needs at least one input and one output")
        if self.model_file not in self.files:
            raise ValueError(f"model_file {self.model_file!r} has no entry in `files`")
        if self.preprocess and self.preprocess.input not in input_names:
            raise ValueError(f"preprocess.input {self.preprocess.input!r} is not a model input")
        post = self.postprocess
        if post.output and post.output not in output_names:
            raise ValueError(f"postprocess.output {post.output!r} is not a model output")
        if post.labels_file and post.labels_file not in self.files:
            raise ValueError(f"labels_file {post.labels_file!r} has no entry in `files`")
        for relative in self.files:
            path = Path(relative)
            if path.is_absolute() or ".." in path.parts:
                raise ValueError(f"file {relative!r} escapes the version directory")
        return self

    def _pipeline_is_plain(self) -> ModelManifest:
        if self.model_file or self.files or self.preprocess:
            raise ValueError("a pipeline has no model file, files or preprocess of its own")
        return self

    def input_spec(self, name: str) -> TensorSpec:
        return next(spec for spec in self.inputs if spec.name == name)

    def output_spec(self, name: str) -> TensorSpec:
        return next(spec for spec in self.outputs if spec.name == name)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_directory(version_dir: Path) -> dict[str, str]:
    """sha256 of every file under `version_dir` except the manifest, keyed by relative path."""
    return {
        path.relative_to(version_dir).as_posix(): sha256_file(path)
        for path in sorted(version_dir.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILENAME
    }


def read_manifest(version_dir: Path) -> ModelManifest:
    """Parse the manifest of one version directory; does not check file hashes."""
    path = version_dir / MANIFEST_FILENAME
    # Errors reach clients: they name model/version, never a path on the server.
    where_file = f"{version_dir.parent.name}/{version_dir.name}/{MANIFEST_FILENAME}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidManifest(f"{where_file}: no manifest") from None
    except OSError as exc:
        raise InvalidManifest(f"{where_file}: unreadable ({exc.strerror})") from None
    try:
        manifest = ModelManifest.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "manifest"
        raise InvalidManifest(f"{where_file}: {where}: {first['msg']}") from None
    if manifest.version != version_dir.name:
        raise InvalidManifest(
            f"{where_file}: says version {manifest.version} "
            f"but lives in directory {version_dir.name}"
        )
    return manifest


def verify_files(version_dir: Path, manifest: ModelManifest) -> None:
    """Raise InvalidManifest unless every listed file exists with the listed sha256."""
    for relative, expected in manifest.files.items():
        path = version_dir / relative
        if not path.is_file():
            raise InvalidManifest(f"{manifest.name}/{manifest.version}: {relative} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise InvalidManifest(
                f"{manifest.name}/{manifest.version}: {relative} sha256 is {actual[:12]}..., "
                f"manifest expects {expected[:12]}... (corrupt or tampered file)"
            )


def write_manifest(version_dir: Path, manifest: ModelManifest) -> Path:
    path = version_dir / MANIFEST_FILENAME
    payload = manifest.model_dump(mode="json", exclude_defaults=False)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def load_labels(version_dir: Path, manifest: ModelManifest) -> list[str]:
    if manifest.postprocess.labels is not None:
        return list(manifest.postprocess.labels)
    if not manifest.postprocess.labels_file:
        return []
    text = (version_dir / manifest.postprocess.labels_file).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
