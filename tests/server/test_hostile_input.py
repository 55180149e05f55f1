"""Issue 10: hostile and mistaken inputs, each answered precisely by a real server on port 0.

Every test here failed before its fix (the issue's number is in each test's name)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from protos.inference import grpc_service_pb2 as kserve
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from server.app import EdgeServer
from server.models.runtime_plan import ManifestPlanner
from testkit.camera import collect
from testkit.edge import server_settings, start_serve
from testkit.hostile import jpeg_bomb, png_bomb
from testkit.kserve import bytes_elements, infer_request, output_array
from testkit.media import EXPECTED_TOP1
from testkit.repositories import ONNX_MODEL, copy_model

ZEROS = np.zeros((1, 3, 224, 224), dtype=np.float32)


@pytest.fixture
def stub(channel):
    return kserve_grpc.GRPCInferenceServiceStub(channel)


def classify(model: str, array: np.ndarray, count: int) -> kserve.ModelInferRequest:
    return infer_request(model, array, classification=count)


async def assert_still_right(stub, preprocessed) -> None:
    response = await stub.ModelInfer(classify(ONNX_MODEL, preprocessed("chelsea"), 1))
    label = bytes_elements(response.raw_output_contents[0])[0].decode().split(":", 2)[2]
    assert label in EXPECTED_TOP1["chelsea"]


# ---------------------------------------------------------------- 1: classification count


@pytest.mark.parametrize("count", [1001, 30_000_000, 2**62])
async def test_1_classification_count_is_clamped_to_the_classes(stub, count):
    response = await stub.ModelInfer(classify(ONNX_MODEL, ZEROS, count))
    assert list(response.outputs[0].shape) == [1, 1000]
    items = bytes_elements(response.raw_output_contents[0])
    assert len(items) == 1000
    assert len({item.split(b":")[1] for item in items}) == 1000  # every class exactly once


# ---------------------------------------------------------------- 2: image bombs


def frame_stream(encoding: fs.FrameEncoding, *frames: fs.Frame):
    async def requests():
        yield fs.StreamRequest(open=fs.StreamOpen(model_name=ONNX_MODEL, encoding=encoding))
        for item in frames:
            yield fs.StreamRequest(frame=item)

    return requests()


BOMBS = {
    "png 32000x32000": (fs.FRAME_ENCODING_PNG, lambda: png_bomb(32000, 32000), "32000x32000"),
    "jpeg 46000x23000, stray byte before SOF": (
        fs.FRAME_ENCODING_JPEG, lambda: jpeg_bomb(46000, 23000), "46000x23000",
    ),
    "jpeg 60000x60000": (
        fs.FRAME_ENCODING_JPEG, lambda: jpeg_bomb(60000, 60000, stray_byte=False), "60000x60000",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BOMBS))
async def test_2_image_bombs_are_refused_from_their_header(channel, case):
    encoding, build, declared = BOMBS[case]
    rss_before = psutil.Process().memory_info().rss
    coffee = _coffee(encoding)
    seen = await collect(
        fs_grpc.FrameStreamServiceStub(channel).Stream(
            frame_stream(encoding, fs.Frame(sequence=1, data=build()), coffee)
        )
    )
    assert [(e.sequence, e.code) for e in seen["error"]] == [
        (1, grpc.StatusCode.INVALID_ARGUMENT.value[0])
    ]
    assert declared in seen["error"][0].message and "limit" in seen["error"][0].message
    assert [r.sequence for r in seen["result"]] == [2]
    # Refused before decoding: nothing near the declared size was ever allocated.
    assert psutil.Process().memory_info().rss - rss_before < 200 * 2**20


def _coffee(encoding: fs.FrameEncoding) -> fs.Frame:
    from testkit.media import jpeg_bytes, photo, png_bytes

    image = photo("coffee")
    data = png_bytes(image) if encoding == fs.FRAME_ENCODING_PNG else jpeg_bytes(image)
    return fs.Frame(sequence=2, data=data)


async def test_2_the_pixel_limit_is_a_setting(repository):
    server = EdgeServer(server_settings(repository, max_frame_pixels=640 * 480))
    await server.start()
    try:
        from testkit.media import jpeg_bytes, photo

        big = jpeg_bytes(photo("coffee"))  # 600x400: under the limit
        huge = jpeg_bytes(np.zeros((481, 640, 3), np.uint8))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            seen = await collect(
                fs_grpc.FrameStreamServiceStub(channel).Stream(
                    frame_stream(
                        fs.FRAME_ENCODING_JPEG,
                        fs.Frame(sequence=1, data=huge),
                        fs.Frame(sequence=2, data=big),
                    )
                )
            )
    finally:
        await server.stop(grace_s=1.0)
    assert [e.sequence for e in seen["error"]] == [1]
    assert "limit of 307200" in seen["error"][0].message
    assert [r.sequence for r in seen["result"]] == [2]


def test_2_header_readers_refuse_what_they_cannot_read():
    from server.errors import InvalidInput
    from server.vision.preprocess import FrameEncoding, declared_size

    assert declared_size(jpeg_bomb(46000, 23000), FrameEncoding.JPEG) == (23000, 46000)
    assert declared_size(png_bomb(300, 200), FrameEncoding.PNG) == (200, 300)
    # SOF cut off, or no SOF before the scan: refused, never handed to the decoder.
    bomb = jpeg_bomb(46000, 23000, stray_byte=False)
    for broken in (bomb[:40], b"\xff\xd8\xff\xda\x00\x02" + bytes(50), b"\xff\xd8"):
        with pytest.raises(InvalidInput, match="no readable start-of-frame"):
            declared_size(broken, FrameEncoding.JPEG)
    with pytest.raises(InvalidInput, match="IHDR"):
        declared_size(b"\x89PNG\r\n\x1a\n" + bytes(30), FrameEncoding.PNG)


# ---------------------------------------------------------------- 3, 7: hostile numbers


def raw_request(shape: list[int], raw: bytes, datatype: str = "FP32") -> kserve.ModelInferRequest:
    request = kserve.ModelInferRequest(model_name=ONNX_MODEL)
    request.inputs.add(name="input", datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return request


def typed_request(datatype: str, field: str, values: list[float], shape: list[int]):
    request = kserve.ModelInferRequest(model_name=ONNX_MODEL)
    tensor = request.inputs.add(name="input", datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return request


def both_contents() -> kserve.ModelInferRequest:
    request = infer_request(ONNX_MODEL, ZEROS)
    request.inputs[0].contents.fp32_contents.extend([1.0] * ZEROS.size)
    return request


def string_classification() -> kserve.ModelInferRequest:
    request = classify(ONNX_MODEL, ZEROS, 1)
    request.outputs[0].parameters["classification"].string_param = "3"
    return request


HOSTILE_NUMBERS = {
    # 2^62 * 2^2 wraps to 0 in int64: a huge shape matching an empty payload.
    "shape product wraps around": (raw_request([2**62, 4], b""), "input 'input'"),
    "shape product wraps to the real size": (
        raw_request([2**62 + 1, 150528], ZEROS.tobytes()), "input 'input'",
    ),
    "zero elements, giant dims": (raw_request([0, 2**63 - 1, 2**63 - 1], b""), "no elements"),
    "rank 70": (raw_request([1] * 70, b"\x00" * 4), "rank 70"),
    "INT8 1000": (typed_request("INT8", "int_contents", [1000], [1]), "outside the INT8 range"),
    "UINT8 256": (typed_request("UINT8", "uint_contents", [256], [1]), "outside the UINT8 range"),
    "INT16 -40000": (
        typed_request("INT16", "int_contents", [-40000], [1]), "outside the INT16 range",
    ),
    "typed count wraps": (
        typed_request("FP32", "fp32_contents", [], [2**62, 4]), "input 'input'",
    ),
    "7: raw and typed contents together": (both_contents(), "raw_input_contents"),
    "classification is a string": (string_classification(), "must be an integer"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HOSTILE_NUMBERS))
async def test_3_hostile_numbers_are_invalid_argument_naming_the_input(stub, preprocessed, case):
    request, fragment = HOSTILE_NUMBERS[case]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.ModelInfer(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    assert fragment in str(error.value.details())
    await assert_still_right(stub, preprocessed)


# ---------------------------------------------------------------- 4, 13: stream answers


async def test_4_every_stream_request_is_answered_exactly_once(stub, preprocessed):
    requests = [request for request, _ in HOSTILE_NUMBERS.values()]
    requests += [classify(ONNX_MODEL, preprocessed("chelsea"), 2**62)]
    for index, request in enumerate(requests):
        request.id = f"r{index}"

    async def send():
        for request in requests:
            yield request

    answers = [message async for message in stub.ModelStreamInfer(send())]
    assert sorted(m.infer_response.id for m in answers) == sorted(r.id for r in requests)
    errors = {m.infer_response.id: m.error_message for m in answers if m.error_message}
    assert set(errors) == {f"r{index}" for index in range(len(requests) - 1)}
    assert not any("internal error" in message for message in errors.values())
    last = next(m for m in answers if m.infer_response.id == f"r{len(requests) - 1}")
    assert len(bytes_elements(last.infer_response.raw_output_contents[0])) == 1000


async def test_13_final_response_flag_is_set_when_asked(stub, preprocessed):
    asked = infer_request(ONNX_MODEL, preprocessed("coffee"), request_id="asked")
    asked.parameters["triton_enable_empty_final_response"].bool_param = True
    bad = raw_request([1], b"", "FP32")
    bad.id = "bad"
    bad.parameters["triton_enable_empty_final_response"].bool_param = True
    plain = infer_request(ONNX_MODEL, preprocessed("coffee"), request_id="plain")

    async def send():
        for request in (asked, bad, plain):
            yield request

    answers = {m.infer_response.id: m async for m in stub.ModelStreamInfer(send())}
    assert answers["asked"].infer_response.parameters["triton_final_response"].bool_param
    assert answers["bad"].error_message
    assert answers["bad"].infer_response.parameters["triton_final_response"].bool_param
    assert "triton_final_response" not in answers["plain"].infer_response.parameters


# ---------------------------------------------------------------- 5: unparsable protobuf


async def test_5_garbage_protobuf_is_logged_briefly(edge_server, caplog):
    caplog.set_level(logging.DEBUG)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge_server.port}") as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        for _ in range(50):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call(b"\xff\xff\xff\xff garbage")
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid protobuf message" in str(error.value.details())
        assert (await kserve_grpc.GRPCInferenceServiceStub(channel).ServerLive(
            kserve.ServerLiveRequest()
        )).live  # fmt: skip
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) <= 1, [r.getMessage() for r in loud]
    assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.INFO)


# ---------------------------------------------------------------- 8: no server paths


async def test_8_errors_name_model_and_version_not_server_paths(repository, tmp_path):
    server = EdgeServer(server_settings(repository, models=(ONNX_MODEL,)))
    await server.start()
    broken = copy_model(repository, ONNX_MODEL, repository, version="2")
    (broken / "manifest.json").write_text("{ not json")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            load = kserve.RepositoryModelLoadRequest(model_name=ONNX_MODEL)
            load.parameters["version"].string_param = "2"
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.RepositoryModelLoad(load)
            index = await stub.RepositoryIndex(kserve.RepositoryIndexRequest())
    finally:
        await server.stop(grace_s=1.0)
    details = str(error.value.details())
    assert f"{ONNX_MODEL}/2" in details
    reasons = " ".join(entry.reason for entry in index.models)
    for text in (details, reasons):
        assert str(tmp_path) not in text and str(Path.cwd()) not in text


# ---------------------------------------------------------------- 12: planner batch


async def test_12_client_batch_limit_is_the_manifests_not_the_planners(repository, preprocessed):
    manifest_path = repository / ONNX_MODEL / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["batching"]["max_batch_size"] == 8
    manifest["runtime"]["max_batch_size"] = 2  # the server groups work in twos on this device
    manifest_path.write_text(json.dumps(manifest))
    server = EdgeServer(server_settings(repository), planner=ManifestPlanner())
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            config = await stub.ModelConfig(kserve.ModelConfigRequest(name=ONNX_MODEL))
            photos = ["chelsea", "coffee", "chelsea", "coffee", "coffee"]
            batch = np.concatenate([preprocessed(name) for name in photos])
            response = await stub.ModelInfer(infer_request(ONNX_MODEL, batch))
            single = await stub.ModelInfer(infer_request(ONNX_MODEL, preprocessed("coffee")))
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.ModelInfer(infer_request(ONNX_MODEL, np.concatenate([batch] * 2)))
    finally:
        await server.stop(grace_s=1.0)
    assert config.config.max_batch_size == 8
    assert list(config.config.dynamic_batching.preferred_batch_size) == [2]
    logits = output_array(response)
    assert logits.shape == (5, 1000)
    np.testing.assert_allclose(logits[4], output_array(single)[0], rtol=1e-4, atol=1e-4)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max batch size 8" in str(error.value.details())


# ---------------------------------------------------------------- liveness under attack


@pytest.fixture
async def serve_process(repository, tmp_path):
    """`edgefleet serve` in its own process, as on a device: the test's own client work then
    never shares the server's event loop or GIL."""
    process = await asyncio.to_thread(
        start_serve, tmp_path, "--repository", str(repository), "--port", "0",
        "--metrics-port", "-1", "--http-port", "-1", "--planner", "manifest",
        "--log-level", "WARNING", stdout_to_log=False,
    )  # fmt: skip
    try:
        yield process.port
    finally:
        await asyncio.to_thread(process.stop, 30)


