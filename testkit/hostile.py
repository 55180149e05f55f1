"""Hostile inputs shared by the hardening tests and the fuzzer: image bombs and a seeded corpus
of malformed KServe requests. Everything is built from real encoders and real photos."""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.inference import grpc_service_pb2 as kserve
from testkit.media import jpeg_bytes, photo
from testkit.repositories import ONNX_MODEL

GOOD_SHAPE = [1, 3, 224, 224]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int = 32000, height: int = 32000) -> bytes:
    """A small PNG declaring width x height RGB pixels: a few rows of real zlib data, then IEND.
    A decoder that trusts the header allocates width * height * 3 bytes before noticing."""
    rows = zlib.compress(b"\x00" * (width * 3 + 1) * 64, 9)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


def _sof_offset(jpeg: bytes) -> int:
    index = 2
    while True:
        marker = jpeg[index + 1]
        if 0xC0 <= marker <= 0xC3:
            return index
        index += 2 + int.from_bytes(jpeg[index + 2 : index + 4], "big")


def jpeg_bomb(width: int = 46000, height: int = 23000, *, stray_byte: bool = True) -> bytes:
    """A real tiny JPEG whose start-of-frame header is patched to declare width x height. libjpeg
    pads missing data with grey, so a trusting decoder produces the whole image. With
    `stray_byte` a junk byte sits before the SOF marker (libjpeg skips it with a warning)."""
    jpeg = jpeg_bytes(np.full((16, 16, 3), 128, np.uint8), quality=50)
    sof = _sof_offset(jpeg)
    patched = bytearray(jpeg)
    patched[sof + 5 : sof + 7] = height.to_bytes(2, "big")
    patched[sof + 7 : sof + 9] = width.to_bytes(2, "big")
    if stray_byte:
        patched[sof:sof] = b"\x00"
    return bytes(patched)


# ---------------------------------------------------------------- KServe fuzz corpus

_DATATYPES = ["FP32", "FP16", "FP64", "INT8", "UINT8", "INT32", "INT64", "UINT64", "BOOL",
              "BYTES", "COMPLEX64", "", "fp32"]  # fmt: skip
_HOSTILE_DIMS = [0, 1, 3, 224, -1, -(2**63), 2**31, 2**32 + 1, 2**62, 2**63 - 1, 7, 1000]
_CONTENT_FIELDS: dict[str, list[Any]] = {
    "int_contents": [0, 1, -1, 127, 128, -129, 255, 256, 1000, 2**31 - 1, -(2**31)],
    "uint_contents": [0, 1, 255, 256, 65536, 2**32 - 1],
    "int64_contents": [0, -1, 2**63 - 1, -(2**63)],
    "uint64_contents": [0, 2**64 - 1],
    "fp32_contents": [0.0, 1.0, float("nan"), float("inf"), -1e38],
    "bool_contents": [True, False],
}


_FULL: dict[str, kserve.InferTensorContents] = {}
_ZEROS = bytes(602112)


def _full_contents(field: str) -> kserve.InferTensorContents:
    """A whole [1, 3, 224, 224] worth of values in one typed field, built once (copying a
    message is C work; extending a repeated field by 150k Python values is not)."""
    if field not in _FULL:
        contents = kserve.InferTensorContents()
        getattr(contents, field).extend([_CONTENT_FIELDS[field][0]] * (150528 - 64))
        _FULL[field] = contents
    return _FULL[field]


def _shape(rng: random.Random) -> list[int]:
    if rng.random() < 0.3:
        return list(GOOD_SHAPE)
    rank = rng.choice([0, 1, 2, 4, 4, 4, 5, 17, 70])
    return [rng.choice(_HOSTILE_DIMS) for _ in range(rank)]


def near_valid_request(rng: random.Random) -> kserve.ModelInferRequest:
    """A valid request with one hostile twist that must still be answered correctly (or
    refused precisely): huge classification counts, a final-response flag, odd outputs."""
    request = kserve.ModelInferRequest(model_name=ONNX_MODEL, id="near")
    request.inputs.add(name="input", datatype="FP32", shape=GOOD_SHAPE)
    request.raw_input_contents.append(_ZEROS)
    twist = rng.randrange(5)
    if twist == 0:
        output = request.outputs.add(name="logits")
        output.parameters["classification"].int64_param = rng.choice([1, 1000, 30_000_000, 2**62])
    elif twist == 1:
        request.parameters["triton_enable_empty_final_response"].bool_param = True
    elif twist == 2:
        request.outputs.add(name=rng.choice(["logits", "nope"]))
    elif twist == 3:
        request.inputs[0].contents.fp32_contents.append(1.0)  # raw and typed together
    else:
        request.model_version = rng.choice(["1", "2"])
    return request


