"""A seeded corpus of hostile KServe v2 HTTP requests, for the HTTP fuzzer and the limit tests:
hostile JSON (wrong types, depths, huge numbers, NaN tokens, broken encodings), lies of the
binary tensor extension (header lengths and blob sizes), absurd shapes, compressed garbage,
unknown paths and methods, and repository calls with junk bodies.

Repository calls only ever name models that do not exist, so the corpus never unloads the
model the checks run against.
"""

from __future__ import annotations

import gzip
import json
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from testkit.repositories import ONNX_MODEL

GOOD_SHAPE = [1, 3, 224, 224]
DATATYPES = [
    "FP32", "FP16", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
    "UINT64", "BOOL", "BYTES", "fp32", "", "FP8", "STRING",
]  # fmt: skip

# The inputs of issue 22 item 4: each answered 500 with a traceback before; 4xx now.
ITEM_4 = {
    "int8_1000": ("infer", {"inputs": [{"name": "input", "shape": [1], "datatype": "INT8",
                                        "data": [1000]}]}),
    "int64_2_63": ("infer", {"inputs": [{"name": "input", "shape": [1], "datatype": "INT64",
                                         "data": [2**63]}]}),
    "shape_wraps_to_0": ("infer", {"inputs": [{"name": "input", "shape": [2**32, 2**32],
                                               "datatype": "FP32", "data": []}]}),
    "dimension_2_70": ("infer", {"inputs": [{"name": "input", "shape": [2**70],
                                             "datatype": "FP32", "data": [1.0]}]}),
    "classification_true": ("infer", {
        "inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1.0]}],
        "outputs": [{"name": "logits", "parameters": {"classification": True}}]}),
    "json_100k_deep": ("infer", b"[" * 100_000),
    "integer_5000_digits": ("infer", b'{"inputs": [{"name": "input", "shape": [1], '
                            b'"datatype": "INT64", "data": [' + b"9" * 5000 + b"]}]}"),
    "load_parameters_string": ("load", {"parameters": "x"}),
    "index_not_utf8": ("index", b'{"ready": "\xff\xfe\xfa"}'),
}  # fmt: skip


@dataclass
class HttpCase:
    kind: str
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _infer_path(rng: random.Random) -> str:
    if rng.random() < 0.9:
        return f"/v2/models/{ONNX_MODEL}/infer"
    version = rng.choice(["1", "2", "0", "-1", "abc", "9" * 30, "%2e%2e"])
    return f"/v2/models/{ONNX_MODEL}/versions/{version}/infer"


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(12 if depth < 4 else 8)
    if choice == 0:
        return rng.randint(-(2**70), 2**70)
    if choice == 1:
        return rng.choice([0, -1, 1, 2**31, 2**63, 2**64, -(2**63) - 1])
    if choice == 2:
        return rng.choice([0.5, -1e308, 1e39, 3.4e38, 1e-320])
    if choice == 3:
        return rng.choice(["", "x" * rng.randint(1, 300), "FP32", "\u202e", "\x00"])
    if choice == 4:
        return rng.choice([True, False])
    if choice in (5, 6, 7):
        return None
    if choice in (8, 9):
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["name", "shape", "datatype", "data", "parameters", "x"]):
            _random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}  # fmt: skip


def _small_json_request(rng: random.Random) -> dict[str, Any]:
    shape = rng.choice([[1, 3, 2, 2], [2], [1, 12], [0], [3, -1], [1, 1, 1, 1, 1]])
    count = max(0, int(np.prod(shape)))
    datatype = rng.choice(DATATYPES)
    data: Any = [
        rng.choice([0, 1, -1, 0.5, 127, 128, 255, 256, 65536, 2**40]) for _ in range(count)
    ]
    if rng.random() < 0.3 and count >= 4:
        data = np.asarray(data).reshape(shape).tolist() if count == int(np.prod(shape)) else data
    return {
        "id": rng.choice(["a", "", 7, None, ["x"]]) if rng.random() < 0.3 else "fuzz",
        "inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}],
    }


def _mutate(rng: random.Random, request: dict[str, Any]) -> dict[str, Any]:
    """Replace one field somewhere in the request with a random JSON value."""
    target = rng.choice(["top", "input", "input", "output", "parameters"])
    value = _random_value(rng)
    if target == "top":
        request[rng.choice(["inputs", "outputs", "id", "parameters"])] = value
    elif (
        target == "input"
        and isinstance(request.get("inputs"), list)
        and request["inputs"]
        and isinstance(request["inputs"][0], dict)
    ):
        request["inputs"][0][rng.choice(["name", "shape", "datatype", "data", "parameters"])] = (
            value
        )
    elif target == "output":
        request["outputs"] = [
            {
                "name": rng.choice(["logits", "nope", 3]),
                "parameters": {
                    rng.choice(["classification", "binary_data", "shared_memory_region"]): value
                },
            }
        ]
    else:
        if isinstance(request.setdefault("parameters", {}), dict):
            request["parameters"][
                rng.choice(["binary_data_output", "timeout", "priority", "sequence_id", "x"])
            ] = value
    return request


