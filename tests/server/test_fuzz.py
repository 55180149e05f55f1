"""Seeded fuzzing through a real server: malformed ModelInfer requests (unary and over one
stream), image bombs and FrameStream protocol abuse.

`make test` runs a fixed corpus (a few thousand requests, well under a minute). `make fuzz`
runs the same checks with fresh seeds until FUZZ_SECONDS have passed (see README, Hardening).
Checked after every round: no INTERNAL or UNKNOWN status, every stream request answered exactly
once, a normal request still gets the right class, and the server's memory stays bounded.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from typing import Any

import grpc
import psutil
import pytest

from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from server.errors import INTERNAL_MESSAGE
from testkit.hostile import hostile_frames, hostile_requests
from testkit.kserve import bytes_elements, infer_request
from testkit.media import EXPECTED_TOP1
from testkit.repositories import ONNX_MODEL

# Thousands of hostile requests through the real server: system tests.
pytestmark = pytest.mark.system

SEED = 20261130
UNARY = 1000
STREAMED = 1000
FRAMES = 120
# Server memory may grow this much over a run (allocator high-water marks, caches); a single
# decoded bomb would be gigabytes.
RSS_GROWTH_LIMIT = 400 * 2**20
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


async def fuzz_unary(stub, seed: int, count: int) -> Counter[str]:
    """16 callers at once, pulling requests lazily (the corpus is never all in memory)."""
    codes: Counter[str] = Counter()
    corpus = hostile_requests(seed, count)

    async def caller() -> None:
        for request in corpus:
            try:
                await stub.ModelInfer(request, timeout=60)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as error:
                assert error.code() not in FORBIDDEN, (error.code(), error.details(), request)
                codes[error.code().name] += 1

    await asyncio.gather(*(caller() for _ in range(16)))
    return codes


async def fuzz_stream(stub, seed: int, count: int) -> Counter[str]:
    sent: Counter[str] = Counter()

    async def send():
        for index, request in enumerate(hostile_requests(seed, count)):
            request.id = f"fuzz-{index}"
            sent[request.id] += 1
            yield request

    answered: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    async for message in stub.ModelStreamInfer(send(), timeout=120):
        answered[message.infer_response.id] += 1
        assert INTERNAL_MESSAGE not in message.error_message, message.error_message
        outcomes["error_message" if message.error_message else "OK"] += 1
    assert len(sent) == count
    assert answered == sent, "lost or doubled answers"
    return outcomes


async def fuzz_frames(channel, seed: int, count: int) -> Counter[str]:
    by_encoding: dict[fs.FrameEncoding, list[fs.Frame]] = {}
    for encoding, frame in hostile_frames(seed, count):
        by_encoding.setdefault(encoding, []).append(frame)
    stub = fs_grpc.FrameStreamServiceStub(channel)
    outcomes: Counter[str] = Counter()
    for encoding, frames in by_encoding.items():

        async def send(encoding=encoding, frames=frames):
            yield fs.StreamRequest(
                open=fs.StreamOpen(
                    model_name=ONNX_MODEL, encoding=encoding,
                    overload_policy=fs.OVERLOAD_POLICY_BLOCK,
                )
            )  # fmt: skip
            for frame in frames:
                yield fs.StreamRequest(frame=frame)

        answered = set()
        async for response in stub.Stream(send(), timeout=120):
            kind = response.WhichOneof("kind")
            if kind == "error":
                assert response.error.code not in (13, 2), response.error.message
                answered.add(response.error.sequence)
            elif kind == "result":
                answered.add(response.result.sequence)
            outcomes[kind] += 1
        assert answered == {frame.sequence for frame in frames}
    outcomes.update(await protocol_abuse(stub, random.Random(seed)))
    return outcomes


async def protocol_abuse(stub, rng: random.Random) -> Counter[str]:
    """Streams that break FrameStream's rules: each ends with a precise status."""
    jpeg = fs.FRAME_ENCODING_JPEG

    def open_with(**fields: Any) -> fs.StreamRequest:
        return fs.StreamRequest(open=fs.StreamOpen(**{"model_name": ONNX_MODEL, **fields}))

    opening = open_with(encoding=jpeg)
    frame = fs.StreamRequest(frame=fs.Frame(sequence=1, data=b"\xff\xd8"))
    cases = [
        [frame],
        [opening, opening],
        [fs.StreamRequest()],
        [opening, fs.StreamRequest()],
        [open_with(encoding=77)],
        [open_with(encoding=jpeg, model_name="")],
        [open_with(encoding=jpeg, max_in_flight=2**32 - 1)],
        [open_with(encoding=jpeg, overload_policy=9)],
        [open_with(encoding=jpeg, results=fs.ResultOptions(top_k=2**32 - 1)), frame],
    ]
    rng.shuffle(cases)
    codes: Counter[str] = Counter()
    for messages in cases:

        async def send(messages=messages):
            for message in messages:
                yield message

        try:
            async for _ in stub.Stream(send(), timeout=60):
                pass
            codes["stream OK"] += 1
        except grpc.aio.AioRpcError as error:
            assert error.code() not in FORBIDDEN, (error.code(), error.details())
            codes[f"stream {error.code().name}"] += 1
    return codes


async def still_right(stub, preprocessed) -> None:
    response = await stub.ModelInfer(
        infer_request(ONNX_MODEL, preprocessed("chelsea"), classification=1)
    )
    label = bytes_elements(response.raw_output_contents[0])[0].decode().split(":", 2)[2]
    assert label in EXPECTED_TOP1["chelsea"]


async def fuzz_round(channel, preprocessed, seed: int) -> Counter[str]:
    stub = kserve_grpc.GRPCInferenceServiceStub(channel)
    outcomes: Counter[str] = Counter()
    outcomes.update(await fuzz_unary(stub, seed, UNARY))
    outcomes.update(await fuzz_stream(stub, seed + 1, STREAMED))
    outcomes.update(await fuzz_frames(channel, seed + 2, FRAMES))
    await still_right(stub, preprocessed)
    return outcomes


async def test_fuzz_corpus_never_breaks_the_server(channel, preprocessed):
    await still_right(kserve_grpc.GRPCInferenceServiceStub(channel), preprocessed)
    rss_before = psutil.Process().memory_info().rss
    outcomes = await fuzz_round(channel, preprocessed, SEED)
    growth = psutil.Process().memory_info().rss - rss_before
    assert growth < RSS_GROWTH_LIMIT, f"server RSS grew {growth / 2**20:.0f} MiB"
    # The corpus really reaches the model, and really gets refused.
    refused = outcomes["INVALID_ARGUMENT"] + outcomes["error_message"]
    assert outcomes["OK"] > 0 and refused > UNARY + STREAMED // 2, outcomes


@pytest.mark.skipif(not os.environ.get("FUZZ_SECONDS"), reason="long fuzzing: `make fuzz`")
async def test_fuzz_for_a_long_time(channel, preprocessed):
    deadline = time.monotonic() + float(os.environ["FUZZ_SECONDS"])
    rss_start = psutil.Process().memory_info().rss
    seed = int(os.environ.get("FUZZ_SEED", time.time_ns() % 2**32))
    total: Counter[str] = Counter()
    rounds = 0
    while time.monotonic() < deadline:
        total.update(await fuzz_round(channel, preprocessed, seed + 10 * rounds))
        rounds += 1
        growth = psutil.Process().memory_info().rss - rss_start
        assert growth < RSS_GROWTH_LIMIT, f"round {rounds}: RSS grew {growth / 2**20:.0f} MiB"
    print(f"\nfuzz: seed {seed}, {rounds} rounds, outcomes {dict(total)}")
