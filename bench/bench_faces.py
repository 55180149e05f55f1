"""The `faces` pipeline (MTCNN) served over FrameStream vs the same cascade in eager PyTorch.

Frames: 640x480 and 1280x720 with 0, 1 and 5 faces (edgefleet/face_frames.py: the astronaut's
head pasted on the rocket photo), sent raw RGB. The server (`edgefleet serve`, its own process,
the manifest's plan with the same intra-op threads) runs pyramid -> P-Net -> R-Net -> O-Net;
the baseline runs the very same cascade code (server/vision/mtcnn.py) with our PyTorch modules called
eagerly in one process on the same threads. Per-stage times come from the same cascade run
in-process on the exported ONNX networks. Writes the `<!-- bench:faces -->` section of
docs/benchmarks.md.

    .venv/bin/python -m bench.bench_faces [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

from bench.bench_server import Server
from bench.machine import describe, write_section
from edgefleet.face_frames import frame_with_faces
from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from server.vision.mtcnn import StageTimes, detect_faces
from testkit.faces import copy_faces
from testkit.repositories import BUILT_MODELS, ROOT

THREADS = len(os.sched_getaffinity(0))
SIZES = ((640, 480), (1280, 720))
FACE_COUNTS = (0, 1, 5)
NETS = ("pnet", "rnet", "onet")
STAGES = ("pyramid", "pnet", "proposals", "rnet_crops", "rnet", "refine", "onet_crops", "onet",
          "finish")  # fmt: skip

Network = Callable[[np.ndarray], Sequence[np.ndarray]]


def eager_networks() -> list[Network]:
    import torch

    from edgefleet.export.mtcnn import ONet, PNet, RNet

    torch.set_num_threads(THREADS)
    networks: list[Network] = []
    weights_dir = ROOT / ".cache" / "facenet-pytorch-2.6.0"
    for module_class, net in zip((PNet, RNet, ONet), NETS, strict=True):
        module = module_class()
        module.load_state_dict(torch.load(weights_dir / f"{net}.pt", weights_only=True))
        module.eval()

        def run(batch: np.ndarray, module: torch.nn.Module = module) -> list[np.ndarray]:
            with torch.inference_mode():
                return [tensor.numpy() for tensor in module(torch.from_numpy(batch))]

        networks.append(run)
    return networks


def onnx_networks() -> list[Network]:
    networks: list[Network] = []
    for net in NETS:
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(ROOT / "models" / f"mtcnn_{net}" / "1" / "model.onnx"), options,
            ["CPUExecutionProvider"],
        )  # fmt: skip

        def run(batch: np.ndarray, session: ort.InferenceSession = session) -> list[np.ndarray]:
            return session.run(None, {"input": batch})  # type: ignore[no-any-return]

        networks.append(run)
    return networks


def in_process(
    networks: list[Network], image: np.ndarray, seconds: float
) -> tuple[float, list[float], dict[str, float], int]:
    """(frames/s, latencies ms, ms per stage per frame, faces found) of back-to-back frames."""
    pnet, rnet, onet = networks
    found = len(detect_faces(image, pnet, rnet, onet))  # warm-up
    times = StageTimes()
    latencies: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(latencies) < 3:
        began = time.perf_counter()
        detect_faces(image, pnet, rnet, onet, times=times)
        latencies.append((time.perf_counter() - began) * 1000)
    elapsed = time.perf_counter() - start
    per_stage = {stage: times.seconds.get(stage, 0.0) / len(latencies) * 1000 for stage in STAGES}
    return len(latencies) / elapsed, latencies, per_stage, found


async def served(
    port: int, image: np.ndarray, seconds: float, window: int
) -> tuple[float, list[float], int]:
    """Closed loop over one FrameStream with `window` frames in flight, for `seconds`."""
    payload = np.ascontiguousarray(image).tobytes()
    height, width = image.shape[:2]
    latencies: list[float] = []
    faces = [0]
    room = asyncio.Semaphore(window)
    sent_at: dict[int, float] = {}
    deadline = time.perf_counter() + seconds

    async def requests():
        yield fs.StreamRequest(
            open=fs.StreamOpen(
                model_name="faces", encoding=fs.FRAME_ENCODING_RAW_RGB,
                overload_policy=fs.OVERLOAD_POLICY_BLOCK, max_in_flight=window,
            )
        )  # fmt: skip
        sequence = 0
        while time.perf_counter() < deadline or sequence < 3:
            await room.acquire()
            sent_at[sequence] = time.perf_counter()
            yield fs.StreamRequest(
                frame=fs.Frame(sequence=sequence, data=payload, width=width, height=height)
            )
            sequence += 1

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = fs_grpc.FrameStreamServiceStub(channel)
        start = time.perf_counter()
        async for response in stub.Stream(requests()):
            if response.WhichOneof("kind") == "result":
                result = response.result
                latencies.append((time.perf_counter() - sent_at[result.sequence]) * 1000)
                faces[0] = len(result.detections)
                room.release()
            elif response.WhichOneof("kind") == "error":
                raise SystemExit(f"frame error: {response.error.message}")
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, latencies, faces[0]


async def live_cameras(
    port: int, image: np.ndarray, cameras: int, seconds: float, fps: float = 30.0
) -> tuple[int, int]:
    """`cameras` live streams at `fps` (DROP_OLDEST): (frames sent, frames answered)."""
    payload = np.ascontiguousarray(image).tobytes()
    height, width = image.shape[:2]
    count = int(seconds * fps)

    async def one(stub: fs_grpc.FrameStreamServiceStub) -> int:
        async def requests():
            yield fs.StreamRequest(
                open=fs.StreamOpen(
                    model_name="faces", encoding=fs.FRAME_ENCODING_RAW_RGB, source_fps=fps,
                    overload_policy=fs.OVERLOAD_POLICY_DROP_OLDEST,
                )
            )  # fmt: skip
            loop = asyncio.get_running_loop()
            start = loop.time()
            for sequence in range(count):
                await asyncio.sleep(max(0.0, start + sequence / fps - loop.time()))
                yield fs.StreamRequest(
                    frame=fs.Frame(sequence=sequence, data=payload, width=width, height=height)
                )

        answered = 0
        async for response in stub.Stream(requests()):
            answered += response.WhichOneof("kind") == "result"
        return answered

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = fs_grpc.FrameStreamServiceStub(channel)
        answered = await asyncio.gather(*(one(stub) for _ in range(cameras)))
    return cameras * count, sum(answered)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    args = parser.parse_args()
    machine = describe()
    eager, onnx = eager_networks(), onnx_networks()
    frames = {(size, n): frame_with_faces(size[0], size[1], n).image
              for size in SIZES for n in FACE_COUNTS}  # fmt: skip
    rows, stage_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repo"
        copy_faces(BUILT_MODELS, repository)
        with Server(repository) as server:
            for (size, n), image in frames.items():
                base_fps, base_lat, _, base_found = in_process(eager, image, args.seconds)
                onnx_fps, _, stages, onnx_found = in_process(onnx, image, args.seconds)
                fps, _, served_found = asyncio.run(served(server.port, image, args.seconds, 4))
                one_fps, latencies, _ = asyncio.run(served(server.port, image, args.seconds, 1))
                label = f"{size[0]}x{size[1]}, {n} face{'s' if n != 1 else ''}"
                print(f"{label}: served {fps:.1f} fps, eager {base_fps:.1f} fps "
                      f"(found {served_found}/{onnx_found}/{base_found})", flush=True)  # fmt: skip
                rows.append(
                    f"| {label} | {served_found} | **{fps:.1f}** | {one_fps:.1f} "
                    f"| {percentile(latencies, 50):.1f} "
                    f"| {percentile(latencies, 95):.1f} | {base_fps:.1f} | "
                    f"{percentile(base_lat, 50):.1f} | {percentile(base_lat, 95):.1f} | "
                    f"{onnx_fps:.1f} | **{fps / base_fps:.2f}x** |"
                )
                stage_rows.append(
                    f"| {label} | " + " | ".join(f"{stages[stage]:.1f}" for stage in STAGES) + " |"
                )
            camera_image = frames[((640, 480), 1)]
            sustained, camera_rows = 0, []
            for cameras in (1, 2, 4):
                sent, answered = asyncio.run(
                    live_cameras(server.port, camera_image, cameras, args.seconds * 2)
                )
                camera_rows.append(f"{cameras}: {answered}/{sent} frames answered "
                                   f"({answered / (args.seconds * 2):.1f} fps)")  # fmt: skip
                if answered >= 0.95 * sent:
                    sustained = cameras
                else:
                    break
    body = "\n".join(
        [
            "## Faces pipeline, MTCNN (`bench/bench_faces.py`)",
            "",
            f"Machine: {machine}.",
            f"`faces` served over FrameStream (raw RGB frames, {THREADS} intra-op threads, the "
            "manifest's plan) vs the baseline: the same cascade (server/vision/mtcnn.py) calling our "
            "PyTorch P/R/O-Nets eagerly, in one process, on the same threads. Served frames/s "
            "with 4 frames in flight (stages of different frames overlap) and with 1 (frames "
            "one after another, like the baseline); served p50/p95 with 1 in flight (round "
            "trip); baseline frames back to back. The ratio is the 4-in-flight throughput over "
            "eager's. Target: served >= 2x eager. The in-process ONNX column is the same "
            "cascade on the exported networks in this process (no server): it separates what "
            "the runtime gains from what serving adds or costs.",
            "",
            "| frames | faces found | served fps (4 in flight) | served fps (1 in flight) "
            "| p50 ms | p95 ms | eager fps | eager p50 | eager p95 | in-process ONNX fps "
            "| served / eager |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            "Milliseconds per frame in each stage (the cascade in-process on the exported ONNX "
            "networks, same threads): numpy/OpenCV steps and network runs.",
            "",
            "| frames | " + " | ".join(STAGES) + " |",
            "|---|" + "---:|" * len(STAGES),
            *stage_rows,
            "",
            f"Live cameras at 30 fps (640x480, 1 face, DROP_OLDEST, {args.seconds * 2:g} s): "
            f"**{sustained}** sustained (>= 95% of frames answered); "
            + "; ".join(camera_rows)
            + ".",
            "",
            "Read with care: on a shared machine whose load average is far above its cores, "
            "PyTorch's OpenMP threads lose much more than onnxruntime's, which inflates the "
            "served / eager ratio; compare it with the in-process ONNX column, and rerun on a "
            "quiet machine before quoting it.",
            "",
            "Reproduce: `make bench` or `.venv/bin/python -m bench.bench_faces --seconds 4`.",
        ]
    )
    write_section("faces", body)
    print(body)


if __name__ == "__main__":
    main()
