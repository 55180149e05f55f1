"""Every kind of bad input gets a precise status and message, and the server keeps serving."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from protos.inference import grpc_service_pb2 as kserve
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from server.app import EdgeServer
from server.manifest import hash_directory
from testkit.camera import collect
from testkit.edge import server_settings
from testkit.kserve import infer_request
from testkit.media import EXPECTED_TOP1, jpeg_bytes, photo
from testkit.repositories import ONNX_MODEL, copy_model

GOOD = np.zeros((1, 3, 224, 224), dtype=np.float32)


def with_raw(request: kserve.ModelInferRequest, raw: bytes) -> kserve.ModelInferRequest:
    del request.raw_input_contents[:]
    request.raw_input_contents.append(raw)
    return request


def two_raw_entries() -> kserve.ModelInferRequest:
    request = infer_request(ONNX_MODEL, GOOD)
    request.raw_input_contents.append(b"extra")
    return request


def unknown_datatype() -> kserve.ModelInferRequest:
    request = infer_request(ONNX_MODEL, GOOD)
    request.inputs[0].datatype = "COMPLEX64"
    return request


def renamed_input() -> kserve.ModelInferRequest:
    return infer_request(ONNX_MODEL, GOOD, input_name="image")


KSERVE_CASES = {
    "wrong rank": (infer_request(ONNX_MODEL, GOOD[0]), grpc.StatusCode.INVALID_ARGUMENT, "rank"),
    "wrong dimension": (
        infer_request(ONNX_MODEL, np.zeros((1, 3, 200, 224), np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT, "dimension 2",
    ),
    "wrong dtype": (
        infer_request(ONNX_MODEL, GOOD.astype(np.float64)),
        grpc.StatusCode.INVALID_ARGUMENT, "FP64 does not match the model's FP32",
    ),
    "bytes do not match shape": (
        with_raw(infer_request(ONNX_MODEL, GOOD), GOOD.tobytes()[:-4]),
        grpc.StatusCode.INVALID_ARGUMENT, "bytes do not match shape",
    ),
    # Refused as it is parsed (RawPayloadInterceptor), with the servicer's own message.
    "more bytes than the shape": (
        with_raw(infer_request(ONNX_MODEL, GOOD), GOOD.tobytes() + bytes(4)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "602116 bytes do not match shape [1, 3, 224, 224] of FP32 (602112 bytes expected)",
    ),
    "raw entries do not match inputs": (
        two_raw_entries(), grpc.StatusCode.INVALID_ARGUMENT, "2 raw_input_contents for 1 inputs",
    ),
    "unknown datatype": (unknown_datatype(), grpc.StatusCode.INVALID_ARGUMENT, "COMPLEX64"),
    "unknown input": (renamed_input(), grpc.StatusCode.INVALID_ARGUMENT, "unknown input 'image'"),
    "batch too large": (
        infer_request(ONNX_MODEL, np.zeros((9, 3, 224, 224), np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT, "max batch size 8",
    ),
    "unknown model": (infer_request("resnet9000", GOOD), grpc.StatusCode.NOT_FOUND, "resnet9000"),
    "unknown version": (
        infer_request(ONNX_MODEL, GOOD, version="7"), grpc.StatusCode.NOT_FOUND, "no version '7'",
    ),
    "oversized message": (
        # 40 MB of float32: over the default 32 MiB limit (sized for a raw 4K frame).
        infer_request(ONNX_MODEL, np.zeros((1, 3, 2400, 1400), np.float32)),
        grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(KSERVE_CASES))
async def test_kserve_bad_input_gets_precise_status(channel, preprocessed, case):
    request, code, fragment = KSERVE_CASES[case]
    stub = kserve_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.ModelInfer(request)
    assert error.value.code() == code, error.value.details()
    assert fragment in str(error.value.details())
    # ...and the server keeps serving correct answers.
    response = await stub.ModelInfer(
        infer_request(ONNX_MODEL, preprocessed("chelsea"), classification=1)
    )
    label = response.raw_output_contents[0][4:].decode().split(":", 2)[2]
    assert label in EXPECTED_TOP1["chelsea"]


def frame(sequence: int, data: bytes, width: int = 0, height: int = 0) -> fs.StreamRequest:
    return fs.StreamRequest(
        frame=fs.Frame(sequence=sequence, data=data, width=width, height=height)
    )


def opening(encoding: fs.FrameEncoding, model: str = ONNX_MODEL) -> fs.StreamRequest:
    return fs.StreamRequest(open=fs.StreamOpen(model_name=model, encoding=encoding))


JPEG_GARBAGE = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8

FRAME_CASES = {
    "undecodable jpeg": (fs.FRAME_ENCODING_JPEG, frame(1, JPEG_GARBAGE), "undecodable JPEG"),
    "png sent as jpeg": (fs.FRAME_ENCODING_JPEG, frame(1, b"\x89PNG\r\n\x1a\nxxxx"), "is not JPEG"),
    "raw size mismatch": (
        fs.FRAME_ENCODING_RAW_RGB,
        frame(1, b"\x00" * 100, 10, 10),
        "needs 300 bytes",
    ),
    "raw without size": (
        fs.FRAME_ENCODING_RAW_RGB,
        frame(1, b"\x00" * 300),
        "needs width and height",
    ),
    "empty frame": (fs.FRAME_ENCODING_PNG, frame(1, b""), "is empty"),
}


@pytest.mark.parametrize("case", list(FRAME_CASES))
async def test_bad_frame_gets_an_error_and_the_stream_goes_on(channel, case):
    encoding, bad, fragment = FRAME_CASES[case]
    good = jpeg_bytes(photo("coffee"))

    async def requests():
        yield opening(encoding)
        yield bad
        # The same stream then carries a good frame (raw streams send raw bytes).
        if encoding == fs.FRAME_ENCODING_RAW_RGB:
            image = photo("coffee")
            yield frame(2, image.tobytes(), image.shape[1], image.shape[0])
        else:
            yield frame(2, good if encoding == fs.FRAME_ENCODING_JPEG else _png_of_coffee())

    seen = await collect(fs_grpc.FrameStreamServiceStub(channel).Stream(requests()))
    assert [(e.sequence, e.code) for e in seen["error"]] == [
        (1, grpc.StatusCode.INVALID_ARGUMENT.value[0])
    ]
    assert fragment in seen["error"][0].message
    assert [r.sequence for r in seen["result"]] == [2]
    assert seen["result"][0].labels[0].label in EXPECTED_TOP1["coffee"]


def _png_of_coffee() -> bytes:
    from testkit.media import png_bytes

    return png_bytes(photo("coffee"))


STREAM_OPEN_CASES = {
    "unknown encoding": (
        [opening(99)],  # type: ignore[arg-type]  # deliberately not an enum value
        grpc.StatusCode.INVALID_ARGUMENT,
        "not a known frame encoding",
    ),
    "missing encoding": (
        [opening(fs.FRAME_ENCODING_UNSPECIFIED)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "encoding is required",
    ),
    "frame before open": ([frame(0, b"x")], grpc.StatusCode.INVALID_ARGUMENT, "must be `open`"),
    "second open": (
        [opening(fs.FRAME_ENCODING_JPEG), opening(fs.FRAME_ENCODING_JPEG)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "must be a `frame`",
    ),
    "unknown model": (
        [opening(fs.FRAME_ENCODING_JPEG, model="nope")],
        grpc.StatusCode.NOT_FOUND,
        "'nope'",
    ),
}


@pytest.mark.parametrize("case", list(STREAM_OPEN_CASES))
async def test_bad_stream_opening_ends_the_stream_with_status(channel, case):
    messages, code, fragment = STREAM_OPEN_CASES[case]

    async def requests():
        for message in messages:
            yield message

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await collect(fs_grpc.FrameStreamServiceStub(channel).Stream(requests()))
    assert error.value.code() == code
    assert fragment in str(error.value.details())


async def test_unloaded_model_is_unavailable_not_missing(channel, edge_server):
    await edge_server.core.unload_model(ONNX_MODEL)
    stub = kserve_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.ModelInfer(infer_request(ONNX_MODEL, GOOD))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "not loaded" in str(error.value.details())


def _rehash(version_dir: Path) -> None:
    manifest_path = version_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"] = hash_directory(version_dir)
    manifest_path.write_text(json.dumps(manifest))


def _corrupt_file(version_dir: Path) -> None:
    model = version_dir / "model.onnx"
    data = bytearray(model.read_bytes())
    model.unlink()
    data[len(data) // 2 : len(data) // 2 + 4096] = b"\x00" * 4096
    model.write_bytes(bytes(data))


def _truncated_but_signed(version_dir: Path) -> None:
    model = version_dir / "model.onnx"
    data = model.read_bytes()
    model.unlink()
    model.write_bytes(data[:1000])
    _rehash(version_dir)


def _mismatched_manifest(version_dir: Path) -> None:
    manifest_path = version_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["inputs"][0]["name"] = "pixels"
    manifest["preprocess"]["input"] = "pixels"
    manifest_path.write_text(json.dumps(manifest))


def _unreadable_manifest(version_dir: Path) -> None:
    (version_dir / "manifest.json").write_text("{not json")


BAD_MODELS = {
    "checksum mismatch": (_corrupt_file, "sha256"),
    "corrupt model file": (_truncated_but_signed, "cannot load"),
    "manifest does not match graph": (_mismatched_manifest, "do not match the ONNX graph"),
    "unreadable manifest": (_unreadable_manifest, "manifest.json"),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
async def test_bad_model_fails_loudly_and_the_old_version_keeps_serving(
    repository, built_models, preprocessed, case
):
    break_it, fragment = BAD_MODELS[case]
    server = EdgeServer(server_settings(repository))
    await server.start()
    try:
        version_dir = copy_model(built_models, ONNX_MODEL, repository, version="2")
        break_it(version_dir)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.RepositoryModelLoad(
                    kserve.RepositoryModelLoadRequest(model_name=ONNX_MODEL)
                )
            assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert fragment in str(error.value.details())
            response = await stub.ModelInfer(infer_request(ONNX_MODEL, preprocessed("coffee")))
            assert response.model_version == "1"
            index = await stub.RepositoryIndex(kserve.RepositoryIndexRequest())
            states = {(m.version, m.state) for m in index.models}
            assert states == {("1", "READY"), ("2", "UNAVAILABLE")}
            assert fragment in next(m.reason for m in index.models if m.version == "2")
    finally:
        await server.stop(grace_s=1.0)


async def test_full_queue_answers_resource_exhausted(repository, preprocessed):
    manifest_path = repository / ONNX_MODEL / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["batching"] = {"max_batch_size": 1, "max_queue_delay_us": 0, "max_queue_size": 1}
    manifest_path.write_text(json.dumps(manifest))
    server = EdgeServer(server_settings(repository))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            request = infer_request(ONNX_MODEL, preprocessed("coffee"))
            outcomes = await asyncio.gather(
                *(stub.ModelInfer(request) for _ in range(24)), return_exceptions=True
            )
            errors = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
            assert errors, "24 concurrent requests never overflowed a queue of 1"
            assert {e.code() for e in errors} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert "already queued" in str(errors[0].details())
            assert len(errors) < len(outcomes)
            await stub.ModelInfer(request)
    finally:
        await server.stop(grace_s=1.0)