def hostile_request(rng: random.Random) -> kserve.ModelInferRequest:
    """One malformed ModelInferRequest aimed at the default model."""
    if rng.random() < 0.15:
        return near_valid_request(rng)
    request = kserve.ModelInferRequest(
        model_name=rng.choice([ONNX_MODEL] * 8 + ["", "nope", "../etc", "x" * 300]),
        model_version=rng.choice([""] * 6 + ["1", "0", "-1", "99999999999999999999", "a"]),
        id=rng.choice(["", "fuzz"]),
    )
    for index in range(rng.choice([0, 1, 1, 1, 1, 2, 65])):
        tensor = request.inputs.add(
            name=rng.choice(["input"] * 5 + ["", "other", f"input{index}"]),
            datatype=rng.choice(_DATATYPES),
            shape=_shape(rng),
        )
        if rng.random() < 0.4:
            field = rng.choice(list(_CONTENT_FIELDS))
            count = rng.choice([0, 1, 5, 150528 if index == 0 else 7, rng.randrange(1, 64)])
            pool = _CONTENT_FIELDS[field]
            if count > 64:
                tensor.contents.CopyFrom(_full_contents(field))
            values = getattr(tensor.contents, field)
            values.extend(rng.choice(pool) for _ in range(min(count, 64)))
        if rng.random() < 0.6:
            size = rng.choice([0, 1, 4, 602112, 602108, rng.randrange(0, 4096)])
            if index > 0:
                size = min(size, 64)
            request.raw_input_contents.append(
                rng.randbytes(min(size, 4096)) + _ZEROS[: max(0, size - 4096)]
            )
    for _ in range(rng.choice([0, 0, 1, 1, 2, 70])):
        output = request.outputs.add(name=rng.choice(["logits", "", "nope"]))
        if rng.random() < 0.7:
            param = output.parameters["classification"]
            choice = rng.random()
            if choice < 0.5:
                param.int64_param = rng.choice([1, 5, 1000, 1001, 30_000_000, 2**62, -1, -(2**63)])
            elif choice < 0.7:
                param.uint64_param = rng.choice([3, 2**64 - 1])
            else:
                param.string_param = "3"
    if rng.random() < 0.2:
        request.parameters["triton_enable_empty_final_response"].bool_param = True
    return request


def hostile_requests(seed: int, count: int) -> Iterator[kserve.ModelInferRequest]:
    rng = random.Random(seed)
    for _ in range(count):
        yield hostile_request(rng)


# ---------------------------------------------------------------- FrameStream abuse


def mutated_jpeg(rng: random.Random, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(rng.choice([1, 4, 32])):
        data[rng.randrange(2, len(data))] = rng.randrange(256)
    if rng.random() < 0.3:
        del data[rng.randrange(2, len(data)) :]
    return bytes(data)


def hostile_frames(seed: int, count: int) -> Iterator[tuple[fs.FrameEncoding, fs.Frame]]:
    """Frames for an open stream: bombs, corrupted real JPEGs, raw frames with hostile sizes."""
    rng = random.Random(seed)
    base = jpeg_bytes(photo("coffee"))
    for sequence in range(count):
        kind = rng.randrange(6)
        if kind == 0:
            yield fs.FRAME_ENCODING_JPEG, fs.Frame(sequence=sequence, data=jpeg_bomb())
        elif kind == 1:
            yield fs.FRAME_ENCODING_PNG, fs.Frame(sequence=sequence, data=png_bomb(20000, 20000))
        elif kind == 2:
            data = jpeg_bomb(60000, 60000, stray_byte=rng.random() < 0.5)
            yield fs.FRAME_ENCODING_JPEG, fs.Frame(sequence=sequence, data=data)
        elif kind == 3:
            width, height = rng.choice([(2**31, 2), (0, 5), (100000, 100000), (7681, 4321)])
            yield (
                fs.FRAME_ENCODING_RAW_RGB,
                fs.Frame(sequence=sequence, data=b"\x00" * 300, width=width, height=height),
            )
        else:
            yield fs.FRAME_ENCODING_JPEG, fs.Frame(sequence=sequence, data=mutated_jpeg(rng, base))
