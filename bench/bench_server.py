"""Edge server benchmarks: FrameStream vs in-process onnxruntime, batching, RSS, time-to-ready.

Runs the real server as a subprocess (`edgefleet serve`) and this process as the cameras, so
the two share the machine the way a device and its cameras' gateway would. The baseline is
in-process onnxruntime `session.run` on the same preprocessed frames with the same threads.
Writes the `<!-- bench:server -->` section of docs/benchmarks.md.

    .venv/bin/python -m bench.bench_server [--frames 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import psutil

from bench.grpc_floor import transport_floor
from bench.machine import describe, write_section
from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from server.manifest import read_manifest
from server.vision.preprocess import to_model_input
from testkit.edge import start_serve
from testkit.media import jpeg_bytes, jpeg_frames, photo, resized_photo
from testkit.processes import Spawned
from testkit.repositories import BUILT_MODELS, ROOT, copy_model

MODEL = "efficientnet_lite0"
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
THREADS = len(os.sched_getaffinity(0))


def frames_224() -> list[np.ndarray]:
    return [resized_photo(name, 224, 224) for name in PHOTOS]


def in_process_baseline(
    frames: list[np.ndarray], count: int, server_options: bool = False
) -> tuple[float, float]:
    """(frames per second, p50 ms) of session.run at batch 1 on preprocessed frames; with
    `server_options`, the session options the server's backend uses (spinning off, no arena)."""
    spec = read_manifest(ROOT / "models" / MODEL / "1").preprocess
    assert spec is not None
    tensors = [to_model_input(frame, "rgb", spec) for frame in frames]
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    if server_options:
        options.enable_cpu_mem_arena = False
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(ROOT / "models" / MODEL / "1" / "model.onnx"), options, ["CPUExecutionProvider"]
    )
    for tensor in tensors[:2] * 5:
        session.run(None, {"input": tensor})
    latencies = []
    start = time.perf_counter()
    for index in range(count):
        t0 = time.perf_counter()
        session.run(None, {"input": tensors[index % len(tensors)]})
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    return count / elapsed, float(np.percentile(latencies, 50) * 1000)


class Server:
    """`edgefleet serve` in its own process, on a free port."""

    def __init__(
        self,
        repository: Path,
        planner: str = "manifest",
        *extra: str,
        http_port: int = -1,
        env: dict[str, str] | None = None,
        checkout: Path = ROOT,
    ) -> None:
        self.repository = repository
        # The server's code: this checkout, or another one (`--before`), run by this Python.
        self.checkout = checkout
        # The manifest's plan by default: the same threads as the baseline, and no one-off
        # int8 guard run (the hardware planner's first load) in time-to-ready.
        self.arguments = ["--planner", planner, "--http-port", str(http_port), *extra]
        self.env = env
        self.workdir = repository.parent / f"serve-{repository.name}"
        self.process: Spawned | None = None
        self.port = 0
        self.ready_s = 0.0
        self._started = 0.0

    def __enter__(self) -> Server:
        self._started = time.perf_counter()
        env = {**(self.env if self.env is not None else os.environ)}
        env["PYTHONPATH"] = str(self.checkout)
        # Polled every 5 ms: time-to-ready is one of the figures.
        self.process = start_serve(
            self.workdir, "--repository", str(self.repository), "--port", "0",
            "--metrics-port", "-1", "--log-level", "WARNING", *self.arguments,
            cwd=self.checkout, env=env, timeout_s=1800, poll_s=0.005,
        )  # fmt: skip
        self.ready_s = time.perf_counter() - self._started
        self.port = self.process.port
        return self

    @property
    def rss_mb(self) -> float:
        assert self.process is not None
        return psutil.Process(self.process.pid).memory_info().rss / 2**20

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.stop(grace_s=30)


