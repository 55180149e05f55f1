"""YOLO decoding through the real server: a small ONNX graph built here outputs known boxes
(in v5 and v8 layouts); FrameStream must return them in source pixels, letterbox undone to the
pixel, with class-aware NMS, thresholds and per-stream filters applied."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from server.app import EdgeServer
from server.manifest import (
    Batching,
    ModelManifest,
    Postprocess,
    Preprocess,
    TensorSpec,
    YoloOptions,
    hash_directory,
    write_manifest,
)
from server.vision.decoders.nms import nms_cv2, nms_numpy
from server.vision.decoders.yolo import decode
from server.vision.detections import FrameTransform
from testkit.edge import server_settings

SIZE = 640
LABELS = ["person", "car", "dog"]
# Model-pixel boxes (cx, cy, w, h), class, score. The second overlaps the first heavily in the
# same class (suppressed), the third overlaps it in another class (kept), the fourth is below
# the threshold, the fifth stands alone.
BOXES = [
    ((320.0, 320.0, 100.0, 50.0), 0, 0.90),
    ((324.0, 322.0, 100.0, 50.0), 0, 0.80),
    ((322.0, 318.0, 96.0, 52.0), 1, 0.70),
    ((100.0, 200.0, 40.0, 40.0), 2, 0.10),
    ((500.0, 250.0, 60.0, 120.0), 2, 0.60),
]


def v8_output() -> np.ndarray:
    rows = np.zeros((len(BOXES), 4 + len(LABELS)), np.float32)
    for index, (box, class_id, score) in enumerate(BOXES):
        rows[index, :4] = box
        rows[index, 4 + class_id] = score
    return rows.T[None]  # [1, 4 + C, boxes]


def v5_output() -> np.ndarray:
    rows = np.zeros((len(BOXES), 5 + len(LABELS)), np.float32)
    for index, (box, class_id, score) in enumerate(BOXES):
        rows[index, :4] = box
        rows[index, 4] = 1.0  # objectness; the class score carries the confidence
        rows[index, 5 + class_id] = score
    return rows[None]  # [1, boxes, 5 + C]


def constant_model(output: np.ndarray, path: Path) -> None:
    """images [1, 3, 640, 640] -> output: the constant, plus 0 x mean(images) so the graph
    really reads its input."""
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["boxes", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes, "known_boxes",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        initializer=[numpy_helper.from_array(output, "boxes"),
                     numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_yolo(repo: Path, name: str, output: np.ndarray, layout: str) -> None:
    version_dir = repo / name / "1"
    version_dir.mkdir(parents=True)
    constant_model(output, version_dir / "model.onnx")
    (version_dir / "labels.txt").write_text("\n".join(LABELS) + "\n")
    manifest = ModelManifest(
        name=name, version="1", format="onnx", model_file="model.onnx",
        inputs=[TensorSpec(name="images", dtype="float32", shape=[1, 3, SIZE, SIZE])],
        outputs=[TensorSpec(name="output0", dtype="float32", shape=list(output.shape))],
        preprocess=Preprocess(input="images", height=SIZE, width=SIZE, resize="letterbox",
                              std=(255.0, 255.0, 255.0)),
        postprocess=Postprocess(kind="yolo", output="output0", labels_file="labels.txt",
                                yolo=YoloOptions(layout=layout, score_threshold=0.25)),
        batching=Batching(max_batch_size=0),
        files=hash_directory(version_dir),
    )  # fmt: skip
    write_manifest(version_dir, manifest)


@pytest.fixture
async def yolo_server(tmp_path: Path):
    repo = tmp_path / "repo"
    write_yolo(repo, "yolo_v8", v8_output(), "v8")
    write_yolo(repo, "yolo_v5", v5_output(), "v5")
    write_yolo(repo, "yolo_auto", v8_output(), "auto")
    server = EdgeServer(server_settings(repo))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace_s=1.0)


async def detect(port: int, model: str, width: int, height: int, **results) -> list[Any]:
    frame = np.full((height, width, 3), 90, np.uint8)
    requests = [
        fs.StreamRequest(open=fs.StreamOpen(
            model_name=model, encoding=fs.FRAME_ENCODING_RAW_RGB,
            overload_policy=fs.OVERLOAD_POLICY_BLOCK, results=fs.ResultOptions(**results))),
        fs.StreamRequest(frame=fs.Frame(sequence=0, capture_time_unix_ns=time.time_ns(),
                                        data=frame.tobytes(), width=width, height=height)),
    ]  # fmt: skip
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        replies = [r async for r in fs_grpc.FrameStreamServiceStub(channel).Stream(iter(requests))]
    kinds = [reply.WhichOneof("kind") for reply in replies]
    assert kinds == ["opened", "result"], replies
    return list(replies[1].result.detections)


def expected_in_source(width: int, height: int) -> list[tuple[str, float, tuple[float, ...]]]:
    """The boxes that must survive, mapped back through the letterbox by hand."""
    scale = min(SIZE / width, SIZE / height)
    left = (SIZE - round(width * scale)) // 2
    top = (SIZE - round(height * scale)) // 2
    result: list[tuple[str, float, tuple[float, ...]]] = []
    for index in (0, 2, 4):
        (cx, cy, w, h), class_id, score = BOXES[index]
        corners = (
            (cx - w / 2 - left) / scale, (cy - h / 2 - top) / scale,
            (cx + w / 2 - left) / scale, (cy + h / 2 - top) / scale,
        )  # fmt: skip
        result.append((LABELS[class_id], score, corners))
    return result


@pytest.mark.parametrize("model", ["yolo_v8", "yolo_v5", "yolo_auto"])
@pytest.mark.parametrize("size", [(1280, 720), (480, 640)], ids=["landscape", "portrait"])
async def test_known_boxes_come_back_in_source_pixels(yolo_server, model, size):
    width, height = size
    found = await detect(yolo_server.port, model, width, height)
    expected = expected_in_source(width, height)
    assert [(item.label, round(item.score, 2)) for item in found] == [
        (label, score) for label, score, _ in expected
    ]
    for item, (_, _, corners) in zip(found, expected, strict=True):
        box = (item.x_min, item.y_min, item.x_max, item.y_max)
        assert np.allclose(box, corners, atol=0.5), (box, corners)
    # Hand-checked for 1280x720: scale 0.5, 140 px of padding on top.
    if size == (1280, 720):
        first = found[0]
        assert (first.x_min, first.y_min, first.x_max, first.y_max) == (540, 310, 740, 410)


async def test_stream_filters_classes_threshold_and_count(yolo_server):
    port = yolo_server.port
    dogs = await detect(port, "yolo_v8", 1280, 720, class_ids=[2])
    assert [item.label for item in dogs] == ["dog"]
    confident = await detect(port, "yolo_v8", 1280, 720, score_threshold=0.65)
    assert [item.label for item in confident] == ["person", "car"]
    low = await detect(port, "yolo_v8", 1280, 720, score_threshold=0.05)
    assert "dog" in [item.label for item in low] and len(low) == 4  # the 0.10 dog too
    best = await detect(port, "yolo_v8", 1280, 720, max_detections=1)
    assert [item.label for item in best] == ["person"]


async def test_bad_region_of_interest_is_invalid_argument(yolo_server):
    roi = fs.Region(x_min=100, y_min=100, x_max=50, y_max=200)
    # The open alone: a frame sent after it races the refusal, and a client whose write loses
    # that race is told INTERNAL by its own gRPC library instead of the server's status.
    opened = fs.StreamRequest(open=fs.StreamOpen(
        model_name="yolo_v8", encoding=fs.FRAME_ENCODING_RAW_RGB,
        results=fs.ResultOptions(region_of_interest=roi)))  # fmt: skip
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{yolo_server.port}") as channel:
            stub = fs_grpc.FrameStreamServiceStub(channel)
            _ = [reply async for reply in stub.Stream(iter([opened]), timeout=30)]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "region_of_interest" in (caught.value.details() or "")


def test_thousands_of_candidates_are_capped_before_nms():
    rng = np.random.default_rng(7)
    count = 20000
    rows = np.zeros((count, 4 + 3), np.float32)
    rows[:, :2] = rng.uniform(0, SIZE, (count, 2))
    rows[:, 2:4] = rng.uniform(5, 60, (count, 2))
    rows[:, 4:] = rng.uniform(0.3, 0.6, (count, 3))
    rows[0, :4], rows[0, 4:] = (320, 320, 50, 50), (0.99, 0, 0)
    options = YoloOptions(layout="v8", max_candidates=500, max_detections=50)
    found = decode(rows.T, options, FrameTransform(), LABELS)
    assert len(found) <= 50
    assert found[0].score == pytest.approx(0.99) and found[0].label == "person"


def test_opencv_and_numpy_nms_agree():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 500, (400, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(10, 80, (400, 2)).astype(np.float32)], axis=1)
    scores = rng.uniform(0, 1, 400).astype(np.float32)
    classes = rng.integers(0, 4, 400)
    for class_ids in (None, classes):
        ours = nms_numpy(boxes, scores, 0.5, class_ids)
        theirs = nms_cv2(boxes, scores, 0.5, class_ids)
        assert sorted(ours.tolist()) == sorted(theirs.tolist())
