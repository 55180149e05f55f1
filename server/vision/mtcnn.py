"""The MTCNN face-detection cascade (Zhang et al., 2016) in numpy and OpenCV, without torch.

The three networks run wherever the caller runs them (the server's batchers, or plain callables
in `detect_faces`); this module does everything between them, one function per step, so an
asynchronous pipeline runner can await each network call and time each stage:

1. `pyramid`: the frame scaled so that faces from `min_face_size` pixels up fill P-Net's 12x12
   window, one level per `scale_factor` step, normalised to NCHW float32;
2. `proposals`: P-Net's probability map to boxes (threshold, NMS per level, NMS over all
   levels, box regression, made square);
3. `crops`: candidate boxes cut from the frame (zero-padded where they leave it) and resized
   to 24x24 for R-Net, then 48x48 for O-Net, as one batch;
4. `refine`: R-Net's scores and offsets (threshold, NMS, regression, square);
5. `finish`: O-Net's scores, offsets and 5 landmarks to the final faces in source pixels.

Boxes are float32 `[N, 4]` (x_min, y_min, x_max, y_max) in continuous source-pixel coordinates
(a box covering pixel columns 10..19 is 10..20). Every stage caps its candidates by score
before NMS, so a frame full of face-like texture stays bounded in time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from server.vision import pixels

FloatArray = npt.NDArray[np.float32]
# A network: its input batch in, its outputs in the manifest's order out.
Network = Callable[[FloatArray], Sequence[npt.NDArray[np.float32]]]

PNET_CELL = 12
PNET_STRIDE = 2
RNET_SIZE = 24
ONET_SIZE = 48
# The networks were trained on RGB (pixel - 127.5) / 128.
PIXEL_MEAN = 127.5
PIXEL_SCALE = 1.0 / 128.0


@dataclass(frozen=True)
class CascadeOptions:
    """MTCNN's usual defaults (the paper's code and facenet-pytorch)."""

    # The smallest face, in source pixels, the pyramid looks for.
    min_face_size: float = 20.0
    # Each pyramid level is this much smaller than the one before.
    scale_factor: float = 0.709
    # Face probability each stage needs: P-Net, R-Net, O-Net.
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    # IoU above which NMS drops the weaker box: within a P-Net level, over all levels, after
    # R-Net; after O-Net the overlap is measured over the smaller box ("Min"), so a box inside
    # another face's box goes too.
    nms_level: float = 0.5
    nms_pnet: float = 0.7
    nms_rnet: float = 0.7
    nms_onet: float = 0.7
    # Candidates kept (best first) before each NMS, and into each of R-Net and O-Net.
    max_level_candidates: int = 2000
    max_rnet_candidates: int = 512
    max_onet_candidates: int = 128
    # At most this many pyramid levels (the smallest faces' levels come first).
    max_pyramid_levels: int = 16

    def __post_init__(self) -> None:
        if self.min_face_size < PNET_CELL:
            raise ValueError(f"min_face_size must be at least {PNET_CELL} pixels")
        if not 0.1 <= self.scale_factor < 1.0:
            raise ValueError("scale_factor must be in [0.1, 1)")
        if not all(0.0 <= t <= 1.0 for t in self.thresholds):
            raise ValueError("thresholds must lie in [0, 1]")


@dataclass(frozen=True)
class PyramidLevel:
    scale: float
    # [1, 3, h, w] normalised P-Net input.
    input: FloatArray


@dataclass(frozen=True)
class Candidates:
    """Boxes between stages: square boxes with whole-pixel corners, and their scores."""

    boxes: FloatArray
    scores: FloatArray

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclass(frozen=True)
class Faces:
    boxes: FloatArray  # [N, 4] x_min, y_min, x_max, y_max in source pixels
    scores: FloatArray  # [N] O-Net face probability
    landmarks: FloatArray  # [N, 5, 2] (x, y): left eye, right eye, nose, mouth left, right

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def empty_candidates() -> Candidates:
    return Candidates(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))


def empty_faces() -> Faces:
    return Faces(
        np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32)
    )


def pyramid_scales(height: int, width: int, options: CascadeOptions) -> list[float]:
    """Scale factors from the one that maps `min_face_size` onto 12 pixels, down to the one
    where the short side still holds one 12x12 window."""
    first = PNET_CELL / options.min_face_size
    scales: list[float] = []
    scale = first
    while min(height, width) * scale >= PNET_CELL and len(scales) < options.max_pyramid_levels:
        scales.append(scale)
        scale *= options.scale_factor
    return scales


def normalise(images: Sequence[npt.NDArray[np.uint8]], color: str = "rgb") -> FloatArray:
    """uint8 HWC images of one size (RGB, or BGR turned RGB on the way) to the networks'
    NCHW float32 input."""
    return pixels.blob(list(images), PIXEL_SCALE, PIXEL_MEAN, swap=color == "bgr")


def pyramid(
    image: npt.NDArray[np.uint8], options: CascadeOptions, color: str = "rgb"
) -> list[PyramidLevel]:
    """P-Net's inputs, one per scale. Each level is resized from the one before (area
    interpolation), which costs a fraction of resizing the full frame every time."""
    height, width = image.shape[:2]
    levels = []
    source = image
    for scale in pyramid_scales(height, width, options):
        size = (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale)))
        source = np.asarray(pixels.scale(source, *size, area=True), np.uint8)
        levels.append(PyramidLevel(scale=scale, input=normalise([source], color)))
    return levels


def nms(
    boxes: FloatArray, scores: FloatArray, threshold: float, mode: Literal["union", "min"]
) -> npt.NDArray[np.intp]:
    """Greedy non-maximum suppression; the kept indices, best first. One vectorised pass per
    kept box, so the cost follows the number of faces, not of candidates squared."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.maximum(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0)
        height = np.maximum(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0)
        inter = width * height
        if mode == "min":
            overlap = inter / np.maximum(np.minimum(areas[best], areas[rest]), 1e-6)
        else:
            overlap = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-6)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.intp)