# edgefleet serve as a child process.
@pytest.mark.system
async def test_server_live_answers_quickly_while_hostile_requests_are_in_flight(
    serve_process, preprocessed
):
    """ServerLive on its own channel within 100 ms while bombs, huge classification counts and
    big typed-contents requests are being handled (the issue's one timed requirement)."""
    port = serve_process
    typed = typed_request("FP32", "fp32_contents", [0.0] * ZEROS.size, list(ZEROS.shape))
    hostile = [classify(ONNX_MODEL, ZEROS, 2**40)] * 8 + [typed] * 8
    bombs = [fs.Frame(sequence=index, data=jpeg_bomb()) for index in range(16)]
    bombs += [fs.Frame(sequence=16 + index, data=png_bomb(20000, 20000)) for index in range(4)]

    async def attack(channel: grpc.aio.Channel) -> None:
        attacker = kserve_grpc.GRPCInferenceServiceStub(channel)
        streams = fs_grpc.FrameStreamServiceStub(channel)
        outcomes = await asyncio.gather(
            collect(streams.Stream(frame_stream(fs.FRAME_ENCODING_JPEG, *bombs[:16]))),
            collect(streams.Stream(frame_stream(fs.FRAME_ENCODING_PNG, *bombs[16:]))),
            *(attacker.ModelInfer(request) for request in hostile),
            return_exceptions=True,
        )
        assert not [item for item in outcomes if isinstance(item, BaseException)], outcomes

    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as hostile_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as probe_channel,
    ):
        probe = kserve_grpc.GRPCInferenceServiceStub(probe_channel)
        await probe.ServerLive(kserve.ServerLiveRequest())  # connect before timing
        attacking = asyncio.create_task(attack(hostile_channel))
        latencies = []
        while not attacking.done():
            started = time.perf_counter()
            assert (await probe.ServerLive(kserve.ServerLiveRequest())).live
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.005)
        await attacking
        await assert_still_right(kserve_grpc.GRPCInferenceServiceStub(probe_channel), preprocessed)
    assert len(latencies) >= 3
    latencies.sort()
    within = sum(latency < 0.1 for latency in latencies) / len(latencies)
    # Before the fixes one classification request held the loop for 32 s. On the shared 2-core
    # test machine the OS scheduler alone (load average above 10, onnxruntime threads busy)
    # delays an occasional probe past 100 ms, so one slow probe in twenty is tolerated, while a
    # blocked event loop (every probe in its window waits) fails both conditions.
    assert within >= 0.95, f"{within:.0%} of ServerLive probes within 100 ms: {latencies[-5:]}"
    assert latencies[-1] < 1.0, f"ServerLive took {latencies[-1] * 1000:.0f} ms under attack"
