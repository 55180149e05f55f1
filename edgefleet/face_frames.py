"""Camera frames with faces at known places, for the faces demo and benchmark.

scikit-image ships one photo of a person facing the camera (`astronaut`); its head is pasted at
up to five places and sizes onto the `rocket` photo (which has no face of its own) stretched to
the frame size. Deterministic: the same arguments give the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

# The astronaut's head (hair to collar) in skimage.data.astronaut(): rows 20..220, columns
# 130..310.
HEAD_ROWS = (20, 220)
HEAD_COLUMNS = (130, 310)
MAX_FACES = 5
# Relative head sizes of the five places, the first the largest.
_SIZES = (1.0, 0.7, 0.5, 0.85, 0.6)


@dataclass(frozen=True)
class FaceFrame:
    image: npt.NDArray[np.uint8]  # RGB, height x width x 3
    # Where each head was pasted: x_min, y_min, x_max, y_max (the face lies inside).
    heads: list[tuple[int, int, int, int]]


def photo(name: str) -> npt.NDArray[np.uint8]:
    """An RGB photo from scikit-image's bundled data."""
    from skimage import data

    image: npt.NDArray[np.uint8] = getattr(data, name)()
    return image


def head() -> npt.NDArray[np.uint8]:
    image = photo("astronaut")
    return image[HEAD_ROWS[0] : HEAD_ROWS[1], HEAD_COLUMNS[0] : HEAD_COLUMNS[1]]


def frame_with_faces(width: int, height: int, faces: int) -> FaceFrame:
    """A width x height RGB frame with `faces` (0..5) heads side by side, alternately near the
    top and the bottom, each in its own fifth of the width."""
    if not 0 <= faces <= MAX_FACES:
        raise ValueError(f"faces must be between 0 and {MAX_FACES}")
    frame: npt.NDArray[np.uint8] = np.ascontiguousarray(
        cv2.resize(photo("rocket"), (width, height), interpolation=cv2.INTER_AREA),
        np.uint8,
    )
    source = head()
    aspect = source.shape[1] / source.shape[0]
    column = width / MAX_FACES
    # The largest head fills most of its column, and at most 45% of the frame's height.
    largest = min(0.45 * height, 0.95 * column / aspect)
    heads = []
    for index in range(faces):
        head_h = max(int(largest * _SIZES[index]), 24)
        head_w = int(head_h * aspect)
        x = int(index * column + (column - head_w) / 2)
        margin = int(0.06 * height)
        y = margin if index % 2 == 0 else height - margin - head_h
        frame[y : y + head_h, x : x + head_w] = cv2.resize(
            source, (head_w, head_h), interpolation=cv2.INTER_AREA
        )
        heads.append((x, y, x + head_w, y + head_h))
    return FaceFrame(frame, heads)
