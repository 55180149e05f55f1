"""Seeded fuzzing of the KServe v2 HTTP port through a real server (issue 22 item 4).

`make test` runs the inputs of item 4 and a fixed corpus (testkit/hostile_http.py);
`make fuzz` runs the corpus with fresh seeds until FUZZ_SECONDS have passed. Checked: no 500
ever, every refusal is a 4xx (or 501 for a feature not offered) with exactly a JSON
`{"error": ...}` body under `Content-Type: application/json`, every 200 is strict JSON (no bare
NaN), the server still classifies a photo correctly and its memory stays bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import numpy as np
import psutil
import pytest

from server.app import EdgeServer
from testkit.edge import running_server
from testkit.hostile_http import ITEM_4, HttpCase, hostile_http_requests
from testkit.http import Reply, binary_infer, call
from testkit.media import EXPECTED_TOP1
from testkit.repositories import ONNX_MODEL

# Starts child processes (the server, an attacker) or runs for seconds: a system test.
pytestmark = pytest.mark.system

SEED = 20261207
REQUESTS = 600
# A small body limit so size refusals are cheap to reach.
MAX_BODY = 4 * 2**20
RSS_GROWTH_LIMIT = 300 * 2**20
REFUSALS = {400, 404, 405, 413, 415, 429, 501}


def _no_constants(token: str) -> None:
    raise ValueError(f"bare {token} in a JSON answer")


def check_reply(case: HttpCase, reply: Reply) -> None:
    assert reply.status != 500, (case.kind, case.path, case.body[:300], reply.body[:300])
    if reply.status == 200:
        if reply.content_type == "application/json":
            json.loads(reply.body, parse_constant=_no_constants)
        return
    assert reply.status in REFUSALS, (reply.status, case.kind, case.body[:200], reply.body[:300])
    assert reply.error, reply


@pytest.fixture
async def http_server(repository: Path) -> AsyncIterator[EdgeServer]:
    async with running_server(repository, http_port=0, max_message_bytes=MAX_BODY) as server:
        yield server


async def still_right(session: aiohttp.ClientSession, base: str, preprocessed) -> None:
    body, headers = binary_infer(preprocessed("chelsea"), classification=1)
    reply = await call(session, "POST", f"{base}/v2/models/{ONNX_MODEL}/infer", body, headers)
    assert reply.status == 200, reply.body[:300]
    (output,) = reply.json()["outputs"]
    assert output["data"][0].split(":", 2)[2] in EXPECTED_TOP1["chelsea"]


@pytest.mark.parametrize("name", sorted(ITEM_4))
async def test_item_4_inputs_are_4xx_with_a_json_error(http_server: EdgeServer, name: str):
    endpoint, body = ITEM_4[name]
    path = {
        "infer": f"/v2/models/{ONNX_MODEL}/infer",
        "load": f"/v2/repository/models/{ONNX_MODEL}/load",
        "index": "/v2/repository/index",
    }[endpoint]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as session:
        reply = await call(session, "POST", f"http://127.0.0.1:{http_server.http_port}{path}", raw)
    assert reply.status == 400, (name, reply.status, reply.body[:300])
    assert reply.error
    assert "Traceback" not in reply.error and "internal error" not in reply.error


async def fuzz_http(base: str, seed: int, count: int) -> Counter[str]:
    """8 callers at once, pulling cases lazily from one generator."""
    corpus = hostile_http_requests(seed, count)
    outcomes: Counter[str] = Counter()

    async def caller(session: aiohttp.ClientSession) -> None:
        for case in corpus:
            try:
                reply = await call(session, case.method, base + case.path, case.body, case.headers)
            except aiohttp.ClientResponseError as exc:  # the server refused the bytes themselves
                assert exc.status in (400, 413), exc
                outcomes[f"{case.kind} {exc.status}"] += 1
                continue
            check_reply(case, reply)
            outcomes[str(reply.status)] += 1

    async with aiohttp.ClientSession(auto_decompress=False) as session:
        await asyncio.gather(*(caller(session) for _ in range(8)))
    return outcomes


async def test_http_fuzz_corpus_never_breaks_the_server(
    http_server: EdgeServer, preprocessed: Callable[[str], np.ndarray]
):
    base = f"http://127.0.0.1:{http_server.http_port}"
    async with aiohttp.ClientSession() as session:
        await still_right(session, base, preprocessed)
    rss_before = psutil.Process().memory_info().rss
    outcomes = await fuzz_http(base, SEED, REQUESTS)
    growth = psutil.Process().memory_info().rss - rss_before
    assert growth < RSS_GROWTH_LIMIT, f"server RSS grew {growth / 2**20:.0f} MiB"
    async with aiohttp.ClientSession() as session:
        await still_right(session, base, preprocessed)
    # The corpus really reaches the model, and really gets refused.
    assert outcomes["200"] > 0 and outcomes["400"] > REQUESTS // 3, outcomes


@pytest.mark.skipif(not os.environ.get("FUZZ_SECONDS"), reason="long fuzzing: `make fuzz`")
async def test_http_fuzz_for_a_long_time(http_server: EdgeServer, preprocessed):
    base = f"http://127.0.0.1:{http_server.http_port}"
    deadline = time.monotonic() + float(os.environ["FUZZ_SECONDS"])
    rss_start = psutil.Process().memory_info().rss
    seed = int(os.environ.get("FUZZ_SEED", time.time_ns() % 2**32))
    total: Counter[str] = Counter()
    rounds = 0
    while time.monotonic() < deadline:
        total.update(await fuzz_http(base, seed + rounds, REQUESTS))
        rounds += 1
        async with aiohttp.ClientSession() as session:
            await still_right(session, base, preprocessed)
        growth = psutil.Process().memory_info().rss - rss_start
        assert growth < RSS_GROWTH_LIMIT, f"round {rounds}: RSS grew {growth / 2**20:.0f} MiB"
    print(f"\nhttp fuzz: seed {seed}, {rounds} rounds, outcomes {dict(total)}")
