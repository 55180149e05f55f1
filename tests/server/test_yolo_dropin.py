"""A YOLO detector exported with Ultralytics-style metadata drops into a repository with no
manifest and answers camera frames with its own class names, boxes in source-frame pixels.

The model is built here with torch: it finds the bright square in its input and reports its
box (cx, cy, w, h in input pixels) as the first of a few candidates, with a fixed score for one
class, in the v8 head's layout [1, 4 + classes, boxes] (or v5's [1, boxes, 5 + classes]). Its
answer is a function of the pixels it is given, and it reports squares (as a detector trained
on letterboxed images sees them), so a frame stretched instead of letterboxed, or a letterbox
not undone, changes the box.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from edgefleet.cli import build_app
from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from server.manifest import read_manifest
from server.models.dropin import manifest_from_onnx
from server.models.ultralytics import parse_names
from testkit.edge import running_server

NAMES = {0: "person", 1: "bicycle", 2: "car"}
FOUND_CLASS, FOUND_SCORE = 1, 0.9
SIZE = 320  # the model's input height and width
CANDIDATES = 6
# A 640x360 camera frame with a white square: letterboxed to 320x320 it is scaled by 0.5 and
# padded by 70 rows on top, so the model sees the square at x 200..240, y 120..160.
FRAME_WIDTH, FRAME_HEIGHT = 640, 360
SQUARE = (400, 100, 480, 180)  # x_min, y_min, x_max, y_max in frame pixels


def ultralytics_metadata(**overrides: str) -> dict[str, str]:
    """What Ultralytics' ONNX export writes for a detect model (values as strings)."""
    metadata = {
        "description": "Ultralytics YOLO11n model trained on tiny.yaml",
        "author": "Ultralytics",
        "date": "2026-12-07T00:00:00",
        "version": "8.3.0",
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "stride": "32",
        "task": "detect",
        "batch": "1",
        "imgsz": f"[{SIZE}, {SIZE}]",
        "names": repr(NAMES),
    }
    metadata.update(overrides)
    return {key: value for key, value in metadata.items() if value}


def export_detector(path: Path, metadata: dict[str, str], layout: str = "v8") -> None:
    import torch

    classes = len(NAMES)

    class BrightSquare(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            bright = (images.mean(dim=1)[0] > 0.5).to(images.dtype)  # [H, W]
            columns, rows = bright.amax(dim=0), bright.amax(dim=1)
            steps = torch.arange(SIZE, dtype=images.dtype)
            # Edges of the bright pixels: first one's left side, last one's right side.
            x_min = SIZE - (columns * (SIZE - steps)).amax()
            x_max = (columns * (steps + 1)).amax()
            y_min = SIZE - (rows * (SIZE - steps)).amax()
            y_max = (rows * (steps + 1)).amax()
            # Like a detector trained on letterboxed squares, it reports a square: a frame
            # stretched instead of letterboxed comes back with the wrong shape.
            side = torch.maximum(x_max - x_min, y_max - y_min)
            box = torch.stack([(x_min + x_max) / 2, (y_min + y_max) / 2, side, side])
            scores = torch.zeros(classes, dtype=images.dtype)
            scores[FOUND_CLASS] = FOUND_SCORE
            found = torch.cat([box, scores * columns.amax()])  # no square: score 0
            rows_out = torch.cat([found[None], torch.zeros(CANDIDATES - 1, 4 + classes)])
            if layout == "v5":  # [1, boxes, 5 + classes], objectness 1 for every row
                objectness = torch.ones(CANDIDATES, 1)
                return torch.cat([rows_out[:, :4], objectness, rows_out[:, 4:]], dim=1)[None]
            return rows_out.T[None]  # [1, 4 + classes, boxes]

    with warnings.catch_warnings():
        # The legacy (TorchScript-based) exporter, used on purpose as the project's export does,
        # says it is legacy and so does its logging helper; only those two are silenced.
        for message in (
            "You are using the legacy TorchScript-based ONNX export",
            "The feature will be removed. Please remove usage of this function",
        ):
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        torch.onnx.export(
            BrightSquare(), (torch.zeros(1, 3, SIZE, SIZE),), str(path),
            input_names=["images"], output_names=["output0"], opset_version=17, dynamo=False,
        )  # fmt: skip
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(path))


def drop_in(repo: Path, name: str, metadata: dict[str, str], layout: str = "v8") -> Path:
    version_dir = repo / name / "1"
    version_dir.mkdir(parents=True)
    export_detector(version_dir / "model.onnx", metadata, layout)
    return version_dir


def camera_frame() -> bytes:
    """A JPEG as a camera sends it: dark background, one white square."""
    pixels = np.full((FRAME_HEIGHT, FRAME_WIDTH, 3), 30, np.uint8)
    x_min, y_min, x_max, y_max = SQUARE
    pixels[y_min:y_max, x_min:x_max] = 255
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, format="JPEG", quality=95)
    return encoded.getvalue()


