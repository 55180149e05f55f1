"""Small image classifiers built with onnx.helper, written as real model versions.

`well_behaved`: a linear classifier on a 32x32 image; int8 keeps its top-1.
`quantization_breaker`: the same, but one input pixel is multiplied by 10,000 first. Static
int8 quantization gives that tensor a single scale for its whole range (about 80 per step), so
every ordinary pixel rounds to zero and the int8 model answers from one pixel alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from server.manifest import Batching, Postprocess, Preprocess, TensorSpec
from testkit.model_writer import write_onnx_version

SIDE = 32
CLASSES = 5


def _classifier(outlier: float | None, seed: int = 7) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    features = 3 * SIDE * SIDE
    weights = (rng.standard_normal((features, CLASSES)) / np.sqrt(features)).astype(np.float32)
    scale = np.ones((1, 3, SIDE, SIDE), dtype=np.float32)
    if outlier is not None:
        # The outlier pixel carries no weight: fp32 ignores it, only its range hurts int8.
        scale[0, 0, 0, 0] = outlier
        weights[0, :] = 0
    nodes = [
        helper.make_node("Mul", ["input", "scale"], ["scaled"]),
        helper.make_node("Flatten", ["scaled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weights"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=[
            numpy_helper.from_array(scale, "scale"),
            numpy_helper.from_array(weights, "weights"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_classifier(
    repository: Path, name: str, *, outlier: float | None, raw: bool = False, seed: int = 7
) -> Path:
    """Write `<repository>/<name>/1/` with model.onnx and a manifest; returns the version dir.

    `raw` declares the output as a plain tensor (no classification, no preprocess), so the
    guard compares relative error on synthetic inputs instead of top-1 on photographs."""
    return write_onnx_version(
        repository / name / "1",
        _classifier(outlier, seed),
        labels=CLASSES,
        name=name,
        version="1",
        inputs=[TensorSpec(name="input", dtype="float32", shape=["N", 3, SIDE, SIDE])],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=["N", CLASSES])],
        preprocess=None
        if raw
        else Preprocess(
            input="input", height=SIDE, width=SIDE, mean=(127.5,) * 3, std=(127.5,) * 3
        ),
        postprocess=Postprocess()
        if raw
        else Postprocess(kind="classification", output="logits", labels_file="labels.txt"),
        batching=Batching(max_batch_size=8),
    )
