"""A tiny encoder-decoder segmenter: image sides must be multiples of 8 (the skip connection
adds the upsampled features back onto the input), as in real U-Nets and detectors."""

from __future__ import annotations

import torch
from torch import nn


class TinySegmenter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 3, 3, stride=2, padding=1),
        )  # fmt: skip
        self.upsample = nn.Upsample(scale_factor=8, mode="nearest")
        self.head = nn.Conv2d(3, 2, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # [N, 3, H, W] -> [N, 2, H, W]
        mask: torch.Tensor = self.head(self.upsample(self.encode(image)) + image)
        return mask


def tiny_segmenter() -> TinySegmenter:
    torch.manual_seed(11)
    return TinySegmenter().eval()
