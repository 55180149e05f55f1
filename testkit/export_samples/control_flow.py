"""A module with data-dependent control flow: a recurrent loop over a variable-length sequence
and a branch on tensor values. Tracing bakes in one sequence length and one branch."""

from __future__ import annotations

import torch
from torch import nn

FEATURES = 4
HIDDEN = 8
CLASSES = 3


class GatedRecurrentHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = HIDDEN
        self.inp = nn.Linear(FEATURES, HIDDEN)
        self.rec = nn.Linear(HIDDEN, HIDDEN)
        self.head = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, L, FEATURES]
        state = torch.zeros(x.size(0), self.hidden)
        for step in x.unbind(1):
            state = torch.tanh(self.inp(step) + self.rec(state))
        if bool(state.mean() > 0):
            scores: torch.Tensor = self.head(state)
        else:
            scores = self.head(-state) * 2.0
        return scores


def gated_recurrent_head() -> GatedRecurrentHead:
    torch.manual_seed(7)
    return GatedRecurrentHead().eval()


class TwoLayerHead(nn.Module):
    """The same interface with a different architecture: its weights must not load above."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(FEATURES, HIDDEN * 2)
        self.out = nn.Linear(HIDDEN * 2, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores: torch.Tensor = self.out(torch.relu(self.inp(x.mean(1))))
        return scores


def broken_factory() -> nn.Module:
    raise ValueError("checkpoint config 'hidden_size' missing")
