"""A camera model that is honestly slow: ~20 ms of real matrix work per frame on this machine.

The graph is a 64x64 image classifier whose middle is `layers` MatMul+Tanh layers sharing one
256x256 weight (so the file stays small). `calibrated_layers` times the graph here, now, with
one onnxruntime thread, and picks the layer count for the target time, so the model is ~20 ms
whatever the machine's load is when the test starts. Tests compare ages with the inference
times the server reports, never with fixed numbers.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from server.manifest import Batching, Postprocess, Preprocess, RuntimePins, TensorSpec
from testkit.model_writer import write_onnx_version

SIDE = 64
FEATURES = 256
ROWS = 3 * SIDE * SIDE // FEATURES  # 48 rows of 256 per image
CLASSES = 10


def _graph(layers: int) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    hidden = (rng.standard_normal((FEATURES, FEATURES)) / np.sqrt(FEATURES)).astype(np.float32)
    head = rng.standard_normal((FEATURES, CLASSES)).astype(np.float32)
    nodes = [helper.make_node("Reshape", ["input", "shape"], ["rows"])]
    current = "rows"
    for layer in range(layers):
        nodes.append(helper.make_node("MatMul", [current, "hidden"], [f"mm{layer}"]))
        nodes.append(helper.make_node("Tanh", [f"mm{layer}"], [f"act{layer}"]))
        current = f"act{layer}"
    nodes.append(helper.make_node("ReduceMean", [current], ["pooled"], axes=[1], keepdims=0))
    nodes.append(helper.make_node("MatMul", ["pooled", "head"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "slow_camera_model",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=[
            numpy_helper.from_array(np.array([-1, ROWS, FEATURES], dtype=np.int64), "shape"),
            numpy_helper.from_array(hidden, "hidden"),
            numpy_helper.from_array(head, "head"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _seconds_per_run(layers: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        _graph(layers).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    frame = np.zeros((1, 3, SIDE, SIDE), dtype=np.float32)
    session.run(None, {"input": frame})
    times = []
    for _ in range(5):
        start = time.perf_counter()
        session.run(None, {"input": frame})
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def calibrated_layers(target_s: float = 0.020) -> int:
    """Layers for `target_s` per frame; rescaled twice, since cost per layer is not flat."""
    layers = 16
    for _ in range(3):
        per_layer = _seconds_per_run(layers) / layers
        layers = int(np.clip(round(target_s / per_layer), 1, 2000))
    return layers


def write_slow_model(
    repository: Path, name: str, layers: int, *, version: str = "1", max_batch_size: int = 4
) -> Path:
    return write_onnx_version(
        repository / name / version,
        _graph(layers),
        labels=CLASSES,
        name=name,
        version=version,
        inputs=[TensorSpec(name="input", dtype="float32", shape=["N", 3, SIDE, SIDE])],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=["N", CLASSES])],
        preprocess=Preprocess(
            input="input", height=SIDE, width=SIDE, mean=(127.5,) * 3, std=(127.5,) * 3
        ),
        postprocess=Postprocess(
            kind="classification", output="logits", labels_file="labels.txt", top_k=1
        ),
        batching=Batching(max_batch_size=max_batch_size, max_queue_delay_us=500),
        # One thread: the model's time does not depend on how many cores are free right now.
        runtime=RuntimePins(intra_op_threads=1, inter_op_threads=1),
        description=f"slow test camera model ({layers} layers)",
    )