async def run_streams(
    port: int,
    frames: list[np.ndarray],
    streams: int,
    per_stream: int,
    window: int,
    jpeg: bool = False,
) -> tuple[float, list[float]]:
    """Closed loop: each stream keeps `window` raw 224x224 frames (or, with `jpeg`, 640x480
    JPEG camera frames) outstanding.
    Returns (total answered frames per second, per-frame round-trip latencies in ms)."""
    if jpeg:
        payloads, width, height = jpeg_640x480(), 0, 0
        encoding = fs.FRAME_ENCODING_JPEG
    else:
        payloads = [np.ascontiguousarray(frame).tobytes() for frame in frames]
        width, height, encoding = 224, 224, fs.FRAME_ENCODING_RAW_RGB
    latencies: list[float] = []

    async def one(stub: fs_grpc.FrameStreamServiceStub, stream_index: int) -> int:
        room = asyncio.Semaphore(window)
        sent_at: dict[int, float] = {}

        async def requests():
            yield fs.StreamRequest(
                open=fs.StreamOpen(
                    model_name=MODEL, encoding=encoding,
                    overload_policy=fs.OVERLOAD_POLICY_BLOCK, max_in_flight=window,
                    results=fs.ResultOptions(top_k=1),
                )
            )  # fmt: skip
            for sequence in range(per_stream):
                await room.acquire()
                sent_at[sequence] = time.perf_counter()
                yield fs.StreamRequest(
                    frame=fs.Frame(
                        sequence=sequence, data=payloads[(sequence + stream_index) % len(payloads)],
                        width=width, height=height,
                    )
                )  # fmt: skip

        answered = 0
        async for response in stub.Stream(requests()):
            if response.WhichOneof("kind") == "result":
                latencies.append((time.perf_counter() - sent_at[response.result.sequence]) * 1000)
                answered += 1
                room.release()
        return answered

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = fs_grpc.FrameStreamServiceStub(channel)
        await asyncio.gather(*(one(stub, i) for i in range(streams)))  # warm-up
        latencies.clear()
        start = time.perf_counter()
        answered = await asyncio.gather(*(one(stub, i) for i in range(streams)))
        elapsed = time.perf_counter() - start
    assert sum(answered) == streams * per_stream
    return sum(answered) / elapsed, latencies


def jpeg_640x480() -> list[bytes]:
    """The photos as 640x480 JPEG camera frames (quality 85), encoded once."""
    return jpeg_frames(PHOTOS, 640, 480, quality=85)


def in_process_cpu(
    frames: list[np.ndarray], count: int, server_options: bool = False
) -> tuple[float, float]:
    """(frames per second, CPU ms per frame) of in-process `session.run`, batch 1, on
    preprocessed frames: this process's user + system time over the timed loop only."""
    me = psutil.Process()
    before = me.cpu_times()
    fps, _ = in_process_baseline(frames, count, server_options)
    after = me.cpu_times()
    # in_process_baseline also builds the session and warms it (10 runs): counted as frames.
    spent = (after.user + after.system) - (before.user + before.system)
    return fps, spent * 1000 / (count + 10)


async def kserve_unary(port: int, frames: list[np.ndarray], count: int, window: int) -> float:
    """ModelInfer, `window` concurrent callers of preprocessed 1x3x224x224 tensors: frames/s."""
    from protos.inference import grpc_service_pb2 as kserve
    from protos.inference import grpc_service_pb2_grpc as kserve_grpc

    spec = read_manifest(ROOT / "models" / MODEL / "1").preprocess
    assert spec is not None
    payloads = [to_model_input(frame, "rgb", spec).tobytes() for frame in frames]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)

        async def caller(offset: int) -> None:
            for index in range(offset, count, window):
                request = kserve.ModelInferRequest(model_name=MODEL, id=str(index))
                request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 224, 224])
                request.raw_input_contents.append(payloads[index % len(payloads)])
                await stub.ModelInfer(request)

        start = time.perf_counter()
        await asyncio.gather(*(caller(offset) for offset in range(window)))
        elapsed = time.perf_counter() - start
    return count / elapsed