def stream_open(model: str) -> fs.StreamRequest:
    return fs.StreamRequest(open=fs.StreamOpen(
        model_name=model, encoding=fs.FRAME_ENCODING_JPEG,
        overload_policy=fs.OVERLOAD_POLICY_BLOCK))  # fmt: skip


async def detect(port: int, model: str) -> list[Any]:
    requests = [
        stream_open(model),
        fs.StreamRequest(frame=fs.Frame(sequence=0, capture_time_unix_ns=time.time_ns(),
                                        data=camera_frame(), width=FRAME_WIDTH,
                                        height=FRAME_HEIGHT)),
    ]  # fmt: skip
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = fs_grpc.FrameStreamServiceStub(channel)
        replies = [reply async for reply in stub.Stream(iter(requests))]
    kinds = [reply.WhichOneof("kind") for reply in replies]
    assert kinds == ["opened", "result"], replies
    return list(replies[1].result.detections)


def assert_found_the_square(found: list[Any]) -> None:
    assert [(item.label, item.class_id) for item in found] == [("bicycle", FOUND_CLASS)]
    (item,) = found
    assert item.score == pytest.approx(FOUND_SCORE)
    box = (item.x_min, item.y_min, item.x_max, item.y_max)
    assert np.allclose(box, SQUARE, atol=3), box  # JPEG and resampling blur an edge by a pixel


@pytest.mark.system
async def test_a_yolo_export_with_metadata_answers_camera_frames_by_name(tmp_path, caplog):
    repo = tmp_path / "repo"
    dropped = drop_in(repo, "detector", ultralytics_metadata())
    # The same model, with the manifest `edgefleet model init` writes for it.
    inited = repo / "detector_inited" / "1"
    inited.mkdir(parents=True)
    (inited / "model.onnx").hardlink_to(dropped / "model.onnx")
    result = CliRunner().invoke(build_app(), ["model", "init", str(inited)])
    assert result.exit_code == 0, result.output
    assert "YOLO detector from its metadata" in result.output

    written = read_manifest(inited)
    pre, post, yolo = written.preprocess, written.postprocess, written.postprocess.yolo
    assert pre is not None and yolo is not None
    assert (pre.resize, pre.height, pre.width, pre.pad_value) == ("letterbox", SIZE, SIZE, 114)
    assert (pre.color, pre.std, pre.layout) == ("rgb", (255.0, 255.0, 255.0), "nchw")
    assert (post.kind, post.output, post.labels) == ("yolo", "output0", list(NAMES.values()))
    assert yolo.layout == "v8"
    # Ultralytics' predict defaults: conf 0.25, iou 0.7, max_det 300.
    assert (yolo.score_threshold, yolo.iou_threshold, yolo.max_detections) == (0.25, 0.7, 300)
    # Equivalent to what the server completes for the drop-in: only the name differs.
    served = manifest_from_onnx(dropped)
    assert written.model_dump(exclude={"name"}) == served.model_dump(exclude={"name"})

    caplog.set_level(logging.INFO, logger="server.models.registry")
    async with running_server(repo) as server:
        from_metadata = await detect(server.port, "detector")
        from_manifest = await detect(server.port, "detector_inited")
    assert "YOLO detector from its metadata: letterbox, 3 named classes" in caplog.text
    assert not (dropped / "manifest.json").exists()  # nothing written by the server
    assert_found_the_square(from_metadata)
    assert_found_the_square(from_manifest)
    assert from_metadata == from_manifest


@pytest.mark.system
async def test_metadata_that_cannot_be_used_serves_as_before(tmp_path, caplog):
    repo = tmp_path / "repo"
    planted = tmp_path / "evaluated"
    # Code in `names` must never run: literal parsing refuses it, the model serves as raw.
    hostile = f"{{0: __import__('pathlib').Path({str(planted)!r}).touch()}}"
    drop_in(repo, "hostile", ultralytics_metadata(names=hostile))
    drop_in(repo, "truncated", ultralytics_metadata(names="{0: 'person', 1: 'bicy"))
    # The input's 320x320 wins over a metadata imgsz that disagrees with it.
    drop_in(repo, "wrong_imgsz", ultralytics_metadata(imgsz="[640, 640]"))
    # YOLOv5's own exporter writes only stride and names; its head has objectness.
    drop_in(repo, "yolov5", {"stride": "32", "names": repr(NAMES)}, layout="v5")
    caplog.set_level(logging.INFO)
    async with running_server(repo) as server:
        index = {entry.name: entry for entry in server.core.repository_index()}
        assert {name: entry.state for name, entry in index.items()} == dict.fromkeys(
            ("hostile", "truncated", "wrong_imgsz", "yolov5"), "READY"
        )
        for name in ("hostile", "truncated"):
            # The open alone: a frame sent after it races the refusal, and a client whose send
            # loses that race reports INTERNAL instead of the server's status.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                call = fs_grpc.FrameStreamServiceStub(channel).Stream(iter([stream_open(name)]))
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    _ = [reply async for reply in call]
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "has no preprocess section" in (refused.value.details() or "")
        assert_found_the_square(await detect(server.port, "wrong_imgsz"))
        assert_found_the_square(await detect(server.port, "yolov5"))
    assert not planted.exists()
    assert "hostile/1: model.onnx has YOLO metadata that cannot be used (`names` is not" in (
        caplog.text
    )
    assert "truncated/1: model.onnx has YOLO metadata that cannot be used" in caplog.text
    assert "wrong_imgsz/1: model.onnx metadata imgsz [640, 640] disagrees with input" in (
        caplog.text
    )


