"""Multi-object tracking sequences with ground truth, built from real photos.

Real faces from scikit-image (the astronaut's head, the cameraman's head, and faces of the
Labeled Faces in the Wild subset it bundles) are pasted onto the `rocket` photo (no face of its
own) and moved along known piecewise-linear paths: several at once, paths that cross, faces that
pass behind one another or behind an occluder (a crop of the `coffee` photo), faces that enter
and leave the frame. Everything is deterministic: the same sequence gives the same pixels.

Ground truth is the face's box, not the pasted patch: the detector boxes the face inside the
patch, so `face_fraction` (where the face lies in a sprite, as fractions of its width and
height) is measured once with the detector on a still (`calibration_frame`) and then scales with
the sprite. A face counts as present in a frame when at least `MIN_VISIBLE` of its box is seen
(inside the frame and not covered by a patch drawn over it), as MOT benchmarks filter by
visibility. Line crossings are counted on the whole path, frame to frame, at the bottom centre of
the face's box (the server's default anchor), with the server's sign: from the left of
start->end to its right, as seen in the image, is IN.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from testkit.camera import collect, encode

Image = npt.NDArray[np.uint8]
Box = tuple[float, float, float, float]
Point = tuple[float, float]

WIDTH, HEIGHT = 640, 480
FPS = 15.0
MIN_VISIBLE = 0.5
BACKGROUND = "rocket"
# Where each face lies in its source photo (rows, columns), hair to chin with some margin.
_CROPS: dict[str, tuple[str, tuple[int, int], tuple[int, int]]] = {
    "astronaut": ("astronaut", (20, 220), (130, 310)),
    "cameraman": ("camera", (55, 215), (150, 275)),
}
# Faces of the Labeled Faces in the Wild subset (25 x 25 grey crops, upscaled).
_LFW = {"lfw0": 0, "lfw3": 3, "lfw6": 6}
SPRITES = (*_CROPS, *_LFW)


def _skimage(name: str) -> Image:
    from skimage import data

    image: Image = getattr(data, name)()
    return image


@cache
def sprite(name: str) -> Image:
    """The RGB face patch called `name` (one of SPRITES), at its source resolution."""
    if name in _CROPS:
        photo, rows, columns = _CROPS[name]
        image = _skimage(photo)[rows[0] : rows[1], columns[0] : columns[1]]
    else:
        from skimage import data

        image = (data.lfw_subset()[_LFW[name]] * 255).round().astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image)


@cache
def background() -> Image:
    return np.ascontiguousarray(
        cv2.resize(_skimage(BACKGROUND), (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
    )


@cache
def occluder(width: int, height: int) -> Image:
    """A patch of a real photo (the `coffee` cup) to pass behind."""
    return np.ascontiguousarray(
        cv2.resize(_skimage("coffee"), (width, height), interpolation=cv2.INTER_AREA)
    )


@dataclass(frozen=True)
class Mover:
    """A face moving along `path`: (frame, centre x, centre y) keyframes, linear in between;
    it exists from the first keyframe's frame to the last's. Later movers are drawn over
    earlier ones (`depth` orders them; higher is nearer)."""

    name: str
    sprite: str
    height: int  # of the patch, pixels
    path: tuple[tuple[int, float, float], ...]
    depth: int = 0

    @property
    def frames(self) -> range:
        return range(self.path[0][0], self.path[-1][0] + 1)

    def centre(self, frame: int) -> Point:
        times = [p[0] for p in self.path]
        return (
            float(np.interp(frame, times, [p[1] for p in self.path])),
            float(np.interp(frame, times, [p[2] for p in self.path])),
        )

    def patch_box(self, frame: int) -> tuple[int, int, int, int]:
        source = sprite(self.sprite)
        width = int(round(self.height * source.shape[1] / source.shape[0]))
        cx, cy = self.centre(frame)
        x, y = int(round(cx - width / 2)), int(round(cy - self.height / 2))
        return (x, y, x + width, y + self.height)


@dataclass(frozen=True)
class Occluder:
    box: tuple[int, int, int, int]  # drawn over every mover with depth below `depth`
    depth: int = 100


@dataclass(frozen=True)
class TruthLine:
    name: str
    start: Point
    end: Point


@dataclass(frozen=True)
class MotSequence:
    name: str
    length: int  # frames
    movers: tuple[Mover, ...]
    occluders: tuple[Occluder, ...] = ()
    lines: tuple[TruthLine, ...] = ()
    description: str = ""


@dataclass
class GroundTruth:
    """Per frame: the visible faces' boxes by mover index; per line: (in, out) counts."""

    boxes: list[dict[int, Box]]
    line_counts: dict[str, tuple[int, int]] = field(default_factory=dict)