def server_cpu(
    server: Server, frames: list[np.ndarray], count: int, me: psutil.Process, per_core: bool
) -> dict[str, tuple[float, float, float, float]]:
    """(frames/s, server CPU, its event-loop thread's CPU, this client's CPU) ms per frame
    for each path through one running server."""
    process = psutil.Process(server.process.pid if server.process else 0)

    def cpu_s() -> tuple[float, float, float]:
        """(server process, its main thread = event loop and gRPC, this client) seconds."""
        times = process.cpu_times()
        loop = next(
            (t.user_time + t.system_time for t in process.threads() if t.id == process.pid),
            0.0,
        )
        mine = me.cpu_times()
        return float(times.user + times.system), loop, float(mine.user + mine.system)

    suffix = f", {THREADS} instances x 1 thread" if per_core else ""
    runs = {
        # run_streams runs the stream twice (a warm-up pass, then the timed pass).
        f"FrameStream raw 224x224 RGB{suffix}": (
            lambda: asyncio.run(run_streams(server.port, frames, 1, count, 4))[0],
            2,
        ),
        f"FrameStream JPEG 640x480{suffix}": (
            lambda: asyncio.run(run_streams(server.port, frames, 1, count, 4, jpeg=True))[0],
            2,
        ),
        f"KServe ModelStreamInfer, 4 in flight{suffix}": (
            lambda: asyncio.run(kserve_stream(server.port, frames, count, 4)),
            1,
        ),
    }
    if not per_core:
        runs["KServe ModelInfer (unary), 4 callers"] = (
            lambda: asyncio.run(kserve_unary(server.port, frames, count, 4)),
            1,
        )
    asyncio.run(kserve_stream(server.port, frames, 20, 4))  # warm the KServe path
    measured = {}
    for name, (work, passes) in runs.items():
        before = cpu_s()
        fps = work()
        after = cpu_s()
        per_frame = [(b - a) * 1000 / (count * passes) for a, b in zip(before, after, strict=True)]
        measured[name] = (fps, per_frame[0], per_frame[1], per_frame[2])
    return measured


def cpu_rows(frames: list[np.ndarray], count: int) -> tuple[list[str], list[str]]:
    """Server-process CPU ms per frame beside in-process onnxruntime CPU ms per frame, one
    run. The server runs batch 1 (the baseline's batch) with the manifest plan's threads
    (= the baseline's); its CPU is read from its own process, the client's is not in it.
    Also: the event-loop thread's share (gRPC and Python per frame) and the client's CPU."""
    measured: dict[str, tuple[float, float, float, float]] = {}
    defaults = [in_process_cpu(frames, count)]
    same = [in_process_cpu(frames, count, server_options=True)]
    me = psutil.Process()
    for per_core in (False, True):
        with (
            tempfile.TemporaryDirectory() as tmp,
            Server(repository_copy(Path(tmp), "batch1", 1, per_core)) as server,
        ):
            measured.update(server_cpu(server, frames, count, me, per_core))
    defaults.append(in_process_cpu(frames, count))
    same.append(in_process_cpu(frames, count, server_options=True))
    base_fps = max(fps for fps, _ in defaults + same)
    base_cpu = min(cpu for _, cpu in same)
    default_cpu = min(cpu for _, cpu in defaults)
    rows = [
        "| path | frames/s | ratio to in-process | CPU ms/frame | overhead +ms/frame "
        "| of which event-loop thread | client CPU ms/frame |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| in-process onnxruntime `session.run`, batch 1, the server's session options "
        f"(best of before/after) | {max(f for f, _ in same):.1f} | "
        f"{max(f for f, _ in same) / base_fps:.2f} | {base_cpu:.2f} | | | |",
        f"| in-process onnxruntime, default session options (spinning on, arena on) | "
        f"{max(f for f, _ in defaults):.1f} | {max(f for f, _ in defaults) / base_fps:.2f} | "
        f"{default_cpu:.2f} | | | |",
    ]
    for name, (fps, cpu, loop_cpu, client_cpu) in measured.items():
        rows.append(
            f"| {name} | {fps:.1f} | {fps / base_fps:.2f} | {cpu:.2f} | {cpu - base_cpu:+.2f} "
            f"| {loop_cpu:.2f} | {client_cpu:.2f} |"
        )
    summary = [
        f"{name}: {cpu:.2f} ms/frame ({cpu - base_cpu:+.2f}, loop {loop_cpu:.2f}, client "
        f"{client_cpu:.2f}), {fps / base_fps:.2f}x"
        for name, (fps, cpu, loop_cpu, client_cpu) in measured.items()
    ]
    return rows, summary