def _best(scores: FloatArray, limit: int) -> npt.NDArray[np.intp]:
    """Indices of at most `limit` highest scores (all of them, unordered, when fewer)."""
    if scores.shape[0] <= limit:
        return np.arange(scores.shape[0])
    return np.argpartition(-scores, limit - 1)[:limit]


def regress(boxes: FloatArray, offsets: FloatArray) -> FloatArray:
    """Move each corner by its offset times the box's width or height."""
    size = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
    moved: FloatArray = (boxes + offsets * size).astype(np.float32)
    return moved


def square(boxes: FloatArray) -> FloatArray:
    """The square with each box's centre and longer side, snapped to whole pixels."""
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    side = np.maximum(np.round(side), 1.0)
    x1 = np.round((boxes[:, 0] + boxes[:, 2] - side) / 2)
    y1 = np.round((boxes[:, 1] + boxes[:, 3] - side) / 2)
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1).astype(np.float32)


def proposals(
    levels: Sequence[PyramidLevel],
    outputs: Sequence[tuple[FloatArray, FloatArray]],
    options: CascadeOptions,
) -> Candidates:
    """P-Net's (prob [1,2,h,w], reg [1,4,h,w]) per level to square candidate boxes."""
    all_boxes, all_scores = [], []
    for level, (prob, reg) in zip(levels, outputs, strict=True):
        face = prob[0, 1]
        ys, xs = np.nonzero(face >= options.thresholds[0])
        if ys.size == 0:
            continue
        scores = face[ys, xs]
        best = _best(scores, options.max_level_candidates)
        ys, xs, scores = ys[best], xs[best], scores[best]
        corner = np.stack([xs, ys], axis=1).astype(np.float32) * PNET_STRIDE
        windows = (np.concatenate([corner, corner + PNET_CELL], axis=1) / level.scale).astype(
            np.float32
        )
        offsets = reg[0][:, ys, xs].T
        keep = nms(windows, scores, options.nms_level, "union")
        all_boxes.append(regress(windows[keep], offsets[keep]))
        all_scores.append(scores[keep])
    if not all_boxes:
        return empty_candidates()
    boxes = np.concatenate(all_boxes)
    scores = np.concatenate(all_scores).astype(np.float32)
    best = _best(scores, options.max_level_candidates)
    boxes, scores = boxes[best], scores[best]
    keep = nms(boxes, scores, options.nms_pnet, "union")[: options.max_rnet_candidates]
    return Candidates(square(boxes[keep]), scores[keep])


