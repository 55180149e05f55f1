"""Figures a pipeline's frame reports over FrameStream (the real `faces` and `ppocr` pipelines of
the default repository on a real server): `batch_size` counts the frames that shared a model
run, the stages add up to the total, and waiting for a member model is queue, not inference."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from server.app import EdgeServer
from server.models.backends.base import Backend
from testkit.edge import running_server
from testkit.media import photo, png_bytes
from testkit.repositories import copy_model

# Real pipelines on real photos: a few seconds each.
pytestmark = pytest.mark.system

PIPELINES = {
    "faces": ("faces", "mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"),
    "ppocr": ("ppocr", "ppocr_det", "ppocr_rec"),
}
# A photo that gives each pipeline work in every stage: a face, and printed text.
PHOTOS = {"faces": "astronaut", "ppocr": "text"}
# Each figure is truncated to whole microseconds on its own: the parts may fall short of the
# total by one microsecond each.
ROUNDING_US = 4


@pytest.fixture
async def pipelines_server(tmp_path: Path, built_models: Path):
    repo = tmp_path / "repo"
    for members in PIPELINES.values():
        for name in members:
            copy_model(built_models, name, repo)
    async with running_server(repo) as server:
        yield server


def _frame(sequence: int, model: str) -> fs.StreamRequest:
    image = photo(PHOTOS[model])
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return fs.StreamRequest(
        frame=fs.Frame(sequence=sequence, capture_time_unix_ns=time.time_ns(),
                       data=png_bytes(image))
    )  # fmt: skip


def _open(model: str, max_in_flight: int = 1) -> fs.StreamRequest:
    return fs.StreamRequest(
        open=fs.StreamOpen(
            model_name=model, encoding=fs.FRAME_ENCODING_PNG,
            overload_policy=fs.OVERLOAD_POLICY_BLOCK, max_in_flight=max_in_flight,
        )
    )  # fmt: skip


async def _results(port: int, requests: list[fs.StreamRequest]) -> list[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = fs_grpc.FrameStreamServiceStub(channel)
        replies = [reply async for reply in stub.Stream(iter(requests))]
    errors = [reply.error for reply in replies if reply.WhichOneof("kind") == "error"]
    assert not errors, errors
    return [reply.result for reply in replies if reply.WhichOneof("kind") == "result"]


def _parts_us(timings: Any) -> int:
    return int(
        timings.queue_us + timings.preprocess_us + timings.inference_us + timings.postprocess_us
    )


@pytest.mark.parametrize("model", sorted(PIPELINES))
async def test_one_camera_reports_batches_of_one_and_stages_that_add_up(
    pipelines_server: EdgeServer, model: str
):
    frames = 3
    results = await _results(
        pipelines_server.port, [_open(model)] + [_frame(index, model) for index in range(frames)]
    )
    assert len(results) == frames
    assert any(result.detections for result in results)  # every stage had work
    for result in results:
        timings = result.timings
        # Alone on the server, each frame shared no model run with another frame (the members'
        # batches hold many rows of this one frame: pyramid levels, crops).
        assert timings.batch_size == 1, timings
        assert timings.inference_us > 0, timings
        assert abs(timings.total_us - _parts_us(timings)) <= ROUNDING_US, timings


class _HeldRunner:
    """A job that holds a member model's only runner until released: the cascade's first stage
    then waits behind it, as it would behind another frame's long run."""

    def __init__(self) -> None:
        self.running = threading.Event()
        self.release = threading.Event()

    def __call__(self, backend: Backend) -> None:
        self.running.set()
        self.release.wait(30)


HOLD_S = 0.5


async def test_cascade_counts_waiting_for_a_member_as_queue_not_inference(
    pipelines_server: EdgeServer,
):
    pnet = pipelines_server.core.registry.resolve("mtcnn_pnet", "")
    assert pnet.plan.instance_count == 1  # the hold below takes the member's only runner
    held = _HeldRunner()
    hold = asyncio.create_task(pnet.run_job(held))
    try:
        assert await asyncio.to_thread(held.running.wait, 30)
        answer = asyncio.create_task(
            _results(pipelines_server.port, [_open("faces"), _frame(0, "faces")])
        )
        # The frame's pyramid levels reach P-Net's queue, then wait there HOLD_S at least.
        deadline = time.monotonic() + 30
        while pnet.queue_depth == 0:
            assert time.monotonic() < deadline, "the frame never reached P-Net"
            await asyncio.sleep(0.005)
        await asyncio.sleep(HOLD_S)
    finally:
        held.release.set()
        await hold
    (result,) = await answer
    timings = result.timings
    assert result.detections  # it went through every stage after the wait
    held_us = int(HOLD_S * 1e6)
    assert timings.queue_us >= held_us, timings
    # The wait is not inference: whatever the machine's speed, the runs fit in what is left.
    assert timings.inference_us <= timings.total_us - held_us, timings
    assert abs(timings.total_us - _parts_us(timings)) <= ROUNDING_US, timings
    assert timings.batch_size == 1, timings


async def test_two_cameras_never_report_more_frames_per_run_than_there_are(
    pipelines_server: EdgeServer,
):
    # Two cameras on the cascade at once: their pyramid levels and crops may share member runs
    # (batch_size 2) or not (1), but the dozens of rows a frame sends never count as frames.
    frames = 4
    streams = [
        [_open("faces")] + [_frame(index, "faces") for index in range(frames)] for _ in range(2)
    ]
    answers = await asyncio.gather(*(_results(pipelines_server.port, s) for s in streams))
    for results in answers:
        assert len(results) == frames
        for result in results:
            assert 1 <= result.timings.batch_size <= 2, result.timings
            assert abs(result.timings.total_us - _parts_us(result.timings)) <= ROUNDING_US