def before_after_section(
    machine: str, frames: list[np.ndarray], count: int, before: Path, rounds: int = 2
) -> None:
    """Server CPU per frame of this checkout and of `before`, alternating servers `rounds`
    times (drift on a shared machine hits both), best of the rounds per path."""
    me = psutil.Process()
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for _ in range(rounds):
        for label, checkout in (("after", ROOT), ("before", before)):
            with (
                tempfile.TemporaryDirectory() as tmp,
                Server(repository_copy(Path(tmp), "batch1", 1), checkout=checkout) as server,
            ):
                for name, (_fps, cpu, loop_cpu, _) in server_cpu(
                    server, frames, count, me, False
                ).items():
                    key = (name, label)
                    if key not in best or cpu < best[key][0]:
                        best[key] = (cpu, loop_cpu)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    rows = [
        "| path | before: server CPU ms/frame (event loop) | after | change |",
        "|---|---:|---:|---:|",
    ]
    for name in dict.fromkeys(name for name, _ in best):
        old, new = best[(name, "before")], best[(name, "after")]
        rows.append(
            f"| {name} | {old[0]:.2f} ({old[1]:.2f}) | {new[0]:.2f} ({new[1]:.2f}) | "
            f"{new[0] - old[0]:+.2f} |"
        )
    body = "\n".join(
        [
            "## Server CPU per frame, before and after the footprint work (`bench/bench_server.py --before`)",
            "",
            f"Machine: {machine}; load average at the end {load} (a machine shared with other "
            "work: figures are the best of the rounds). The server of each checkout runs from "
            f"the same Python, batch 1, manifest planner, {count} frames per path, servers "
            f"alternating {rounds} times. Before: {before}.",
            "",
            *rows,
            "",
            f"Reproduce: `.venv/bin/python -m bench.bench_server --before {before} --frames {count}`.",
        ]
    )
    write_section("server-cpu-before-after", body)
    print(body)


def cpu_section(machine: str, frames: list[np.ndarray], count: int) -> None:
    rows, summary = cpu_rows(frames, count)
    print("\n".join(summary))
    floor = transport_floor()
    body = "\n".join(
        [
            "## Server CPU per frame vs in-process onnxruntime (`bench/bench_server.py`)",
            "",
            f"Machine: {machine}.",
            f"Model: EfficientNet-Lite0 ONNX fp32, {THREADS} intra-op threads in the server "
            "and in the baseline, batch 1 in both (server repository copy with "
            "`max_batch_size` 1, manifest planner). CPU is user + system time from "
            "`psutil` of the server process alone (all its threads) over the run, divided by "
            f"the frames answered ({count} per path; FrameStream also counts its warm-up "
            "pass); the client runs in the benchmark process and is not counted (its own CPU "
            "per frame is the last column: it shares the same cores). The baseline is "
            "this process's time over `session.run` on already preprocessed tensors (session "
            "build and warm-up included, amortised), with the server's session options "
            "(onnxruntime's default, spinning on, is the second row). "
            "FrameStream raw still normalises and lays out the frame in the server; "
            "FrameStream JPEG also decodes a 640x480 JPEG (at reduced scale); KServe "
            "sends the preprocessed tensor. Overhead = server CPU - baseline CPU per frame; "
            "the event-loop thread is the server's main thread (gRPC and all Python per "
            "frame outside the model's runner). Rows marked `instances x 1 thread` run the "
            "server with one model instance per core, one intra-op thread each (the "
            "throughput policy's layout on this machine), against the same one-session "
            "baseline.",
            "",
            *rows,
            "",
            "gRPC's own floor, the same machine and run: a Python grpc.aio servicer that "
            "answers each streamed message with a small result and does nothing else costs "
            + ", ".join(f"{ms:.2f} ms CPU per {size // 1000} KB message" for size, ms in floor)
            + " (a FrameStream JPEG frame is ~50 KB, a raw 224x224 RGB frame 150 KB, a KServe "
            "FP32 1x3x224x224 tensor 602 KB).",
            "",
            "Reproduce: `.venv/bin/python -m bench.bench_server --cpu-only --frames 300`.",
        ]
    )
    write_section("server-cpu", body)
    print(body)