@pytest.mark.parametrize(
    "text",
    [
        "{0: 'person', 2: 'car'}",  # a gap in the ids
        "{'a': 'person'}",  # ids that are not numbers
        "{True: 'person'}",  # a bool is not a class id
        "{0: 7}",  # a name that is not a string
        "{}",
        "'person'",
        "[" * 300 + "]" * 300,  # nesting deep enough to exhaust a recursive parser
        "{0: '" + "x" * 300_000 + "'}",  # over the size bound, refused before parsing
        "__import__('os')",
    ],
)
def test_malformed_names_are_refused(text):
    with pytest.raises(ValueError):
        parse_names(text)


def test_names_as_yolov5_lists_them_parse():
    assert parse_names("['person', 'bicycle']") == ["person", "bicycle"]
    assert parse_names(repr(NAMES)) == ["person", "bicycle", "car"]
    assert parse_names("{'1': 'bicycle', '0': 'person'}") == ["person", "bicycle"]


def test_a_manifest_names_classes_inline_or_in_a_file_not_both():
    from server.manifest import Postprocess

    assert Postprocess(kind="yolo", output="output0", labels=["person"]).labels == ["person"]
    with pytest.raises(ValueError, match="not both"):
        Postprocess(kind="yolo", output="output0", labels=["person"], labels_file="labels.txt")


def sections(metadata: dict[str, str], image: list[Any], output: list[Any]) -> Any:
    from server.manifest import TensorSpec
    from server.models.ultralytics import yolo_sections

    return yolo_sections(
        metadata,
        [TensorSpec(name="images", dtype="float32", shape=image)],
        [TensorSpec(name="output0", dtype="float32", shape=output)],
        "m/1",
    )


def test_a_dynamic_input_is_letterboxed_to_imgsz_and_batches():
    found = sections(ultralytics_metadata(imgsz="[384, 640]"), ["batch", 3, "h", "w"],
                     ["batch", 7, "anchors"])  # fmt: skip
    assert (found.preprocess.height, found.preprocess.width) == (384, 640)
    assert found.postprocess.yolo.layout == "v8"
    assert found.provenance["author"] == "Ultralytics"


@pytest.mark.parametrize(
    ("metadata", "image", "output", "logged"),
    [
        ({"task": "segment"}, [1, 3, 320, 320], [1, 7, 2100], "only `detect` is served"),
        ({"end2end": "True"}, [1, 3, 320, 320], [1, 300, 6], "end-to-end exports"),
        ({}, [1, 3, 320, 320], [1, 300, 6], "fits neither [N, 4 + 3, boxes]"),
        ({"imgsz": ""}, [1, 3, "h", "w"], [1, 7, 2100], "dynamic size"),
        ({"imgsz": "[640]"}, [1, 3, "h", "w"], [1, 7, 2100], "`imgsz` is not [height, width]"),
        ({}, [1, 1, 320, 320], [1, 7, 2100], "not a float [N, 3, H, W] image"),
        ({"imgsz": "[330, 320]"}, [1, 3, "h", "w"], [1, 7, 2100], "not a multiple of `stride` 32"),
        ({"names": ""}, [1, 3, 320, 320], [1, 7, 2100], "says task detect but lists no `names`"),
    ],
)
def test_metadata_the_server_cannot_follow_is_logged(metadata, image, output, logged, caplog):
    caplog.set_level(logging.INFO, logger="server.models.ultralytics")
    assert sections(ultralytics_metadata(**metadata), image, output) is None
    assert logged in caplog.text


def test_model_init_with_section_flags_keeps_the_metadata_names(tmp_path):
    version_dir = drop_in(tmp_path / "repo", "detector", ultralytics_metadata())
    result = CliRunner().invoke(build_app(), [
        "model", "init", str(version_dir), "--preprocess", "unit", "--resize", "stretch",
        "--postprocess", "yolo",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    written = read_manifest(version_dir)
    assert written.preprocess is not None and written.preprocess.resize == "stretch"  # as asked
    assert written.postprocess.labels == list(NAMES.values())
    assert written.postprocess.yolo is not None and written.postprocess.yolo.iou_threshold == 0.7
