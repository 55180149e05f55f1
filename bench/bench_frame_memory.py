"""BLOCK streams of raw 4K frames against the frame memory budget, and what gRPC's
bandwidth-delay probing (`EDGEFLEET_GRPC_BDP_PROBE`) changes, for them and for normal traffic.

`edgefleet serve --model efficientnet_lite0` runs in its own process, this one is the cameras:
- 64 BLOCK streams (window 64) of 4 raw 3840x2160 RGB frames each, budget 256 MiB: the
  server's peak RSS (sampled every 10 ms) and whether every stream got every answer;
- one 720p JPEG BLOCK stream (window 4, 300 frames as fast as the server takes them): frames/s
  and server CPU per frame; a 28.7 MB KServe ModelInferRequest, 10 one after the other
  (refused once received: the wrong batch for the input): wall time and server CPU each.
Writes the `<!-- bench:frame-memory -->` section of docs/benchmarks.md.

    .venv/bin/python -m bench.bench_frame_memory
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np
import psutil

from bench import machine
from bench.footprint_probe import MB, PROBE_MODEL, Sampler, ServeProcess
from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.inference import grpc_service_pb2 as kserve
from testkit.media import jpeg_frames
from testkit.processes import EDGEFLEET
from testkit.repositories import BUILT_MODELS, ROOT

BUDGET = 256 * MB
STREAMS, FRAMES = 64, 4
WIDTH, HEIGHT = 3840, 2160
JPEG_FRAMES = 300
KSERVE_REQUESTS = 10
STREAM_METHOD = "/edgefleet.v1.FrameStreamService/Stream"
CHANNEL_OPTIONS = [("grpc.max_send_message_length", 64 * MB)]


def serve(bdp_probe: bool) -> ServeProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "EDGEFLEET_FRAME_MEMORY_BUDGET_BYTES": str(BUDGET),
        "EDGEFLEET_GRPC_BDP_PROBE": "true" if bdp_probe else "false",
    }
    return ServeProcess(EDGEFLEET, BUILT_MODELS, "--model", PROBE_MODEL, env=env)


def open_request(encoding: fs.FrameEncoding, window: int, name: str) -> fs.StreamRequest:
    return fs.StreamRequest(
        open=fs.StreamOpen(
            model_name=PROBE_MODEL, encoding=encoding, overload_policy=fs.OVERLOAD_POLICY_BLOCK,
            max_in_flight=window, stream_id=name,
        )
    )  # fmt: skip


async def raw_4k_streams(port: int) -> int:
    """Streams that got every frame answered."""
    pixels = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), np.uint8).tobytes()
    frames = [
        fs.StreamRequest(
            frame=fs.Frame(sequence=sequence, data=pixels, width=WIDTH, height=HEIGHT)
        ).SerializeToString()
        for sequence in range(FRAMES)
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
        call = channel.stream_stream(
            STREAM_METHOD,
            request_serializer=lambda data: data,
            response_deserializer=fs.StreamResponse.FromString,
        )

        async def one(index: int) -> bool:
            async def requests() -> AsyncIterator[bytes]:
                yield open_request(fs.FRAME_ENCODING_RAW_RGB, 64, f"s{index}").SerializeToString()
                for frame in frames:
                    yield frame

            kinds = [response.WhichOneof("kind") async for response in call(requests())]
            return kinds == ["opened"] + ["result"] * FRAMES

        done = await asyncio.gather(*(one(index) for index in range(STREAMS)))
    return sum(done)


def rss_row(bdp_probe: bool) -> str:
    with serve(bdp_probe) as server:
        assert server.process is not None
        started = time.perf_counter()
        with Sampler(server.process.pid, interval_s=0.01) as sampler:
            completed = asyncio.run(raw_4k_streams(server.port))
        seconds = time.perf_counter() - started
        ready = server.ready_rss
    return (
        f"| {'on' if bdp_probe else 'off (default)'} | {ready / MB:.0f} MB "
        f"| {sampler.peak_rss / MB:,.0f} MB | {(sampler.peak_rss - ready) / MB:+,.0f} MB "
        f"| {completed} of {STREAMS} | {seconds:.0f} s |"
    )


async def normal_traffic(port: int, pid: int) -> tuple[float, float, float, float]:
    """(720p frames/s, server CPU ms per frame, KServe p50 wall ms, server CPU ms per request)."""
    process = psutil.Process(pid)

    def cpu_s() -> float:
        times = process.cpu_times()
        return times.user + times.system

    jpegs = jpeg_frames(("chelsea", "coffee", "astronaut", "rocket"), 1280, 720)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
        call = channel.stream_stream(
            STREAM_METHOD,
            request_serializer=fs.StreamRequest.SerializeToString,
            response_deserializer=fs.StreamResponse.FromString,
        )

        async def stream(count: int) -> int:
            async def requests() -> AsyncIterator[fs.StreamRequest]:
                yield open_request(fs.FRAME_ENCODING_JPEG, 4, "jpeg720")
                for sequence in range(count):
                    yield fs.StreamRequest(
                        frame=fs.Frame(sequence=sequence, data=jpegs[sequence % len(jpegs)])
                    )

            kinds = [response.WhichOneof("kind") async for response in call(requests())]
            return kinds.count("result")

        await stream(20)  # warm-up
        cpu, started = cpu_s(), time.perf_counter()
        answered = await stream(JPEG_FRAMES)
        elapsed, frame_cpu = time.perf_counter() - started, cpu_s() - cpu
        assert answered == JPEG_FRAMES, answered

        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda data: data,
            response_deserializer=kserve.ModelInferResponse.FromString,
        )
        request = kserve.ModelInferRequest(model_name=PROBE_MODEL)
        request.inputs.add(name="input", datatype="FP32", shape=[50, 3, 224, 224])
        request.raw_input_contents.append(bytes(50 * 3 * 224 * 224 * 4))
        data = request.SerializeToString()
        walls = []
        cpu = cpu_s()
        for _ in range(KSERVE_REQUESTS):
            started = time.perf_counter()
            try:
                await infer(data)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
            walls.append(time.perf_counter() - started)
        request_cpu = cpu_s() - cpu
    walls.sort()
    return (
        JPEG_FRAMES / elapsed,
        1000 * frame_cpu / JPEG_FRAMES,
        1000 * walls[len(walls) // 2],
        1000 * request_cpu / KSERVE_REQUESTS,
    )


def cost_row(bdp_probe: bool) -> str:
    with serve(bdp_probe) as server:
        assert server.process is not None
        fps, frame_cpu, wall, request_cpu = asyncio.run(
            normal_traffic(server.port, server.process.pid)
        )
    return (
        f"| {'on' if bdp_probe else 'off (default)'} | {fps:.1f} | {frame_cpu:.1f} "
        f"| {wall:.0f} | {request_cpu:.0f} |"
    )


def main() -> None:
    header = machine.describe()
    rss_rows, cost_rows = [], []
    for bdp_probe in (True, False):
        rss_rows.append(rss_row(bdp_probe))
        print(rss_rows[-1], file=sys.stderr)
    for _ in range(2):  # two rounds, interleaved: the machine's load drifts
        for bdp_probe in (True, False):
            cost_rows.append(cost_row(bdp_probe))
            print(cost_rows[-1], file=sys.stderr)
    body = "\n".join(
        [
            "## BLOCK streams of raw 4K frames and gRPC's BDP probing "
            "(`bench/bench_frame_memory.py`)",
            "",
            f"Machine: {header}.",
            f"`edgefleet serve --model {PROBE_MODEL}` in its own process, the cameras in the "
            "benchmark's. "
            f"{STREAMS} BLOCK streams (window 64) of {FRAMES} raw {WIDTH}x{HEIGHT} RGB frames "
            f"(24 MB messages), frame memory budget {BUDGET // MB} MiB; RSS sampled every 10 ms.",
            "",
            "| BDP probing | RSS ready | peak RSS | peak over ready | streams complete | time |",
            "|---|---:|---:|---:|---:|---:|",
            *rss_rows,
            "",
            "With probing off gRPC receives as many bytes ahead of a stream's reader as its "
            "last message had: the budget holds that for each stream reading, and room for "
            "gRPC handing a message over, so the peak stays about the budget "
            f"({BUDGET / 1e6:.0f} MB). On, each stream's receive window grows to several "
            "messages, which the budget does not see.",
            "",
            f"Normal traffic: one 720p JPEG BLOCK stream (window 4, {JPEG_FRAMES} frames as "
            f"fast as the server takes them), then {KSERVE_REQUESTS} KServe requests of 28.7 MB "
            "one after the other (refused once received: the wrong batch for the input); two "
            "rounds, interleaved.",
            "",
            "| BDP probing | 720p frames/s | server CPU ms/frame | 28.7 MB request p50 ms "
            "| server CPU ms/request |",
            "|---|---:|---:|---:|---:|",
            *cost_rows,
            "",
            "Reproduce: `.venv/bin/python -m bench.bench_frame_memory`.",
        ]
    )
    machine.write_section("frame-memory", body)
    print(body)


if __name__ == "__main__":
    main()
