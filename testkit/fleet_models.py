"""Tiny ONNX classifiers built in-process, so fleet tests need no exported model (the `tiny`
model every fleet test node serves).

`slow_layers` repeats one MatMul+Relu layer (one shared weight, so the file stays small): the
graph does measurably more work per frame, which the canary-fail test relies on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from server.manifest import Batching, Preprocess, TensorSpec
from testkit.model_writer import write_onnx_version

FEATURES = 256
CLASSES = 10


def build_model_dir(root: Path, name: str, version: str, slow_layers: int = 0) -> Path:
    """Write `<root>/<name>/<version>/` with model.onnx and a valid manifest; return the dir."""
    rng = np.random.default_rng(int(version) + slow_layers)
    hidden = numpy_helper.from_array(
        (rng.standard_normal((FEATURES, FEATURES)) / FEATURES).astype(np.float32), "hidden"
    )
    head = numpy_helper.from_array(
        rng.standard_normal((FEATURES, CLASSES)).astype(np.float32), "head"
    )
    nodes, current = [], "input"
    for layer in range(slow_layers):
        nodes.append(helper.make_node("MatMul", [current, "hidden"], [f"mm{layer}"]))
        nodes.append(helper.make_node("Relu", [f"mm{layer}"], [f"act{layer}"]))
        current = f"act{layer}"
    nodes.append(helper.make_node("MatMul", [current, "head"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        f"{name}_v{version}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=[hidden, head],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return write_onnx_version(
        root / name / version,
        model,
        name=name,
        version=version,
        inputs=[TensorSpec(name="input", dtype="float32", shape=["N", FEATURES])],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=["N", CLASSES])],
        batching=Batching(max_batch_size=8, max_queue_delay_us=500),
        description=f"test classifier with {slow_layers} extra layers",
    )


def build_poisoned_model_dir(root: Path, name: str, version: str, image: bool = False) -> Path:
    """A model that passes the server's warm-up (zeros) and fails on every real input.

    A Gather takes its index from the input's largest value: 0 on zeros (in bounds), 1 or more
    on real traffic (out of bounds), so onnxruntime raises at run time, not at load time.
    `image` gives it a camera preprocess section (3x8x8 RGB), for FrameStream.
    """
    rng = np.random.default_rng(int(version))
    width = 3 * 8 * 8 if image else FEATURES
    head = numpy_helper.from_array(rng.standard_normal((width, CLASSES)).astype(np.float32), "head")
    table = numpy_helper.from_array(np.zeros(1, np.float32), "table")
    nodes = [
        helper.make_node("ReduceMax", ["input"], ["largest"], keepdims=0),
        helper.make_node("Cast", ["largest"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["offset"], axis=0),
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "head"], ["scores"]),
        helper.make_node("Add", ["scores", "offset"], ["logits"]),
    ]
    shape: list[int | str] = ["N", 3, 8, 8] if image else ["N", FEATURES]
    graph = helper.make_graph(
        nodes,
        f"{name}_v{version}_poisoned",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=[head, table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return write_onnx_version(
        root / name / version,
        model,
        name=name,
        version=version,
        inputs=[TensorSpec(name="input", dtype="float32", shape=shape)],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=["N", CLASSES])],
        batching=Batching(max_batch_size=8, max_queue_delay_us=500),
        preprocess=Preprocess(input="input", height=8, width=8) if image else None,
        description="fails on real inputs, passes warm-up on zeros",
    )
