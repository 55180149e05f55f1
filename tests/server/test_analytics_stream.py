"""Analytics over FrameStream, end to end: the real server runs the real `faces` pipeline on a
synthetic but real-pixel sequence (the astronaut's head from scikit-image moving along a known
path over the `rocket` photo) and the stream answers with track ids, zone occupancy, line
counts and events that match the path. Bad analytics options are refused by name.

Real server, real model, real gRPC: a system test (each run takes seconds of MTCNN)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from testkit.camera import collect, encode
from testkit.edge import running_server
from testkit.faces import copy_faces
from testkit.moving_face import (
    FRAME_NS,
    FRAMES,
    HEIGHT,
    LINE_X,
    STEP_PX,
    WIDTH,
    ZONE_X,
    head_centre,
    sequence,
)

pytestmark = pytest.mark.system


def analytics_options(normalized: bool = False) -> fs.AnalyticsOptions:
    """The zone and the line, in pixels or as fractions of the frame."""
    scale_x, scale_y = (1 / WIDTH, 1 / HEIGHT) if normalized else (1.0, 1.0)

    def points(*xy: tuple[float, float]) -> list[fs.Point]:
        return [fs.Point(x=x * scale_x, y=y * scale_y) for x, y in xy]

    return fs.AnalyticsOptions(
        normalized=normalized,
        min_hits=2,
        lost_seconds=0.5,
        zones=[
            fs.Polygon(
                name="middle",
                points=points(
                    (ZONE_X[0], 0), (ZONE_X[1], 0), (ZONE_X[1], HEIGHT), (ZONE_X[0], HEIGHT)
                ),
            )
        ],  # fmt: skip
        lines=[fs.Line(name="door", points=points((LINE_X, HEIGHT), (LINE_X, 0)))],
    )


async def requests(
    frames: list[np.ndarray],
    keep: range,
    options: fs.AnalyticsOptions,
    encoding: fs.FrameEncoding = fs.FRAME_ENCODING_RAW_RGB,
) -> AsyncIterator[fs.StreamRequest]:
    yield fs.StreamRequest(
        open=fs.StreamOpen(
            model_name="faces", encoding=encoding, stream_id="door-cam",
            # One frame at a time, nothing dropped: the same detections every run. The skipped
            # frames are skipped by the test, as the scheduler would, capture times intact.
            overload_policy=fs.OVERLOAD_POLICY_BLOCK, max_in_flight=1, analytics=options,
        )
    )  # fmt: skip
    start = time.time_ns()
    for index in keep:
        data, width, height = encode(frames[index], encoding)
        yield fs.StreamRequest(
            frame=fs.Frame(
                sequence=index, capture_time_unix_ns=start + index * FRAME_NS,
                data=data, width=width, height=height,
            )
        )  # fmt: skip


@contextlib.asynccontextmanager
async def faces_stub(tmp_path: Path, built_models: Path) -> AsyncIterator[Any]:
    """A FrameStream stub on a real server with the `faces` pipeline."""
    repo = tmp_path / "repo"
    copy_faces(built_models, repo)
    async with (
        running_server(repo) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield fs_grpc.FrameStreamServiceStub(channel)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return sequence()


@pytest.mark.parametrize(
    ("every", "encoding", "normalized"),
    [
        (1, fs.FRAME_ENCODING_RAW_RGB, False),
        (2, fs.FRAME_ENCODING_RAW_RGB, False),
        # JPEG frames (their size is read from the header) and zones in fractions of it.
        (1, fs.FRAME_ENCODING_JPEG, True),
    ],
    ids=["all-frames", "every-other-frame", "jpeg-normalized"],
)
async def test_moving_face_keeps_its_id_and_counts_match_the_path(
    tmp_path: Path,
    built_models: Path,
    frames: list[np.ndarray],
    every: int,
    encoding: fs.FrameEncoding,
    normalized: bool,
):
    kept = range(0, len(frames), every)
    options = analytics_options(normalized)
    async with faces_stub(tmp_path, built_models) as stub:
        seen = await collect(stub.Stream(requests(frames, kept, options, encoding)))
    assert not seen["error"] and not seen["dropped"]
    results = sorted(seen["result"], key=lambda result: result.sequence)
    assert [result.sequence for result in results] == list(kept)
    with_face = [r for r in results if r.sequence < FRAMES]
    # The detector finds the one face in (nearly) every frame it is in, and nothing after.
    assert sum(len(r.detections) == 1 for r in with_face) >= 0.9 * len(with_face)
    assert all(not r.detections for r in results if r.sequence >= FRAMES)
    # One stable id, from the second frame (min_hits 2) to the last with the face.
    ids = {d.track_id for r in with_face[1:] for d in r.detections}
    assert len(ids) == 1 and 0 not in ids, ids
    (track,) = ids
    assert with_face[0].detections[0].track_state == fs.TRACK_STATE_NEW
    assert with_face[-1].detections[0].track_state == fs.TRACK_STATE_TRACKED

    events = [event for message in seen["events"] for event in message.events]
    assert [(e.kind, e.name, e.direction) for e in events] == [
        (fs.ANALYTICS_EVENT_KIND_APPEAR, "", fs.CROSSING_DIRECTION_UNSPECIFIED),
        (fs.ANALYTICS_EVENT_KIND_ZONE_ENTER, "middle", fs.CROSSING_DIRECTION_UNSPECIFIED),
        (fs.ANALYTICS_EVENT_KIND_ZONE_LEAVE, "middle", fs.CROSSING_DIRECTION_UNSPECIFIED),
        (fs.ANALYTICS_EVENT_KIND_LINE_CROSS, "door", fs.CROSSING_DIRECTION_IN),
        (fs.ANALYTICS_EVENT_KIND_DISAPPEAR, "", fs.CROSSING_DIRECTION_UNSPECIFIED),
    ]
    assert {(e.stream_id, e.model_name, e.model_version, e.track_id) for e in events} == {
        ("door-cam", "faces", "1", track)
    }
    assert all(e.label == "face" and e.capture_time_unix_ns > 0 for e in events)
    # Each event comes at the frame where the head's centre passed the place (the face's box
    # is centred on the head within a few pixels; one kept frame of slack either way).
    by_kind = {e.kind: e for e in events}
    for kind, x in (
        (fs.ANALYTICS_EVENT_KIND_ZONE_ENTER, ZONE_X[0]),
        (fs.ANALYTICS_EVENT_KIND_ZONE_LEAVE, ZONE_X[1]),
        (fs.ANALYTICS_EVENT_KIND_LINE_CROSS, LINE_X),
    ):
        truth = next(i for i in kept if head_centre(i) > x)
        assert abs(by_kind[kind].sequence - truth) <= every, (kind, by_kind[kind].sequence, truth)
        box = by_kind[kind].box
        assert box.x_min < x + STEP_PX * every + 5 and box.x_max > x - STEP_PX * every - 5
    # Running counts equal the ground truth: one crossing, inward; the zone empty at the end.
    assert [(c.name, c.in_count, c.out_count) for c in results[-1].lines] == [("door", 1, 0)]
    inside = {r.sequence for r in results if r.zones[0].track_ids == [track]}
    truth_inside = {i for i in kept if ZONE_X[0] < head_centre(i) < ZONE_X[1]}
    assert len(inside ^ truth_inside) <= 2, sorted(inside ^ truth_inside)
    assert results[-1].zones[0].track_ids == []


async def test_bad_analytics_options_are_refused_and_the_server_goes_on(
    tmp_path: Path, built_models: Path, frames: list[np.ndarray]
):
    bad_zone = analytics_options()
    del bad_zone.zones[0].points[2:]
    short_line = analytics_options()
    del short_line.lines[0].points[1:]
    not_finite = analytics_options()
    not_finite.zones[0].points[1].x = float("nan")
    too_many = analytics_options()
    for index in range(64):
        too_many.zones.add(name=f"z{index}").points.extend(too_many.zones[0].points)
    cases = [
        (bad_zone, "analytics.zones[0] ('middle') has 2 points; a polygon needs 3"),
        (short_line, "analytics.lines[0] ('door') needs exactly 2 points (start, end), got 1"),
        (not_finite, "analytics.zones[0] ('middle') point 1 (nan, 0.0) is not finite"),
        (too_many, "analytics.zones: 65 given, at most 64"),
    ]
    async with faces_stub(tmp_path, built_models) as stub:
        for options, message in cases:
            # Only the opening: a frame still being written when the server refuses the open
            # fails on the client's side first (grpc reports "Internal error from Core").
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await collect(stub.Stream(requests(frames, range(0), options)))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error.value.details() == message
        # The server still serves: a good stream on the same channel is answered.
        seen = await collect(stub.Stream(requests(frames, range(2), analytics_options())))
    assert [len(r.detections) for r in sorted(seen["result"], key=lambda r: r.sequence)] == [1, 1]


async def test_tracks_still_live_when_the_client_ends_leave_and_disappear(
    tmp_path: Path, built_models: Path, frames: list[np.ndarray]
) -> None:
    """The camera ends its side (half-close) while the face is inside the zone: after its last
    answer the stream says the track left the zone and disappeared, before it ends, so a
    consumer counting who is inside is not left with a ghost."""
    kept = range(0, next(i for i in range(FRAMES) if head_centre(i) > sum(ZONE_X) / 2))
    async with faces_stub(tmp_path, built_models) as stub:
        responses = [
            response
            async for response in stub.Stream(requests(frames, kept, options=analytics_options()))
        ]
    kinds = [response.WhichOneof("kind") for response in responses]
    results = [response.result for response in responses if response.HasField("result")]
    assert [result.sequence for result in results] == list(kept)
    (track,) = {d.track_id for d in results[-1].detections}
    assert results[-1].zones[0].track_ids == [track], "the face should end inside the zone"
    # The stream's last message: the ending track's events, after every answer.
    assert kinds[-1] == "events" and kinds.index("result") < len(kinds) - 1
    last = responses[-1].events.events
    assert [(e.kind, e.name, e.track_id) for e in last] == [
        (fs.ANALYTICS_EVENT_KIND_ZONE_LEAVE, "middle", track),
        (fs.ANALYTICS_EVENT_KIND_DISAPPEAR, "", track),
    ]
    # Stamped with the last frame analysed, the box where the face was last seen.
    assert {(e.sequence, e.capture_time_unix_ns) for e in last} == {
        (results[-1].sequence, results[-1].capture_time_unix_ns)
    }
    seen = results[-1].detections[0]
    assert all(
        (e.box.x_min, e.box.y_min, e.box.x_max, e.box.y_max)
        == (seen.x_min, seen.y_min, seen.x_max, seen.y_max)
        for e in last
    )
    events = [
        e for response in responses if response.HasField("events") for e in response.events.events
    ]
    assert [e.kind for e in events].count(fs.ANALYTICS_EVENT_KIND_DISAPPEAR) == 1


async def test_tracks_still_live_when_the_server_shuts_down_leave_and_disappear(
    tmp_path: Path, built_models: Path, frames: list[np.ndarray]
) -> None:
    """The camera keeps its side open; the server stops taking work (what a SIGTERM does):
    once the frames it accepted are answered, the live track leaves its zone and disappears,
    and only then does the stream end with UNAVAILABLE."""
    kept = range(0, next(i for i in range(FRAMES) if head_centre(i) > sum(ZONE_X) / 2))
    repo = tmp_path / "repo"
    copy_faces(built_models, repo)
    async with (
        running_server(repo) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        call = fs_grpc.FrameStreamServiceStub(channel).Stream()

        async def camera() -> None:  # never ends its side
            async for request in requests(frames, kept, analytics_options()):
                await call.write(request)  # BLOCK, one in flight: gRPC paces the writes

        writer = asyncio.create_task(camera())
        responses: list[fs.StreamResponse] = []
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async for response in call:
                responses.append(response)
                if response.HasField("result") and response.result.sequence == kept[-1]:
                    server.core.refuse_new_work()
        await writer
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value
    results = [response.result for response in responses if response.HasField("result")]
    assert [result.sequence for result in results] == list(kept)
    (track,) = {d.track_id for d in results[-1].detections}
    assert responses[-1].WhichOneof("kind") == "events"
    assert [(e.kind, e.name, e.track_id) for e in responses[-1].events.events] == [
        (fs.ANALYTICS_EVENT_KIND_ZONE_LEAVE, "middle", track),
        (fs.ANALYTICS_EVENT_KIND_DISAPPEAR, "", track),
    ]