def pipeline_costs(repeats: int = 40) -> list[str]:
    """Per-frame decode + preprocess cost: the server's path vs full-size OpenCV vs Pillow."""
    import io

    import cv2
    from PIL import Image

    from server.vision.preprocess import FrameEncoding, decode_frame

    spec = read_manifest(ROOT / "models" / MODEL / "1").preprocess
    assert spec is not None
    rows = [
        "| JPEG frame | server path (reduced-scale decode) ms | OpenCV full decode ms | Pillow ms |",
        "|---|---:|---:|---:|",
    ]

    def timed(work) -> float:
        work()
        start = time.perf_counter()
        for _ in range(repeats):
            work()
        return (time.perf_counter() - start) / repeats * 1000

    for width, height in ((640, 480), (1920, 1080)):
        image = cv2.resize(photo("astronaut"), (width, height), interpolation=cv2.INTER_CUBIC)
        jpeg = jpeg_bytes(image, quality=85)

        def server_path(jpeg: bytes = jpeg) -> None:
            decoded, color = decode_frame(jpeg, FrameEncoding.JPEG, 0, 0, target=(224, 224))
            to_model_input(decoded, color, spec)

        def opencv_full(jpeg: bytes = jpeg) -> None:
            decoded, color = decode_frame(jpeg, FrameEncoding.JPEG, 0, 0)
            to_model_input(decoded, color, spec)

        def pillow(jpeg: bytes = jpeg) -> None:
            picture = (
                Image.open(io.BytesIO(jpeg))
                .convert("RGB")
                .resize((224, 224), Image.Resampling.BILINEAR)
            )
            to_model_input(np.asarray(picture), "rgb", spec)

        rows.append(
            f"| {width}x{height} | {timed(server_path):.2f} | {timed(opencv_full):.2f} | "
            f"{timed(pillow):.2f} |"
        )
    return rows


