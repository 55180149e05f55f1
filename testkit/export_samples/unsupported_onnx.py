"""A spectral feature head: `torch.fft.rfft` has no ONNX export in the TorchScript-based
exporter, but TorchScript runs it fine."""

from __future__ import annotations

import torch
from torch import nn

SAMPLES = 16


class SpectralHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(SAMPLES // 2 + 1, 2)

    def forward(self, signal: torch.Tensor) -> torch.Tensor:  # [N, SAMPLES]
        scores: torch.Tensor = self.head(torch.fft.rfft(signal, dim=-1).abs())
        return scores


def spectral_head() -> nn.Module:
    torch.manual_seed(3)
    return SpectralHead().eval()
