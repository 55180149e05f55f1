"""Our MTCNN networks against a plain reference written here from the same state dicts.

The reference is the published architecture spelled out with torch.nn.functional, layer by
layer, reading the pretrained tensors directly: no module of ours is involved. The exported ONNX
and TorchScript files in the default repository must agree with our modules too.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from edgefleet.export.mtcnn import ONet, PNet, RNet
from testkit.faces import MODELS, onnx_path, weights_path

TOLERANCE = 1e-4


def state(net: str) -> dict[str, torch.Tensor]:
    loaded = torch.load(weights_path(net), map_location="cpu", weights_only=True)
    return dict(loaded)


def conv_prelu(x: torch.Tensor, w: dict[str, torch.Tensor], conv: str, prelu: str) -> torch.Tensor:
    x = F.conv2d(x, w[f"{conv}.weight"], w[f"{conv}.bias"])
    return F.prelu(x, w[f"{prelu}.weight"])


def caffe_flatten(x: torch.Tensor) -> torch.Tensor:
    # The Caffe-converted dense weights read the feature map column-major: (W, H, C).
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


def reference_pnet(x: torch.Tensor, w: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    x = conv_prelu(x, w, "conv1", "prelu1")
    x = F.max_pool2d(x, 2, 2, ceil_mode=True)
    x = conv_prelu(x, w, "conv2", "prelu2")
    x = conv_prelu(x, w, "conv3", "prelu3")
    prob = F.softmax(F.conv2d(x, w["conv4_1.weight"], w["conv4_1.bias"]), dim=1)
    return [prob, F.conv2d(x, w["conv4_2.weight"], w["conv4_2.bias"])]


def reference_rnet(x: torch.Tensor, w: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    x = F.max_pool2d(conv_prelu(x, w, "conv1", "prelu1"), 3, 2, ceil_mode=True)
    x = F.max_pool2d(conv_prelu(x, w, "conv2", "prelu2"), 3, 2, ceil_mode=True)
    x = caffe_flatten(conv_prelu(x, w, "conv3", "prelu3"))
    x = F.prelu(F.linear(x, w["dense4.weight"], w["dense4.bias"]), w["prelu4.weight"])
    prob = F.softmax(F.linear(x, w["dense5_1.weight"], w["dense5_1.bias"]), dim=1)
    return [prob, F.linear(x, w["dense5_2.weight"], w["dense5_2.bias"])]


def reference_onet(x: torch.Tensor, w: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    x = F.max_pool2d(conv_prelu(x, w, "conv1", "prelu1"), 3, 2, ceil_mode=True)
    x = F.max_pool2d(conv_prelu(x, w, "conv2", "prelu2"), 3, 2, ceil_mode=True)
    x = F.max_pool2d(conv_prelu(x, w, "conv3", "prelu3"), 2, 2, ceil_mode=True)
    x = caffe_flatten(conv_prelu(x, w, "conv4", "prelu4"))
    x = F.prelu(F.linear(x, w["dense5.weight"], w["dense5.bias"]), w["prelu5.weight"])
    prob = F.softmax(F.linear(x, w["dense6_1.weight"], w["dense6_1.bias"]), dim=1)
    return [
        prob,
        F.linear(x, w["dense6_2.weight"], w["dense6_2.bias"]),
        F.linear(x, w["dense6_3.weight"], w["dense6_3.bias"]),
    ]


NETWORKS = {
    "pnet": (PNet, reference_pnet),
    "rnet": (RNet, reference_rnet),
    "onet": (ONet, reference_onet),
}
# Inputs as the cascade sends them: normalised pixels of several sizes (P-Net: odd and even
# sides, the ceil-mode pooling's edge cases) and batches.
SHAPES = {
    "pnet": [(1, 3, 12, 12), (1, 3, 45, 61), (2, 3, 101, 180), (1, 3, 360, 640)],
    "rnet": [(1, 3, 24, 24), (37, 3, 24, 24)],
    "onet": [(1, 3, 48, 48), (9, 3, 48, 48)],
}


def normalised_pixels(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, shape, generator=generator).float()
    return (pixels - 127.5) / 128.0


def ours(net: str) -> torch.nn.Module:
    cls, _ = NETWORKS[net]
    module = cls()
    module.load_state_dict(state(net), strict=True)
    return module.eval()


@pytest.mark.parametrize("net", list(NETWORKS))
def test_our_network_matches_the_plain_reference(net):
    module, reference = ours(net), NETWORKS[net][1]
    weights = state(net)
    for seed, shape in enumerate(SHAPES[net]):
        x = normalised_pixels(shape, seed)
        with torch.inference_mode():
            got, want = module(x), reference(x, weights)
        assert len(got) == len(want)
        for output, (a, b) in enumerate(zip(got, want, strict=True)):
            assert a.shape == b.shape, (net, shape, output)
            diff = (a - b).abs().max().item()
            assert diff < TOLERANCE, f"{net} {shape} output {output}: max abs diff {diff}"


@pytest.mark.parametrize("net", list(NETWORKS))
def test_exported_onnx_and_torchscript_match_torch(net):
    module = ours(net)
    session = ort.InferenceSession(str(onnx_path(net)), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(MODELS / f"mtcnn_{net}_torchscript" / "1" / "model.pt"))
    for seed, shape in enumerate(SHAPES[net]):
        x = normalised_pixels(shape, 100 + seed)
        with torch.inference_mode():
            want = [t.numpy() for t in module(x)]
            from_script = [t.numpy() for t in scripted(x)]
        from_onnx = session.run(None, {"input": x.numpy()})
        for output, expected in enumerate(want):
            for runtime, got in (("onnx", from_onnx[output]), ("torchscript", from_script[output])):
                assert got.shape == expected.shape, (net, runtime, shape, output)
                diff = float(np.abs(got - expected).max())
                assert diff < TOLERANCE, f"{net} {runtime} {shape} output {output}: {diff}"


def test_pretrained_weights_make_a_face_a_face():
    """The weights are the trained ones (not just shapes that load): on the astronaut's face,
    cut square and resized as the cascade does, O-Net is sure it is a face, and on a crop of
    coffee beans it is sure it is not."""
    import cv2
    from skimage import data

    module = ours("onet")
    face = data.astronaut()[60:180, 165:285]
    beans = data.coffee()[200:320, 300:420]
    batch = np.stack([cv2.resize(c, (48, 48), interpolation=cv2.INTER_AREA) for c in (face, beans)])
    x = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() - 127.5) / 128.0
    with torch.inference_mode():
        prob = module(x)[0][:, 1]
    assert prob[0] > 0.9, prob
    assert prob[1] < 0.1, prob
