"""The real PP-OCRv4 pipeline (ppocr_det -> crops -> ppocr_rec) over FrameStream.

Text is drawn with OpenCV on a plain and on a photo background, plus scikit-image's own text
photo; the server must read it and put the boxes on the text.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import pytest

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from server.app import EdgeServer
from testkit.edge import running_server, server_settings
from testkit.media import photo, png_bytes
from testkit.repositories import copy_model

# The OCR pipeline against RapidOCR's own run: seconds per test, system tests.
pytestmark = pytest.mark.system

TEXT = "EDGE FLEET 2026"
PPOCR = ("ppocr", "ppocr_det", "ppocr_rec")


def copy_ppocr(built: Path, repo: Path) -> None:
    for name in PPOCR:
        copy_model(built, name, repo)


@pytest.fixture
async def ocr_server(tmp_path: Path, built_models: Path):
    repo = tmp_path / "repo"
    copy_ppocr(built_models, repo)
    async with running_server(repo) as server:
        yield server


def draw_text(
    background: np.ndarray, origin: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """`TEXT` drawn in black-on-white-ish at `origin`; returns the image and the text's box."""
    image = background.copy()
    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 1.6, 3
    (width, height), baseline = cv2.getTextSize(TEXT, font, scale, thickness)
    x, y = origin
    cv2.rectangle(image, (x - 12, y - height - 14), (x + width + 12, y + baseline + 10),
                  (255, 255, 255), -1)  # fmt: skip
    cv2.putText(image, TEXT, (x, y), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return image, (x, y - height, x + width, y + baseline)


def frames_of(model: str, images: list[np.ndarray], **results) -> list[fs.StreamRequest]:
    requests = [
        fs.StreamRequest(
            open=fs.StreamOpen(
                model_name=model, encoding=fs.FRAME_ENCODING_PNG,
                overload_policy=fs.OVERLOAD_POLICY_BLOCK, results=fs.ResultOptions(**results),
            )
        )
    ]  # fmt: skip
    for sequence, image in enumerate(images):
        requests.append(
            fs.StreamRequest(
                frame=fs.Frame(
                    sequence=sequence, capture_time_unix_ns=time.time_ns(), data=png_bytes(image)
                )
            )
        )
    return requests


async def stream(port: int, model: str, images: list[np.ndarray], **results) -> list[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = fs_grpc.FrameStreamServiceStub(channel)
        replies = [reply async for reply in stub.Stream(iter(frames_of(model, images, **results)))]
    errors = [reply.error for reply in replies if reply.WhichOneof("kind") == "error"]
    assert not errors, errors
    results_ = [reply.result for reply in replies if reply.WhichOneof("kind") == "result"]
    return sorted(results_, key=lambda result: result.sequence)


def normalised(text: str) -> str:
    return "".join(text.split()).upper()


def inside(box: Any, truth: tuple[int, int, int, int], slack: float = 12) -> bool:
    x0, y0, x1, y1 = truth
    horizontal = box.x_min >= x0 - 3 * slack and box.x_max <= x1 + 3 * slack
    vertical = box.y_min >= y0 - 2 * slack and box.y_max <= y1 + 2 * slack
    return bool(horizontal and vertical)


async def test_reads_rendered_text_on_plain_and_photo_backgrounds(ocr_server):
    plain, plain_box = draw_text(np.full((480, 640, 3), 235, np.uint8), (120, 260))
    scenery, scenery_box = draw_text(cv2.resize(photo("astronaut"), (640, 480)), (150, 120))
    results = await stream(ocr_server.port, "ppocr", [plain, scenery])
    for result, truth in zip(results, (plain_box, scenery_box), strict=True):
        matching = [item for item in result.detections if normalised(TEXT) in normalised(item.text)]
        assert matching, [(item.text, item.score) for item in result.detections]
        found = matching[0]
        assert inside(found, truth), (found, truth)
        # The box covers the text, not just a corner of it.
        assert found.x_max - found.x_min >= 0.8 * (truth[2] - truth[0])
        assert found.score >= 0.8 and len(found.polygon) == 4
        assert result.model_name == "ppocr" and result.timings.inference_us > 0


async def test_reads_skimage_text_as_rapidocr_does(ocr_server):
    """skimage's `text` is handwritten maths on a slanted page; PP-OCRv4 reads little of it.
    The oracle is rapidocr's own in-process chain of the same two models: same lines, same
    text, boxes within a few pixels."""
    from rapidocr_onnxruntime import RapidOCR

    grey = photo("text")
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    (result,) = await stream(ocr_server.port, "ppocr", [rgb])
    reference, _ = RapidOCR(use_cls=False)(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert reference, "rapidocr reads nothing: the oracle is broken"
    expected = sorted(
        ((text, np.asarray(quad, np.float32)) for quad, text, _ in reference), key=lambda t: t[0]
    )
    got = sorted(
        (
            (item.text, np.array([(p.x, p.y) for p in item.polygon], np.float32))
            for item in result.detections
        ),
        key=lambda t: t[0],
    )
    assert [text for text, _ in got] == [text for text, _ in expected]
    for (_, ours), (_, theirs) in zip(got, expected, strict=True):
        assert np.abs(ours - theirs).max() <= 3, (ours, theirs)


async def test_region_of_interest_and_detection_limits(ocr_server):
    image, box = draw_text(np.full((480, 640, 3), 235, np.uint8), (120, 100))
    image, low_box = draw_text(image, (120, 380))
    both = (await stream(ocr_server.port, "ppocr", [image]))[0].detections
    assert len([item for item in both if normalised(TEXT) in normalised(item.text)]) == 2
    roi = fs.Region(x_min=0, y_min=300, x_max=640, y_max=480)
    (result,) = await stream(ocr_server.port, "ppocr", [image], region_of_interest=roi)
    assert [normalised(item.text) for item in result.detections] == [normalised(TEXT)]
    # Coordinates stay in full-frame pixels.
    assert inside(result.detections[0], low_box)
    (limited,) = await stream(ocr_server.port, "ppocr", [image], max_detections=1)
    assert len(limited.detections) == 1


async def test_missing_member_fails_the_load_and_the_old_version_keeps_serving(
    tmp_path, built_models
):
    repo = tmp_path / "repo"
    copy_ppocr(built_models, repo)
    server = EdgeServer(server_settings(repo))
    await server.start()
    try:
        broken = repo / "ppocr" / "2"
        shutil.copytree(repo / "ppocr" / "1", broken)
        manifest = (broken / "manifest.json").read_text()
        manifest = manifest.replace('"version": "1"', '"version": "2"')
        manifest = manifest.replace('"model": "ppocr_rec",\n        "version": ""',
                                    '"model": "ppocr_rec",\n        "version": "7"')  # fmt: skip
        (broken / "manifest.json").write_text(manifest)
        with pytest.raises(Exception, match="member 'ppocr_rec' version 7") as caught:
            await server.core.load_model("ppocr", "2")
        assert "no version '7'" in str(caught.value)
        assert server.core.active_version("ppocr") == "1"
        image, _ = draw_text(np.full((240, 640, 3), 235, np.uint8), (60, 140))
        (result,) = await stream(server.port, "ppocr", [image])
        assert result.model_version == "1"
        assert any(normalised(TEXT) in normalised(item.text) for item in result.detections)
    finally:
        await server.stop(grace_s=1.0)


async def test_hot_swap_of_a_member_applies_to_the_next_frame(ocr_server, tmp_path):
    repo = ocr_server.settings.repository
    copy_model(repo, "ppocr_rec", repo, version="2")
    await ocr_server.core.load_model("ppocr_rec", "2")
    image, _ = draw_text(np.full((240, 640, 3), 235, np.uint8), (60, 140))
    (result,) = await stream(ocr_server.port, "ppocr", [image])
    assert any(normalised(TEXT) in normalised(item.text) for item in result.detections)
    stats = {(item.name, item.version): item for item in ocr_server.core.statistics()}
    assert stats[("ppocr_rec", "2")].success.count >= 1


async def test_model_config_shows_the_graph_and_tensor_calls_are_refused(ocr_server):
    import json as json_module

    from protos.inference import grpc_service_pb2 as kserve
    from protos.inference import grpc_service_pb2_grpc as kserve_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{ocr_server.port}") as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        config = (await stub.ModelConfig(kserve.ModelConfigRequest(name="ppocr"))).config
        request = kserve.ModelInferRequest(model_name="ppocr")
        request.inputs.add(name="frame", datatype="UINT8", shape=[1])
        request.raw_input_contents.append(b"\0")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ModelInfer(request)
    assert config.platform == "ensemble"
    stages = json_module.loads(config.parameters["edgefleet.pipeline"].string_value)["stages"]
    assert [(stage["kind"], stage["model"]) for stage in stages] == [
        ("detect", "ppocr_det"), ("crop", "ppocr_rec"),
    ]  # fmt: skip
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pipeline" in (caught.value.details() or "")


def test_zero_area_crops_are_skipped_not_errors():
    from server.frames.work.pipeline import _cut_all, cut_crop
    from server.manifest import PipelineStage
    from server.vision.detections import Detection

    image = np.zeros((100, 200, 3), np.uint8)
    stage = PipelineStage(kind="crop", model="ppocr_rec")
    flat = Detection(10, 20, 10, 40, 0.9)  # zero width
    degenerate = Detection(5, 5, 50, 5, 0.9, polygon=((5, 5), (50, 5), (50, 5), (5, 5)))
    good = Detection(20, 30, 120, 60, 0.9)
    assert cut_crop(image, flat, stage) is None
    assert cut_crop(image, degenerate, stage) is None
    kept = _cut_all(image, [flat, good, degenerate], stage)
    assert [index for index, _ in kept] == [1]
    assert kept[0][1].shape == (30, 100, 3)