def _binary_request(rng: random.Random) -> HttpCase:
    """A real binary-extension request, then (usually) one lie about its sizes."""
    array = np.zeros(GOOD_SHAPE, np.float32)
    size = array.nbytes
    lie = rng.randrange(8)
    declared = {1: size - 4, 2: size + 4, 3: -1, 4: 2**70, 5: 0.5}.get(lie, size)
    wanted = {"binary_data": rng.random() < 0.5, "classification": rng.choice([0, 1, 5, 2000])}
    header = json.dumps({
        "inputs": [{"name": "input", "shape": GOOD_SHAPE, "datatype": "FP32",
                    "parameters": {"binary_data_size": declared}}],
        "outputs": [{"name": "logits", "parameters": wanted}],
    }).encode()  # fmt: skip
    blob = array.tobytes()
    if lie == 6:
        blob = blob[: rng.randrange(len(blob))]
    length: str = str(len(header))
    if lie == 7:
        length = rng.choice(["-1", "abc", str(len(header) + len(blob) + 1), "0", " 1e3", "9" * 40])
    return HttpCase("binary", "POST", _infer_path(rng), header + blob,
                    {"Inference-Header-Content-Length": length})  # fmt: skip


def _raw_body(rng: random.Random) -> bytes:
    choice = rng.randrange(10)
    if choice == 0:
        return b"[" * rng.randint(100, 200_000)
    if choice == 1:
        return b'{"inputs": [{"data": [' + b"7" * rng.randint(4000, 20000) + b"]}]}"
    if choice == 2:
        return '{"inputs": []}'.encode("utf-16")
    if choice == 3:
        return b'{"inputs": [{"name": "\xff\xfe"}]}'
    if choice == 4:
        return b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [NaN]}]}'
    if choice == 5:
        return (
            b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1e99999]}]}'
        )
    if choice == 6:
        return json.dumps(_small_json_request(rng)).encode()[: rng.randint(0, 60)]
    if choice == 7:
        return b"\x00" * rng.randint(0, 500)
    if choice == 8:
        return b'{"inputs": ' + b'{"a": ' * 500 + b"1" + b"}" * 500 + b"}"
    return rng.randbytes(rng.randint(1, 2000))


def hostile_http_requests(seed: int, count: int) -> Iterator[HttpCase]:
    rng = random.Random(seed)
    for _ in range(count):
        kind = rng.randrange(100)
        if kind < 30:
            request = _small_json_request(rng)
            for _ in range(rng.randint(0, 3)):
                request = _mutate(rng, request)
            yield HttpCase("json", "POST", _infer_path(rng), json.dumps(request).encode())
        elif kind < 45:
            yield _binary_request(rng)
        elif kind < 62:
            yield HttpCase("raw", "POST", _infer_path(rng), _raw_body(rng))
        elif kind < 70:
            body = json.dumps(_small_json_request(rng)).encode()
            encoding = rng.choice(["gzip", "deflate", "br", "x-nope"])
            if rng.random() < 0.5:
                body = rng.randbytes(64)  # not what the header says
            elif encoding == "gzip":
                body = gzip.compress(body)
            elif encoding == "deflate":
                body = zlib.compress(body)
            yield HttpCase("encoding", "POST", _infer_path(rng), body,
                           {"Content-Encoding": encoding})  # fmt: skip
        elif kind < 82:
            name = rng.choice(["no_such_model", "a" * 300, "%00", "..%2f..", "ünï"])
            action = rng.choice(["load", "unload"])
            body = rng.choice([
                b"", b"{}", b"[]", b"null", b'{"parameters": 5}', b"\xff", b"{" * 5000,
                b'{"parameters": {"version": [1]}}', b'{"parameters": {"x": 1}}',
                b'{"parameters": {"version": "3"}}',
            ])  # fmt: skip
            yield HttpCase("repository", "POST", f"/v2/repository/models/{name}/{action}", body)
        elif kind < 88:
            body = rng.choice([b"", b"{}", b'{"ready": 1}', b'{"ready": "yes"}', b"[1]",
                               b'{"ready": true}', b"\xc3\x28", b"[" * 3000])  # fmt: skip
            yield HttpCase("index", "POST", "/v2/repository/index", body)
        else:
            method, path = rng.choice([
                ("GET", "/v2/models/no_such_model/config"),
                ("GET", f"/v2/models/{ONNX_MODEL}/versions/77/stats"),
                ("GET", "/v2/nothing/here"),
                ("DELETE", f"/v2/models/{ONNX_MODEL}/infer"),
                ("GET", f"/v2/models/{ONNX_MODEL}/infer"),
                ("POST", "/v2/systemsharedmemory/region/x/register"),
                ("GET", "/v2/cudasharedmemory/status"),
                ("POST", "/v2/trace/setting"),
                ("GET", "/v2/logging"),
                ("GET", f"/v2/models/{ONNX_MODEL}/trace/setting"),
                ("GET", "/" + "x" * 2000),
            ])  # fmt: skip
            yield HttpCase("path", method, path)
