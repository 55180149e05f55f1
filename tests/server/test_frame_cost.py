"""Hostile pipeline frames on the real ppocr pipeline (issue 23, items 2 and 3).

A page of hundreds of text lines costs PP-OCR tens of CPU-seconds: a frame that can no longer be
answered must stop costing anything at once (all or nothing), and the pipeline's per-frame work
budget answers such a page with the lines that fit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import psutil
import pytest

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from testkit.edge import running_server
from testkit.media import png_bytes, text_grid
from testkit.repositories import copy_model

pytestmark = pytest.mark.system

PPOCR = ("ppocr", "ppocr_det", "ppocr_rec")


def ppocr_repository(built_models: Path, repo: Path, **budget: int) -> Path:
    for name in PPOCR:
        copy_model(built_models, name, repo)
    path = repo / "ppocr" / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["pipeline"]["budget"] = budget
    path.unlink()  # a copy, never the built repository's file
    path.write_text(json.dumps(manifest))
    return repo


def open_request() -> fs.StreamRequest:
    return fs.StreamRequest(
        open=fs.StreamOpen(
            model_name="ppocr", encoding=fs.FRAME_ENCODING_PNG,
            overload_policy=fs.OVERLOAD_POLICY_BLOCK,
        )
    )  # fmt: skip


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def read_page(port: int, page: bytes) -> fs.FrameResult:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = fs_grpc.FrameStreamServiceStub(channel)
        replies = [
            reply
            async for reply in stub.Stream(
                iter([open_request(), fs.StreamRequest(frame=fs.Frame(sequence=0, data=page))])
            )
        ]
    results: list[fs.FrameResult] = [
        reply.result for reply in replies if reply.WhichOneof("kind") == "result"
    ]
    assert len(results) == 1, replies
    return results[0]


async def test_a_closed_stream_stops_its_page_at_once(tmp_path: Path, built_models: Path):
    """An 880-line page with no work budget (it would run ~40 CPU-s): its stream closes while
    the recogniser reads it. Every crop batch goes with it: the recogniser runs at most the
    batch it had, the server is idle a second later, and RSS stayed bounded while it ran."""
    repo = ppocr_repository(built_models, tmp_path / "repo", max_crops=0)
    page = png_bytes(text_grid(1600, 1200, 8, 110))
    process = psutil.Process()
    async with running_server(repo) as server:
        recogniser = server.core.registry.active("ppocr_rec")
        assert recogniser is not None
        # A page of the same size with 16 lines first: the runtimes' working memory for this
        # frame size (ONNX Runtime's arenas keep it) belongs to the baseline, not to the page.
        await read_page(server.port, png_bytes(text_grid(1600, 1200, 2, 8)))
        baseline_rss = peak_rss = process.memory_info().rss
        closed = asyncio.Event()

        async def requests() -> AsyncIterator[fs.StreamRequest]:
            yield open_request()
            yield fs.StreamRequest(frame=fs.Frame(sequence=0, data=page))
            await closed.wait()

        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = fs_grpc.FrameStreamServiceStub(channel).Stream(requests())
            runs_before = recogniser.stats.execution_count
            deadline = time.monotonic() + 120
            while recogniser.stats.execution_count < runs_before + 4:  # its crop stage runs
                assert time.monotonic() < deadline, "the page never reached the recogniser"
                peak_rss = max(peak_rss, process.memory_info().rss)
                await asyncio.sleep(0.05)
            call.cancel()
            closed.set()
            runs_at_close = recogniser.stats.execution_count
            cancelled_at = time.monotonic()
            while time.monotonic() - cancelled_at < 1.0:
                peak_rss = max(peak_rss, process.memory_info().rss)
                await asyncio.sleep(0.05)
            # From a second after the close on, the server does (almost) nothing: the page's
            # batches cost ~0.25 CPU-s each, so even one more would show.
            before = cpu_s(process)
            await asyncio.sleep(1.5)
            idle_cpu = cpu_s(process) - before
            runs_after = recogniser.stats.execution_count - runs_at_close
        assert idle_cpu < 0.2, f"{idle_cpu:.2f} CPU-s in 1.5 s after the stream closed"
        # What was on the runner at the close may finish (a run cannot be interrupted): one
        # batch, never the other ~140.
        assert runs_after <= 1, runs_after
        # Crops are prepared batch by batch: the decoded page, the detector's maps and one
        # batch, never all the page's crop tensors at once (+958 MB before).
        growth_mb = (peak_rss - baseline_rss) / 2**20
        assert growth_mb < 400, f"RSS grew {growth_mb:.0f} MB"
        assert server.core.frame_memory.held_bytes == 0


async def test_a_page_over_the_work_budget_is_answered_with_the_lines_that_fit(
    tmp_path: Path, built_models: Path
):
    """The page of 880 lines under a budget of 40: answered (not failed, not dropped) with at
    most 40 lines read, marked truncated in the result and counted."""
    repo = ppocr_repository(built_models, tmp_path / "repo", max_crops=40)
    page = png_bytes(text_grid(1600, 1200, 8, 110))
    async with running_server(repo) as server:
        result = await read_page(server.port, page)
        read = list(result.detections)
        assert 0 < len(read) <= 40, len(read)
        assert result.truncated  # the client is told, not only the metrics
        truncated = server.metrics.registry.get_sample_value(
            "edgefleet_frames_truncated_total", {"model": "ppocr"}
        )
        assert truncated == 1
        # Under its budget the same pipeline answers a frame whole, and says so.
        whole = await read_page(server.port, png_bytes(text_grid(640, 480, 2, 3)))
        assert not whole.truncated and whole.detections


async def test_an_expensive_camera_gets_its_share_of_device_time_and_no_more(
    tmp_path: Path, built_models: Path
):
    """Two honest cameras (a sign of 4 words) beside a hostile one (a page of 280 words, 64
    read), all sending as fast as the server takes frames. Served by frame count the page took
    most of the device; served by cost each camera gets about a third of the measured device
    time (edgefleet_open_stream_cost_seconds). Shares, not latency: on a loaded 2-core machine
    the bounds are generous, and still far from what frame count gives."""
    repo = ppocr_repository(built_models, tmp_path / "repo", max_crops=64)
    honest = png_bytes(text_grid(640, 480, 2, 2))
    hostile = png_bytes(text_grid(640, 480, 8, 35, seed=1))
    cameras = {"honest-1": honest, "honest-2": honest, "hostile": hostile}
    async with running_server(repo) as server:
        answered = dict.fromkeys(cameras, 0)

        async def camera(name: str, page: bytes) -> None:
            async def requests() -> AsyncIterator[fs.StreamRequest]:
                yield fs.StreamRequest(
                    open=fs.StreamOpen(
                        model_name="ppocr", encoding=fs.FRAME_ENCODING_PNG,
                        overload_policy=fs.OVERLOAD_POLICY_BLOCK, max_in_flight=1,
                        stream_id=name,
                    )
                )  # fmt: skip
                for sequence in itertools.count():
                    yield fs.StreamRequest(frame=fs.Frame(sequence=sequence, data=page))

            async for reply in stub.Stream(requests()):
                answered[name] += reply.WhichOneof("kind") == "result"

        def costs() -> dict[str, float]:
            return {
                name: server.metrics.registry.get_sample_value(
                    "edgefleet_open_stream_cost_seconds_total", {"model": "ppocr", "stream": name}
                )
                or 0.0
                for name in cameras
            }

        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = fs_grpc.FrameStreamServiceStub(channel)
            running = [asyncio.create_task(camera(name, page)) for name, page in cameras.items()]
            await asyncio.sleep(8)  # every camera's cost measured, the shares settled
            start = costs()
            await asyncio.sleep(25)
            end = costs()
            # Cancelled, not ended: gRPC buffers many small frames ahead, all to be answered.
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
    used = {name: end[name] - start[name] for name in cameras}
    total = sum(used.values())
    shares = {name: round(value / total, 2) for name, value in used.items()}
    print("device seconds", used, "shares", shares, "answered", answered)
    assert shares["hostile"] < 0.55, shares
    assert shares["honest-1"] > 0.18 and shares["honest-2"] > 0.18, shares


# How long, past its 25 s, the one-at-a-time test waits for its pages on a loaded machine.
PAGES_AT_MOST_S = 150


async def test_a_camera_past_its_share_runs_one_frame_at_a_time(tmp_path: Path, built_models: Path):
    """A live camera of pages (280 words, 64 read) allowed 4 frames in flight and sending
    faster than they are read, beside an honest one at 0.5 fps: served only when the honest
    camera has nothing waiting, the pages run one at a time, so the honest frames' stages wait
    behind at most one page's. Before, pages ran two to four at once (this test saw 6
    overlapping pairs in 25 s) and honest ppocr frames waited 3.5 to 10 s beside them
    (bench_realtime --hostile-only). Each page's run is read from its
    result: it ended when the result came and began `total - queue` before; two runs
    overlapping by more than a generous margin fail."""
    repo = ppocr_repository(built_models, tmp_path / "repo", max_crops=64)
    honest = png_bytes(text_grid(640, 480, 2, 2))
    hostile = png_bytes(text_grid(640, 480, 8, 35, seed=1))
    runs: list[tuple[float, float]] = []
    honest_answers = 0
    two_pages_after_the_first = asyncio.Event()
    async with running_server(repo) as server:
        loop = asyncio.get_running_loop()

        async def camera(name: str, page: bytes, fps: float, window: int) -> None:
            nonlocal honest_answers

            async def requests() -> AsyncIterator[fs.StreamRequest]:
                yield fs.StreamRequest(
                    open=fs.StreamOpen(
                        model_name="ppocr", encoding=fs.FRAME_ENCODING_PNG,
                        overload_policy=fs.OVERLOAD_POLICY_DROP_OLDEST, max_in_flight=window,
                        stream_id=name,
                    )
                )  # fmt: skip
                for sequence in itertools.count():
                    yield fs.StreamRequest(frame=fs.Frame(sequence=sequence, data=page))
                    await asyncio.sleep(1 / fps)

            async for reply in stub.Stream(requests()):
                if reply.WhichOneof("kind") != "result":
                    continue
                if name == "honest":
                    honest_answers += 1
                    continue
                ended = loop.time()
                timings = reply.result.timings
                runs.append((ended - (timings.total_us - timings.queue_us) / 1e6, ended))
                if sum(run[0] >= min(runs)[1] for run in runs) >= 2:
                    two_pages_after_the_first.set()

        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = fs_grpc.FrameStreamServiceStub(channel)
            cameras = [
                asyncio.create_task(camera("honest", honest, 0.5, 4)),
                asyncio.create_task(camera("hostile", hostile, 4.0, 4)),
            ]
            # 25 s, and then until two pages began after the first ended: on a loaded machine
            # a page runs for 7 s or more.
            await asyncio.sleep(25)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PAGES_AT_MOST_S):
                    await two_pages_after_the_first.wait()
            for task in cameras:
                task.cancel()
            await asyncio.gather(*cameras, return_exceptions=True)
    print("page runs", [(round(began, 2), round(ended, 2)) for began, ended in runs])
    assert honest_answers > 0
    # A new stream is charged a usual frame for its first ones: until the first page's overrun
    # shows, a second may start beside it. From the first page's end on, one at a time.
    first_end = min(runs)[1]
    later = sorted(run for run in runs if run[0] >= first_end)
    # Results reach this process a little after they are ready: 0.25 s each side.
    margin = 0.25
    overlapping = [
        (first, second)
        for first, second in itertools.combinations(later, 2)
        if second[0] + margin < first[1] - margin
    ]
    assert len(later) >= 2 and not overlapping, (later, overlapping)


async def test_a_page_past_its_share_yields_the_device_between_its_crop_batches(
    tmp_path: Path, built_models: Path
):
    """An honest camera (a sign of 4 words, 0.5 fps) beside a camera of pages (280 words, 64
    read in crop batches of 6): once the page's stream is past its share, none of its crop
    batches starts while an honest frame is on the server; the honest frame shares the device
    with at most the page's unit already running when it came. Before, the page's batches went
    on beside every honest frame (its detector run on the same cores, its crops in the
    recogniser's queue behind them: honest age up to 3.5 s on a loaded 2-core machine). Each
    recogniser run is seen where the runtime reports it (the model's stats, called through);
    honest frames' server time is read from their results. Order, not latency: a run counts
    when it began well inside an honest frame's time."""
    repo = ppocr_repository(built_models, tmp_path / "repo", max_crops=64)
    honest = png_bytes(text_grid(640, 480, 2, 2))
    hostile = png_bytes(text_grid(640, 480, 8, 35, seed=1))
    page_batch_starts: list[float] = []  # loop times at which a full crop batch began
    honest_frames: list[tuple[float, float]] = []  # (arrival, result) loop times
    async with running_server(repo) as server:
        loop = asyncio.get_running_loop()
        recogniser = server.core.registry.active("ppocr_rec")
        assert recogniser is not None
        full_batch = recogniser.plan.max_batch_size  # the honest sign has fewer crops
        record = recogniser.stats.record_execution

        # Observed, not mocked: every run is still recorded as before.
        def seen(rows: int, infer_s: float) -> None:
            if rows == full_batch:
                page_batch_starts.append(loop.time() - infer_s)
            record(rows, infer_s)

        recogniser.stats.record_execution = seen  # type: ignore[method-assign,assignment]

        async def camera(name: str, page: bytes, fps: float) -> None:
            async def requests() -> AsyncIterator[fs.StreamRequest]:
                yield fs.StreamRequest(
                    open=fs.StreamOpen(
                        model_name="ppocr", encoding=fs.FRAME_ENCODING_PNG,
                        overload_policy=fs.OVERLOAD_POLICY_DROP_OLDEST, max_in_flight=2,
                        stream_id=name,
                    )
                )  # fmt: skip
                for sequence in itertools.count():
                    yield fs.StreamRequest(frame=fs.Frame(sequence=sequence, data=page))
                    await asyncio.sleep(1 / fps)

            async for reply in stub.Stream(requests()):
                if reply.WhichOneof("kind") == "result" and name == "honest":
                    ended = loop.time()
                    honest_frames.append((ended - reply.result.timings.total_us / 1e6, ended))

        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = fs_grpc.FrameStreamServiceStub(channel)
            began = loop.time()
            cameras = [
                asyncio.create_task(camera("honest", honest, 0.5)),
                asyncio.create_task(camera("hostile", hostile, 1.0)),
            ]
            await asyncio.sleep(36)
            for task in cameras:
                task.cancel()
            await asyncio.gather(*cameras, return_exceptions=True)
    # The first seconds: the page's stream is new, charged a usual frame until its cost shows.
    measured = [frame for frame in honest_frames if frame[0] > began + 8]
    # Well inside: a batch that passed its turn just before the honest frame came may start a
    # moment later, and results reach this process a little after they are ready.
    margin = 0.1
    overlapped = [
        (arrival, result)
        for arrival, result in measured
        if any(arrival + margin < start < result - margin for start in page_batch_starts)
    ]
    print("honest frames", len(measured), "with a page batch started inside", len(overlapped))
    assert len(measured) >= 5, honest_frames
    assert len(page_batch_starts) >= 10  # the page was read meanwhile, not starved
    assert len(overlapped) <= len(measured) // 5, (overlapped, measured)