def repository_copy(workdir: Path, name: str, max_batch_size: int, per_core: bool = False) -> Path:
    """A copy of the model with its batch size set; `per_core`: one instance per core with
    one intra-op thread each (manifest runtime pins)."""
    repository = workdir / name
    copy_model(BUILT_MODELS, MODEL, repository)
    manifest_path = repository / MODEL / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["batching"]["max_batch_size"] = max_batch_size
    if per_core:
        manifest["runtime"]["intra_op_threads"] = 1
        manifest["runtime"]["instance_count"] = THREADS
    manifest_path.write_text(json.dumps(manifest))
    return repository


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=400, help="frames per measurement")
    parser.add_argument("--int8-only", action="store_true", help="only the int8/startup section")
    parser.add_argument(
        "--cpu-only", action="store_true", help="only server CPU per frame vs in-process"
    )
    parser.add_argument(
        "--before", type=Path, help="another checkout: server CPU per frame of both, side by side"
    )
    args = parser.parse_args()
    machine = describe()
    frames = frames_224()
    if args.before is not None:
        before_after_section(machine, frames, args.frames, args.before)
        return
    if args.cpu_only:
        cpu_section(machine, frames, args.frames)
        return
    if args.int8_only:
        int8_section(machine, frames, args.frames)
        return
    pipeline_rows = pipeline_costs()
    print("\n".join(pipeline_rows))
    # Best of three passes: the most favourable baseline makes every ratio conservative.
    passes = [in_process_baseline(frames, args.frames) for _ in range(3)]
    baseline_fps = max(fps for fps, _ in passes)
    baseline_p50 = min(p50 for _, p50 in passes)
    print(f"in-process onnxruntime: {baseline_fps:.1f} fps, p50 {baseline_p50:.2f} ms")

    results: dict[str, tuple[float, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        batched = repository_copy(Path(tmp), "batched", 8)
        unbatched = repository_copy(Path(tmp), "unbatched", 1)
        with Server(batched) as server:
            ready_s, rss_idle = server.ready_s, server.rss_mb
            results["latency"] = asyncio.run(
                run_streams(server.port, frames, 1, args.frames // 2, 1)
            )
            results["1 stream"] = asyncio.run(run_streams(server.port, frames, 1, args.frames, 4))
            results["8 streams"] = asyncio.run(
                run_streams(server.port, frames, 8, max(args.frames // 8, 8), 4)
            )
            rss_busy = server.rss_mb
        with Server(unbatched) as server:
            results["8 streams, batching off"] = asyncio.run(
                run_streams(server.port, frames, 8, max(args.frames // 8, 8), 4)
            )
        planned_repository = repository_copy(Path(tmp), "planned", 8)
        with Server(planned_repository, planner="hardware") as server:
            results["8 streams, hardware planner's plan"] = asyncio.run(
                run_streams(server.port, frames, 8, max(args.frames // 8, 8), 4)
            )
    for name, (fps, lat) in results.items():
        print(f"{name}: {fps:.1f} fps, p50 {np.percentile(lat, 50):.2f} ms")

    latency_p50 = float(np.percentile(results["latency"][1], 50))
    added = latency_p50 - baseline_p50
    rows = [
        "| measurement | frames/s | ratio to in-process | round-trip p50 ms | p95 ms |",
        "|---|---:|---:|---:|---:|",
        f"| in-process onnxruntime `session.run`, batch 1 (baseline, best of 3 passes) | {baseline_fps:.1f} | 1.00 | {baseline_p50:.2f} | |",
    ]  # fmt: skip
    for name, (fps, lat) in results.items():
        label = {"latency": "FrameStream, 1 stream, 1 frame in flight"}.get(
            name, f"FrameStream, {name}"
        )
        rows.append(
            f"| {label} | {fps:.1f} | {fps / baseline_fps:.2f} | "
            f"{np.percentile(lat, 50):.2f} | {np.percentile(lat, 95):.2f} |"
        )
    on, off = results["8 streams"][0], results["8 streams, batching off"][0]
    planned_fps = results["8 streams, hardware planner's plan"][0]
    body = "\n".join(
        [
            "## Edge server (`bench/bench_server.py`)",
            "",
            f"Machine: {machine}.",
            f"Model: EfficientNet-Lite0 ONNX, {THREADS} intra-op threads in both the server and the "
            "baseline; frames are raw 224x224 RGB (the server still normalises and lays them out). "
            "Closed loop: each stream keeps 4 frames in flight (1 for the latency row). The server "
            "runs as its own process; the cameras run in the benchmark process on the same cores.",
            "",
            *rows,
            "",
            f"- Added p50 latency per 224x224 raw frame over in-process `session.run`: "
            f"**{added:.2f} ms** (target <= 0.3 ms).",
            f"- Batching at 8 streams: {on:.1f} fps with the manifest's batch of 8 vs {off:.1f} "
            f"fps with batching off ({on / off:.2f}x); the hardware planner's plan (fp32 after "
            f"the int8 guard, batch capped at one per core) {planned_fps:.1f} fps. "
            + (
                "Big batches do not pay on this 2-core CPU: a batch of 8 runs no faster per "
                "frame than single frames, while the queue delay adds latency."
                if on < 1.1 * off
                else "Batching pays here."
            ),
            f"- Time to ready (process start to serving, model loaded and warmed): "
            f"**{ready_s:.2f} s** (target <= 2 s).",
            f"- Server RSS: {rss_idle:.0f} MiB when ready, {rss_busy:.0f} MiB after the 8-stream run "
            "(target <= 150 MB).",
            "",
            "Frame pipeline per frame (decode, resize, normalise, layout; one thread): OpenCV "
            "(libjpeg-turbo, SIMD resize, releases the GIL) is the decoder; for JPEG frames much "
            "larger than the model input it decodes at 1/2, 1/4 or 1/8 scale directly.",
            "",
            *pipeline_rows,
            "",
            "This machine is a shared VM whose speed swings from run to run (today the baseline "
            "ranged 128-203 frames/s and the added latency 1.4-4.5 ms across runs), so compare "
            "ratios within one run, not absolute figures across runs.",
            "",
            "Reproduce: `make bench` or `.venv/bin/python -m bench.bench_server --frames 400`.",
        ]
    )
    write_section("server", body)
    print(body)
    cpu_section(machine, frames, args.frames)
    int8_section(machine, frames, args.frames)


# ---- int8 and startup (issue 13): the default `edgefleet serve`, hardware planner on ----


class PlannedServer(Server):
    """`edgefleet serve` with the hardware planner (the default) and its own planner cache;
    ready means answering one real request."""

    def __init__(self, repository: Path, cache: Path, *extra: str) -> None:
        super().__init__(
            repository, "hardware", *extra, http_port=0,
            env={**os.environ, "XDG_CACHE_HOME": str(cache)},
        )  # fmt: skip

    def __enter__(self) -> PlannedServer:
        from protos.inference import grpc_service_pb2 as kserve
        from protos.inference import grpc_service_pb2_grpc as kserve_grpc

        super().__enter__()
        tensor = np.zeros((1, 3, 224, 224), np.float32)
        request = kserve.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 224, 224])
        request.raw_input_contents.append(tensor.tobytes())
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            kserve_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        self.ready_s = time.perf_counter() - self._started
        return self

    def plan(self) -> dict[str, object]:
        from protos.inference import grpc_service_pb2 as kserve
        from protos.inference import grpc_service_pb2_grpc as kserve_grpc

        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            config = stub.ModelConfig(kserve.ModelConfigRequest(name=MODEL)).config
        plan: dict[str, object] = json.loads(config.parameters["edgefleet.plan"].string_value)
        return plan


async def kserve_stream(port: int, frames: list[np.ndarray], count: int, window: int) -> float:
    """ModelStreamInfer, one stream, `window` preprocessed requests in flight: frames/s."""
    from protos.inference import grpc_service_pb2 as kserve
    from protos.inference import grpc_service_pb2_grpc as kserve_grpc

    spec = read_manifest(ROOT / "models" / MODEL / "1").preprocess
    assert spec is not None
    payloads = [to_model_input(frame, "rgb", spec).tobytes() for frame in frames]
    room = asyncio.Semaphore(window)

    async def requests():
        for index in range(count):
            await room.acquire()
            request = kserve.ModelInferRequest(model_name=MODEL, id=str(index))
            request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 224, 224])
            request.raw_input_contents.append(payloads[index % len(payloads)])
            yield request

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        start = time.perf_counter()
        answered = 0
        async for response in stub.ModelStreamInfer(requests()):
            assert not response.error_message, response.error_message
            answered += 1
            room.release()
        elapsed = time.perf_counter() - start
    assert answered == count
    return count / elapsed


async def paced_cameras(port: int, frames: list[np.ndarray], cameras: int, seconds: float) -> float:
    """`cameras` streams at 30 fps (drop-oldest, as a live camera): the slowest camera's
    answered frames per second."""
    payloads = [np.ascontiguousarray(frame).tobytes() for frame in frames]
    count = int(30 * seconds)

    async def one(stub: fs_grpc.FrameStreamServiceStub, index: int) -> int:
        async def requests():
            yield fs.StreamRequest(
                open=fs.StreamOpen(
                    model_name=MODEL, encoding=fs.FRAME_ENCODING_RAW_RGB, source_fps=30,
                    overload_policy=fs.OVERLOAD_POLICY_DROP_OLDEST,
                    results=fs.ResultOptions(top_k=1), stream_id=f"cam{index}",
                )
            )  # fmt: skip
            start = asyncio.get_running_loop().time()
            for sequence in range(count):
                delay = start + sequence / 30 - asyncio.get_running_loop().time()
                if delay > 0:
                    await asyncio.sleep(delay)
                yield fs.StreamRequest(
                    frame=fs.Frame(sequence=sequence, data=payloads[sequence % len(payloads)],
                                   width=224, height=224)
                )  # fmt: skip

        answered = 0
        async for response in stub.Stream(requests()):
            answered += response.WhichOneof("kind") == "result"
        return answered

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = fs_grpc.FrameStreamServiceStub(channel)
        answered = await asyncio.gather(*(one(stub, i) for i in range(cameras)))
    return min(answered) / seconds


def cameras_sustained(port: int, frames: list[np.ndarray], seconds: float) -> tuple[int, str]:
    """Most cameras at 30 fps whose slowest still gets >= 95% of its frames answered."""
    sustained, trail = 0, []
    for cameras in range(1, 9):
        fps = asyncio.run(paced_cameras(port, frames, cameras, seconds))
        trail.append(f"{cameras}: {fps:.1f}")
        if fps < 0.95 * 30:
            break
        sustained = cameras
    return sustained, ", ".join(trail)


def int8_section(machine: str, frames: list[np.ndarray], count: int) -> None:
    """First start with an empty cache (ready time, time until int8 is active, RSS), then
    throughput of the planner's default plan vs in-process fp32 in the same run, and cameras
    at 30 fps with fp32 pinned vs the accepted int8 plan."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repository = repository_copy(work, "shipped", 8)
        cache = work / "cache"
        with PlannedServer(repository, cache) as server:
            first_ready_s, rss_ready = server.ready_s, server.rss_mb
            plan = server.plan()
            pending_at_ready = f"{plan['precision']} now, {plan['pending'] or 'nothing'} pending"
            started = time.perf_counter()
            while plan["pending"] and time.perf_counter() - started < 900:
                time.sleep(1.0)
                plan = server.plan()
            int8_s = server.ready_s + time.perf_counter() - started
            precision = str(plan["precision"])
            reasons = plan["reasons"]
            assert isinstance(reasons, dict)
            why = str(reasons.get("precision", ""))
            time.sleep(2.0)  # the old version retires
            rss_upgraded = server.rss_mb
        with PlannedServer(repository, cache) as server:
            warm_ready_s, rss_warm = server.ready_s, server.rss_mb
            warm_precision = str(server.plan()["precision"])
            baseline = max(in_process_baseline(frames, count)[0] for _ in range(2))
            one_stream = asyncio.run(run_streams(server.port, frames, 1, count, 4))[0]
            eight = asyncio.run(run_streams(server.port, frames, 8, max(count // 8, 8), 4))[0]
            kserve_fps = asyncio.run(kserve_stream(server.port, frames, count, 4))
            baseline_after = in_process_baseline(frames, count)[0]
            rss_busy = server.rss_mb
            int8_cameras, int8_trail = cameras_sustained(server.port, frames, 8.0)
        with PlannedServer(repository, cache, "--precision", "fp32") as server:
            fp32_cameras, fp32_trail = cameras_sustained(server.port, frames, 8.0)
    baseline = max(baseline, baseline_after)
    body = "\n".join(
        [
            "## int8 and startup, default `edgefleet serve` (`bench/bench_server.py`)",
            "",
            f"Machine: {machine}. EfficientNet-Lite0 as shipped (manifest batch 8), hardware "
            "planner on (the default), its cache empty for the first start. The in-process "
            "fp32 baseline (`session.run`, batch 1, best of the passes before and after) runs "
            "in the same run; the machine is shared and loaded, so read the ratios.",
            "",
            "| measurement | value |",
            "|---|---:|",
            f"| time to ready, first start (process start to first answer) | **{first_ready_s:.2f} s** |",
            f"| state at ready | {pending_at_ready} |",
            f"| time until {precision} is active (conversion + guard in the nice'd child) | {int8_s:.0f} s |",
            f"| RSS when ready (fp32 serving, conversion running) | **{rss_ready:.0f} MiB** |",
            f"| RSS after the swap to {precision} | {rss_upgraded:.0f} MiB |",
            f"| time to ready, second start (cache warm, {warm_precision} at once) | {warm_ready_s:.2f} s |",
            f"| RSS when ready, second start | **{rss_warm:.0f} MiB** |",
            f"| RSS after the throughput runs below | {rss_busy:.0f} MiB |",
            f"| in-process fp32 onnxruntime, batch 1 | {baseline:.1f} frames/s (1.00x) |",
            f"| FrameStream, 1 stream, 4 in flight, planner's plan ({warm_precision}) | {one_stream:.1f} frames/s ({one_stream / baseline:.2f}x) |",
            f"| FrameStream, 8 streams, 4 in flight each ({warm_precision}) | {eight:.1f} frames/s ({eight / baseline:.2f}x) |",
            f"| KServe ModelStreamInfer, 1 stream, 4 in flight ({warm_precision}) | {kserve_fps:.1f} frames/s ({kserve_fps / baseline:.2f}x) |",
            f"| cameras at 30 fps sustained, fp32 pinned | {fp32_cameras} (slowest camera's fps by count: {fp32_trail}) |",
            f"| cameras at 30 fps sustained, {warm_precision} | {int8_cameras} ({int8_trail}) |",
            "",
            f"Guard verdict in the plan: {why}",
            "",
            "Reproduce: `.venv/bin/python -m bench.bench_server`.",
        ]
    )  # fmt: skip
    write_section("server-int8", body)
    print(body)


if __name__ == "__main__":
    main()