def _paste(frame: Image, patch: Image, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    resized = cv2.resize(patch, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x1, frame.shape[1]), min(y1, frame.shape[0])
    if cx0 >= cx1 or cy0 >= cy1:
        return
    frame[cy0:cy1, cx0:cx1] = resized[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]


def _layers(sequence: MotSequence, frame: int) -> list[Mover | Occluder]:
    """What is drawn in this frame, far to near (ties: movers first, in their order)."""
    movers: list[Mover | Occluder] = [m for m in sequence.movers if frame in m.frames]
    return sorted([*movers, *sequence.occluders], key=lambda item: item.depth)


def render(sequence: MotSequence, frame: int) -> tuple[Image, npt.NDArray[np.int32]]:
    """The RGB frame and, per pixel, the mover seen there (-1: background or an occluder)."""
    image = background().copy()
    owner = np.full((HEIGHT, WIDTH), -1, dtype=np.int32)
    for item in _layers(sequence, frame):
        if isinstance(item, Occluder):
            box = item.box
            _paste(image, occluder(box[2] - box[0], box[3] - box[1]), box)
            value = -1
        else:
            box = item.patch_box(frame)
            _paste(image, sprite(item.sprite), box)
            value = sequence.movers.index(item)
        x0, y0, x1, y1 = (max(box[0], 0), max(box[1], 0), min(box[2], WIDTH), min(box[3], HEIGHT))
        if x0 < x1 and y0 < y1:
            owner[y0:y1, x0:x1] = value
    return image, owner


def frames(sequence: MotSequence) -> list[Image]:
    return [render(sequence, index)[0] for index in range(sequence.length)]


def face_box(mover: Mover, frame: int, fractions: Mapping[str, Box]) -> Box:
    x0, y0, x1, y1 = mover.patch_box(frame)
    fx0, fy0, fx1, fy1 = fractions[mover.sprite]
    w, h = x1 - x0, y1 - y0
    return (x0 + fx0 * w, y0 + fy0 * h, x0 + fx1 * w, y0 + fy1 * h)


def _side(line: TruthLine, point: Point) -> float:
    (sx, sy), (ex, ey) = line.start, line.end
    return (ex - sx) * (point[1] - sy) - (ey - sy) * (point[0] - sx)


def _crosses(a: Point, b: Point, line: TruthLine) -> bool:
    """Segment a-b crosses the line's segment (strictly)."""
    d1, d2 = _side(line, a), _side(line, b)
    ab = TruthLine("", a, b)
    d3, d4 = _side(ab, line.start), _side(ab, line.end)
    return d1 * d2 < 0 and d3 * d4 < 0


def ground_truth(sequence: MotSequence, fractions: Mapping[str, Box]) -> GroundTruth:
    boxes: list[dict[int, Box]] = []
    for frame in range(sequence.length):
        _, owner = render(sequence, frame)
        seen: dict[int, Box] = {}
        for index, mover in enumerate(sequence.movers):
            if frame not in mover.frames:
                continue
            box = face_box(mover, frame, fractions)
            area = (box[2] - box[0]) * (box[3] - box[1])
            x0, y0 = max(int(round(box[0])), 0), max(int(round(box[1])), 0)
            x1, y1 = min(int(round(box[2])), WIDTH), min(int(round(box[3])), HEIGHT)
            visible = np.count_nonzero(owner[y0:y1, x0:x1] == index) if x0 < x1 and y0 < y1 else 0
            if visible >= MIN_VISIBLE * area:
                seen[index] = box
        boxes.append(seen)
    counts: dict[str, tuple[int, int]] = {}
    for line in sequence.lines:
        ins = outs = 0
        for mover in sequence.movers:
            anchors = [_anchor(face_box(mover, f, fractions)) for f in mover.frames]
            for a, b in zip(anchors, anchors[1:], strict=False):
                if _crosses(a, b, line):
                    # Image coordinates (y down): a positive cross product is the right side.
                    if _side(line, b) > 0:
                        ins += 1
                    else:
                        outs += 1
        counts[line.name] = (ins, outs)
    return GroundTruth(boxes, counts)


def _anchor(box: Box) -> Point:
    return ((box[0] + box[2]) / 2, box[3])


def calibration_frame(name: str, height: int = 150) -> tuple[Image, tuple[int, int, int, int]]:
    """The sprite alone on the background, centred: the detector's box on it gives where the
    face lies in the patch (`fractions_from`)."""
    mover = Mover(name, name, height, ((0, WIDTH / 2, HEIGHT / 2), (0, WIDTH / 2, HEIGHT / 2)))
    sequence = MotSequence("calibrate", 1, (mover,))
    return render(sequence, 0)[0], mover.patch_box(0)


def fractions_from(patch: tuple[int, int, int, int], face: Box) -> Box:
    x0, y0, x1, y1 = patch
    w, h = x1 - x0, y1 - y0
    return ((face[0] - x0) / w, (face[1] - y0) / h, (face[2] - x0) / w, (face[3] - y0) / h)


def _mover(
    name: str, sprite_name: str, height: int, *path: tuple[int, float, float], depth: int = 0
) -> Mover:
    return Mover(name, sprite_name, height, tuple(path), depth)


def sequences() -> list[MotSequence]:
    """The benchmark's sequences (15 fps, 640x480)."""
    crossing = MotSequence(
        "crossing",
        60,
        (
            # Left to right and right to left at nearly the same height: the astronaut passes
            # in front of the cameraman, who is hidden for a few frames.
            _mover("a", "astronaut", 130, (0, 60, 220), (59, 590, 240), depth=2),
            _mover("b", "cameraman", 130, (0, 590, 250), (59, 60, 230), depth=1),
            # A third face going down the left side, crossing nobody.
            _mover("c", "lfw0", 110, (10, 110, 80), (59, 130, 400)),
        ),
        lines=(TruthLine("door", (320, 470), (320, 10)),),
        description="two faces cross head-on, the nearer hides the other; a third walks down",
    )
    occluded = MotSequence(
        "occluder",
        75,
        (
            # Behind the cup for about 8 frames, then out on the other side.
            _mover("a", "astronaut", 120, (0, 40, 150), (74, 600, 170)),
            # Enters from the right edge, leaves at the bottom.
            _mover("b", "lfw3", 110, (5, 700, 340), (40, 420, 330), (74, 380, 560)),
            # Diagonal, crossing a's path in front of it, leaving at the top.
            _mover("c", "lfw6", 110, (15, 120, 420), (74, 520, -80), depth=3),
        ),
        occluders=(Occluder((270, 90, 360, 250), depth=2),),
        lines=(
            TruthLine("gate", (200, 470), (200, 10)),
            TruthLine("hall", (10, 300), (630, 300)),
        ),
        description="one face passes behind an occluder, one enters and leaves, paths cross",
    )
    crowd = MotSequence(
        "crowd",
        90,
        (
            _mover("a", "astronaut", 120, (0, -60, 120), (89, 700, 160), depth=1),
            _mover("b", "cameraman", 120, (10, 700, 150), (89, -60, 130), depth=2),
            _mover("c", "lfw0", 100, (0, 100, 560), (60, 400, -60)),
            _mover("d", "lfw3", 100, (20, 560, 560), (89, 250, 140), depth=3),
            _mover("e", "lfw6", 100, (30, 200, 380), (60, 500, 380), (89, 500, 380)),
        ),
        lines=(
            TruthLine("left", (220, 470), (220, 10)),
            TruthLine("right", (440, 10), (440, 470)),
        ),
        description="five faces: two cross head-on, three diagonal or stopping, all entering "
        "or leaving at the edges",
    )
    return [crossing, occluded, crowd]


def short_crossing() -> MotSequence:
    """The system test's sequence: two faces cross head-on over a line, a third crosses it
    below them the same way as the first (so a swapped direction shows), 36 frames."""
    return MotSequence(
        "short-crossing",
        36,
        (
            _mover("a", "astronaut", 130, (0, 80, 200), (35, 560, 210), depth=2),
            _mover("b", "cameraman", 130, (0, 560, 210), (35, 80, 200), depth=1),
            _mover("c", "lfw0", 100, (0, 150, 390), (35, 470, 400)),
        ),
        lines=(TruthLine("door", (320, 470), (320, 10)),),
    )


def keep_like_scheduler(length: int, seed: int = 0) -> list[int]:
    """About half the frames, as the freshness scheduler leaves them when the model answers at
    half the camera's rate: gaps of 1 to 3 frames (2 on average), the first frame kept."""
    rng = np.random.default_rng(seed)
    kept = [0]
    while True:
        step = int(rng.choice([1, 2, 3]))
        if kept[-1] + step >= length:
            return kept
        kept.append(kept[-1] + step)


__all__ = [
    "FPS",
    "HEIGHT",
    "WIDTH",
    "GroundTruth",
    "MotSequence",
    "Mover",
    "calibration_frame",
    "fractions_from",
    "frames",
    "ground_truth",
    "keep_like_scheduler",
    "sequences",
    "short_crossing",
]


FRAME_NS = int(1e9 / FPS)


async def stream_frames(
    stub: Any,
    images: Sequence[npt.NDArray[np.uint8]],
    kept: Sequence[int],
    options: fs.AnalyticsOptions | None,
    stream_id: str = "mot",
) -> list[Any]:
    """The `faces` stream's results for the frames `kept`, in order (tracking on when `options`
    is given): one frame at a time (BLOCK, max_in_flight 1), so the server drops none and the
    caller decides which frames are skipped; capture times are the sequence's own clock."""

    async def requests() -> AsyncIterator[fs.StreamRequest]:
        open_ = fs.StreamOpen(
            model_name="faces", encoding=fs.FRAME_ENCODING_RAW_RGB, stream_id=stream_id,
            overload_policy=fs.OVERLOAD_POLICY_BLOCK, max_in_flight=1,
        )  # fmt: skip
        if options is not None:
            open_.analytics.CopyFrom(options)
        yield fs.StreamRequest(open=open_)
        start = time.time_ns()
        for index in kept:
            data, width, height = encode(images[index], fs.FRAME_ENCODING_RAW_RGB)
            yield fs.StreamRequest(
                frame=fs.Frame(
                    sequence=index, capture_time_unix_ns=start + index * FRAME_NS,
                    data=data, width=width, height=height,
                )
            )  # fmt: skip

    seen = await collect(stub.Stream(requests()))
    assert not seen["error"] and not seen["dropped"], (seen["error"], seen["dropped"])
    results = sorted(seen["result"], key=lambda r: r.sequence)
    assert [r.sequence for r in results] == list(kept)
    return results
