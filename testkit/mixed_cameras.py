"""Live cameras of different cost on one model: honest ones beside a hostile one (issue 23).

Each camera sends one pre-encoded frame over and over at its own rate with DROP_OLDEST, as a
real camera would; results that arrive inside the measured window count. Used by
bench/bench_realtime.py's hostile-camera rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc


@dataclass(frozen=True)
class Camera:
    name: str
    data: bytes
    encoding: fs.FrameEncoding
    fps: float


@dataclass
class CameraReport:
    name: str
    sent: int = 0
    answered: int = 0
    errors: int = 0
    ages_s: list[float] = field(default_factory=list)  # capture to received, one host
    # The server's own timings of each answer (queue, preprocess, inference, total), seconds.
    timings_s: list[tuple[float, float, float, float]] = field(default_factory=list)

    def age_quantile(self, q: float) -> float:
        if not self.ages_s:
            return float("inf")
        ordered = sorted(self.ages_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_cameras(
    port: int, model: str, cameras: list[Camera], seconds: float, warm_up_s: float = 2.0
) -> list[CameraReport]:
    """Every camera sends for `warm_up_s + seconds`; frames captured and answered within the
    last `seconds` count (a frame still running at the end is not an answer)."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1
    window = (start + warm_up_s, start + warm_up_s + seconds)
    reports = [CameraReport(camera.name) for camera in cameras]

    async def one(stub: fs_grpc.FrameStreamServiceStub, index: int) -> None:
        camera, report = cameras[index], reports[index]
        captured: dict[int, float] = {}

        async def requests() -> AsyncIterator[fs.StreamRequest]:
            yield fs.StreamRequest(
                open=fs.StreamOpen(
                    model_name=model, encoding=camera.encoding, source_fps=camera.fps,
                    overload_policy=fs.OVERLOAD_POLICY_DROP_OLDEST, stream_id=camera.name,
                )
            )  # fmt: skip
            first = start + index / (camera.fps * len(cameras))
            sequence = 0
            while (due := first + sequence / camera.fps) < window[1]:
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                captured[sequence] = loop.time()
                if loop.time() >= window[0]:
                    report.sent += 1
                yield fs.StreamRequest(
                    frame=fs.Frame(
                        sequence=sequence, capture_time_unix_ns=time.time_ns(), data=camera.data
                    )
                )
                sequence += 1

        async for response in stub.Stream(requests()):
            kind = response.WhichOneof("kind")
            if kind == "error":
                report.errors += 1
            if kind != "result":
                continue
            now = loop.time()
            taken = captured.get(response.result.sequence, 0.0)
            if window[0] <= taken and now <= window[1]:
                report.answered += 1
                report.ages_s.append(now - taken)
                times = response.result.timings
                report.timings_s.append(
                    (times.queue_us / 1e6, times.preprocess_us / 1e6, times.inference_us / 1e6,
                     times.total_us / 1e6)
                )  # fmt: skip

    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 * 2**20)]
    ) as channel:
        stub = fs_grpc.FrameStreamServiceStub(channel)
        await asyncio.gather(*(one(stub, index) for index in range(len(cameras))))
    return reports