def crops(
    image: npt.NDArray[np.uint8], candidates: Candidates, size: int, color: str = "rgb"
) -> FloatArray:
    """Each candidate's square cut from the frame, zero outside it, resized to size x size:
    one [N, 3, size, size] batch."""
    height, width = image.shape[:2]
    patches: list[npt.NDArray[np.uint8]] = []
    for x1, y1, x2, y2 in candidates.boxes.astype(np.int64):
        side = int(x2 - x1)
        patch = np.zeros((side, side, 3), np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
        if sx2 > sx1 and sy2 > sy1:
            patch[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = image[sy1:sy2, sx1:sx2]
        patches.append(np.asarray(pixels.scale(patch, size, size, area=True)))
    if not patches:
        return np.zeros((0, 3, size, size), np.float32)
    return normalise(patches, color)


def visible(candidates: Candidates, height: int, width: int) -> Candidates:
    """Candidates that overlap the frame (a regressed box can leave it entirely)."""
    boxes = candidates.boxes
    inside = (boxes[:, 2] > 0) & (boxes[:, 3] > 0) & (boxes[:, 0] < width) & (boxes[:, 1] < height)
    return Candidates(boxes[inside], candidates.scores[inside])


def refine(
    candidates: Candidates,
    prob: FloatArray,
    reg: FloatArray,
    threshold: float,
    nms_iou: float,
    max_out: int,
) -> Candidates:
    """A middle stage's verdict on its crops (R-Net): threshold, NMS, regression, square."""
    scores = prob[:, 1]
    passed = scores > threshold
    boxes, scores, offsets = candidates.boxes[passed], scores[passed], reg[passed]
    keep = nms(boxes, scores, nms_iou, "union")[:max_out]
    return Candidates(square(regress(boxes[keep], offsets[keep])), scores[keep].astype(np.float32))


def finish(
    candidates: Candidates,
    prob: FloatArray,
    reg: FloatArray,
    landmarks: FloatArray | None,
    threshold: float,
    nms_iou: float,
    nms_mode: Literal["union", "min"],
    height: int,
    width: int,
) -> Faces:
    """The last stage's verdict on its crops (O-Net): threshold, landmarks from the crop's box,
    box regression, NMS (MTCNN measures overlap over the smaller box, "min"); boxes clipped to
    the frame. Without a landmarks output the faces have none (shape [N, 0, 2])."""
    scores = prob[:, 1]
    passed = scores > threshold
    boxes, scores = candidates.boxes[passed], scores[passed].astype(np.float32)
    if landmarks is None:
        points = np.zeros((boxes.shape[0], 0, 2), np.float32)
    else:
        sides = (boxes[:, 2:] - boxes[:, :2])[:, None, :]
        relative = np.stack([landmarks[passed, :5], landmarks[passed, 5:]], axis=2)
        points = (boxes[:, None, :2] + relative * sides).astype(np.float32)
    boxes = regress(boxes, reg[passed])
    keep = nms(boxes, scores, nms_iou, nms_mode)
    boxes = np.clip(boxes[keep], 0, [width, height, width, height]).astype(np.float32)
    return Faces(boxes, scores[keep], points[keep])


@dataclass
class StageTimes:
    """Seconds spent per stage of one frame, networks and the numpy between them."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - started
        return now


def run_batched(network: Network, batch: FloatArray, max_batch: int) -> list[FloatArray]:
    """A network over a batch in pieces of at most `max_batch`, outputs joined."""
    pieces = [
        network(batch[start : start + max_batch]) for start in range(0, len(batch), max_batch)
    ]
    return [np.concatenate([piece[i] for piece in pieces]) for i in range(len(pieces[0]))]


def detect_faces(
    image: npt.NDArray[np.uint8],
    pnet: Network,
    rnet: Network,
    onet: Network,
    options: CascadeOptions | None = None,
    times: StageTimes | None = None,
    max_batch: int = 64,
    color: str = "rgb",
) -> Faces:
    """The whole cascade on one uint8 HWC frame (RGB, or BGR with color="bgr"), calling the
    networks in this thread."""
    options = options or CascadeOptions()
    times = times or StageTimes()
    height, width = image.shape[:2]
    started = time.perf_counter()
    levels = pyramid(image, options, color)
    started = times.add("pyramid", started)
    outputs = [tuple(pnet(level.input)[:2]) for level in levels]
    started = times.add("pnet", started)
    candidates = visible(proposals(levels, outputs, options), height, width)  # type: ignore[arg-type]
    started = times.add("proposals", started)
    if not len(candidates):
        return empty_faces()
    batch = crops(image, candidates, RNET_SIZE, color)
    started = times.add("rnet_crops", started)
    prob, reg = run_batched(rnet, batch, max_batch)[:2]
    started = times.add("rnet", started)
    candidates = refine(
        candidates, prob, reg, options.thresholds[1], options.nms_rnet, options.max_onet_candidates
    )
    candidates = visible(candidates, height, width)
    started = times.add("refine", started)
    if not len(candidates):
        return empty_faces()
    batch = crops(image, candidates, ONET_SIZE, color)
    started = times.add("onet_crops", started)
    prob, reg, landmarks = run_batched(onet, batch, max_batch)[:3]
    started = times.add("onet", started)
    faces = finish(
        candidates, prob, reg, landmarks, options.thresholds[2], options.nms_onet, "min",
        height, width,
    )  # fmt: skip
    times.add("finish", started)
    return faces
