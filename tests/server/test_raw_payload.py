"""The raw-payload check reads entry sizes from the wire exactly as protobuf wrote them, and
refuses only a lone raw input larger than its declared shape."""

from __future__ import annotations

import numpy as np
import pytest

from protos.inference import grpc_service_pb2 as kserve
from server.grpc_api.raw_payload import oversized_payload, raw_entry_sizes
from testkit.kserve import infer_request
from testkit.repositories import ONNX_MODEL

GOOD = np.zeros((1, 3, 224, 224), dtype=np.float32)


def full_request(*entries: bytes) -> kserve.ModelInferRequest:
    """Every top-level field set, so the walk must step over each kind."""
    request = kserve.ModelInferRequest(model_name="m" * 300, model_version="2", id="x" * 20)
    request.parameters["priority"].int64_param = 3
    request.parameters["note"].string_param = "n" * 200
    tensor = request.inputs.add(name="input", datatype="UINT8", shape=[1, 2**40])
    tensor.parameters["binary_data_size"].int64_param = 10**12
    request.outputs.add(name="logits").parameters["classification"].int64_param = 5
    for entry in entries:
        request.raw_input_contents.append(entry)
    return request


@pytest.mark.parametrize(
    "entries", [(), (b"",), (b"a",), (bytes(127), bytes(128)), (bytes(16_384), b"z", bytes(70_000))]
)
def test_entry_sizes_are_read_from_the_wire(entries: tuple[bytes, ...]):
    data = full_request(*entries).SerializeToString()
    assert raw_entry_sizes(data) == [len(entry) for entry in entries]


def test_a_request_with_too_many_fields_is_not_walked():
    request = full_request(b"a")
    for index in range(300):
        request.outputs.add(name=f"o{index}")
    assert raw_entry_sizes(request.SerializeToString()) is None


def test_truncated_bytes_are_not_measured():
    data = full_request(b"abc").SerializeToString()
    assert raw_entry_sizes(data[:-1]) is None  # the last entry is longer than what is left
    assert raw_entry_sizes(data + b"\x80") is None  # a tag cut short


def test_only_a_larger_lone_payload_is_refused():
    request = infer_request(ONNX_MODEL, GOOD)

    def check(raw: bytes) -> str | None:
        del request.raw_input_contents[:]
        request.raw_input_contents.append(raw)
        error = oversized_payload(request, request.SerializeToString())
        return None if error is None else str(error)

    assert check(GOOD.tobytes()) is None
    assert check(GOOD.tobytes()[:-4]) is None  # too few: the servicer names it, as before
    assert check(GOOD.tobytes() + bytes(8)) == (
        "input 'input': 602120 bytes do not match shape [1, 3, 224, 224] of FP32 "
        "(602112 bytes expected)"
    )
    request.raw_input_contents.append(b"second")
    assert oversized_payload(request, request.SerializeToString()) is None
