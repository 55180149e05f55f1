"""Issue 22 items 2 and 3: HTTP bodies never stall the event loop, and every body and header
is bounded in size, in time and in bytes held at once.

The attacker runs in its own process (testkit/programs/http_attacks.py), so only the server's work
runs on the event loop that ServerLive is probed on. The bound is the issue's, ServerLive under
100 ms at the 99th percentile, on top of the p99 the same probe measures just before the attack
on the same machine: on the shared 2-core machine (load averages of 4-7 from other builds) the
scheduler alone delays a 1 ms call by tens of milliseconds, which no server change can remove.
The stall guarded against was 1-15 s; the maximum is also held under one second. RSS bounds
leave several times the expected growth for allocator high-water marks; before the fix one
32 MiB body grew the server by about 1 GB and 20 slow bodies held 650 MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import psutil
import pytest

from protos.inference import grpc_service_pb2 as kserve
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from server.app import EdgeServer
from testkit.edge import running_server
from testkit.http import call
from testkit.programs.http_attacks import write_big_json
from testkit.repositories import ONNX_MODEL, ROOT

# Starts child processes (the server, an attacker) or runs for seconds: a system test.
pytestmark = pytest.mark.system

LIVE_P99_LIMIT_S = 0.100
LIVE_MAX_LIMIT_S = 1.0
BODY_TIMEOUT_S = 2.0
HEADER_TIMEOUT_S = 2.0
# aiohttp drains unread body bytes for LINGER_S (2 s) after an early answer, then closes; the
# rest is margin for a loaded machine.
CLOSE_LIMIT_S = BODY_TIMEOUT_S + 2.0 + 8.0
# ServerLive is probed this long before each attack, to learn the machine's own delays.
BASELINE_S = 1.5


def rss(process: psutil.Process) -> int:
    """The server's memory: this process and its parse process (spawned by multiprocessing),
    not the attacker processes the test starts."""
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class LiveProbe:
    """gRPC ServerLive every 10 ms, and this process's RSS (the server's, with its parse
    process) every 100 ms, while an attack runs."""

    def __init__(self, port: int) -> None:
        self._port = port
        self.latencies: list[float] = []
        self.baseline: list[float] = []
        self.rss_start = rss(psutil.Process())
        self.rss_peak = self.rss_start
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        process = psutil.Process()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self._port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            await stub.ServerLive(kserve.ServerLiveRequest())  # connected before timing
            last_rss = 0.0
            while not self._stop.is_set():
                start = time.monotonic()
                assert (await stub.ServerLive(kserve.ServerLiveRequest(), timeout=60)).live
                self.latencies.append(time.monotonic() - start)
                if start - last_rss >= 0.1:
                    self.rss_peak, last_rss = max(self.rss_peak, rss(process)), start
                await asyncio.sleep(0.01)

    async def __aenter__(self) -> LiveProbe:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(BASELINE_S)  # the machine's own delays, before the attack
        self.baseline = list(self.latencies)
        self.latencies.clear()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    @property
    def p99_s(self) -> float:
        return float(np.percentile(self.latencies, 99))

    def assert_never_stalled(self) -> None:
        baseline = float(np.percentile(self.baseline, 99))
        limit = LIVE_P99_LIMIT_S + baseline
        assert self.p99_s < limit, (
            f"ServerLive p99 {self.p99_s * 1000:.0f} ms under attack, "
            f"{baseline * 1000:.0f} ms before it"
        )
        assert max(self.latencies) < LIVE_MAX_LIMIT_S, f"a {max(self.latencies):.1f} s stall"

    @property
    def growth_mib(self) -> float:
        return (self.rss_peak - self.rss_start) / 2**20


async def attacker(*argv: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "testkit.programs.http_attacks", *argv, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 240)
    assert process.returncode == 0, stderr.decode()[-3000:]
    result: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    return result


@pytest.fixture
async def http_server(repository: Path) -> AsyncIterator[EdgeServer]:
    async with running_server(
        repository, http_port=0, http_body_timeout_s=BODY_TIMEOUT_S,
        http_header_timeout_s=HEADER_TIMEOUT_S,
    ) as server:  # fmt: skip
        yield server


async def test_32_mib_json_bodies_never_stall_grpc(repository: Path, tmp_path: Path):
    body = str(write_big_json(tmp_path / "body.json", 31.5))  # encoded before the probe runs
    async with running_server(repository, http_port=0) as server:
        url = f"http://127.0.0.1:{server.http_port}/v2/models/{ONNX_MODEL}/infer"
        async with LiveProbe(server.port) as probe:
            one = await attacker("big-json", url, body)
            two = await asyncio.gather(
                attacker("big-json", url, body), attacker("big-json", url, body)
            )
    for result in (one, *two):
        assert result["status"] == 200, result
        assert '"model_name":"efficientnet_lite0"' in result["answer"], result
    assert len(probe.latencies) > 20
    probe.assert_never_stalled()
    assert probe.growth_mib < 600, f"RSS grew {probe.growth_mib:.0f} MiB"


def parse_processes() -> int:
    return sum(
        "spawn_main" in " ".join(child.cmdline())
        for child in psutil.Process().children(recursive=True)
    )


async def test_the_parse_process_starts_with_the_first_large_body(repository: Path, tmp_path: Path):
    """A device that never gets a large JSON body does not carry the parse process (~41 MB
    with multiprocessing's resource tracker); the first large body starts it and is answered."""
    body = io.BytesIO(write_big_json(tmp_path / "body.json", 1.0).read_bytes())
    async with running_server(repository, http_port=0) as server:
        before = parse_processes()
        url = f"http://127.0.0.1:{server.http_port}/v2/models/{ONNX_MODEL}/infer"
        async with aiohttp.ClientSession() as session:
            small = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
            async with session.post(url, json=small) as response:
                assert response.status == 400  # parsed on the loop: wrong input, no process
            assert parse_processes() == before
            async with session.post(url, data=body) as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["model_name"] == ONNX_MODEL
        assert parse_processes() == before + 1


async def test_a_parse_process_killed_mid_body_is_counted_and_replaced(
    repository: Path, tmp_path: Path
):
    """kill -9 of the parse process while it parses a large body: that request gets 429 (retry),
    the restart is counted in the server's metrics, and the next large body is answered."""
    body = write_big_json(tmp_path / "body.json", 8.0).read_bytes()
    async with running_server(repository, http_port=0) as server:
        url = f"http://127.0.0.1:{server.http_port}/v2/models/{ONNX_MODEL}/infer"
        registry = server.core.metrics.registry
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=io.BytesIO(body)) as response:
                assert response.status == 200  # the process is up now
            parser = next(
                child
                for child in psutil.Process().children(recursive=True)
                if "spawn_main" in " ".join(child.cmdline())
            )

            async def kill_while_parsing() -> None:
                await asyncio.sleep(0.05)  # the body is sent and being parsed by now
                parser.kill()

            killer = asyncio.create_task(kill_while_parsing())
            async with session.post(url, data=io.BytesIO(body)) as response:
                status, text = response.status, await response.text()
            await killer
            restarts = registry.get_sample_value("edgefleet_http_parse_process_restarts_total")
            assert restarts == 1, (status, text)
            assert status == 429 and "restarted" in text, (status, text)
            async with session.post(url, data=io.BytesIO(body)) as response:
                assert response.status == 200, await response.text()


async def test_slow_bodies_hold_bounded_memory_and_are_closed(http_server: EdgeServer):
    async with LiveProbe(http_server.port) as probe:
        result = await attacker(
            "slow-bodies", "127.0.0.1", str(http_server.http_port), "20", "32", "31", "30"
        )
    connections = result["connections"]
    closed = [c["closed_after_s"] for c in connections]
    assert all(t is not None and t < CLOSE_LIMIT_S for t in closed), connections
    statuses = {str(c["status"]) for c in connections}
    # The budget (three 32 MiB bodies) took three, answered 408 at the body timeout; the rest
    # were answered 429 at once (a client still sending may see the reset instead: None).
    assert statuses <= {"HTTP/1.1 408 Request Timeout", "HTTP/1.1 429 Too Many Requests", "None"}
    assert "HTTP/1.1 408 Request Timeout" in statuses, connections
    probe.assert_never_stalled()
    # Three bodies of 31 MiB and slack, where 20 used to hold 650 MB.
    assert probe.growth_mib < 250, f"RSS grew {probe.growth_mib:.0f} MiB"


async def test_slow_header_connections_are_closed(http_server: EdgeServer):
    async with LiveProbe(http_server.port) as probe:
        result = await attacker(
            "slow-headers", "127.0.0.1", str(http_server.http_port), "200", "30"
        )
    closed = [c["closed_after_s"] for c in result["connections"]]
    assert all(t is not None and t < HEADER_TIMEOUT_S + 8.0 for t in closed), closed
    assert min(closed) >= HEADER_TIMEOUT_S - 0.5, closed  # the timeout, not an error
    probe.assert_never_stalled()


async def chunked_status(port: int, size: int) -> bytes:
    """The status line answering a chunked body of `size` bytes (no Content-Length). Read while
    still writing: past the limit the server answers and closes without reading the rest."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /v2/models/{ONNX_MODEL}/infer HTTP/1.1\r\nHost: x\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
    )

    async def send() -> None:
        chunk = b"%x\r\n" % 2**16 + b" " * 2**16 + b"\r\n"
        with contextlib.suppress(ConnectionError):
            for _ in range(size // 2**16):
                writer.write(chunk)
                await writer.drain()

    sending = asyncio.create_task(send())
    status = await asyncio.wait_for(reader.readline(), 30)
    await sending
    writer.close()
    return status.strip()


async def test_sizes_are_refused_before_they_are_held(repository: Path):
    async with (
        running_server(repository, http_port=0, max_message_bytes=2**20) as server,
        aiohttp.ClientSession() as session,
    ):
        base = f"http://127.0.0.1:{server.http_port}"
        infer = f"{base}/v2/models/{ONNX_MODEL}/infer"
        reply = await call(session, "POST", infer, b" " * (2**20 + 1))
        assert reply.status == 413 and "exceeds the limit" in reply.error

        assert (
            await chunked_status(server.http_port, 3 * 2**19)
            == b"HTTP/1.1 413 Request Entity Too Large"
        )
        bomb = gzip.compress(b" " * (64 * 2**20))  # 64 MiB of spaces in 64 KiB
        reply = await call(session, "POST", infer, bomb, {"Content-Encoding": "gzip"})
        assert reply.status == 413 and "inflated" in reply.error
        reply = await call(
            session, "POST", infer, b"\x1f\x8bnot gzip", {"Content-Encoding": "gzip"}
        )
        assert reply.status == 400 and "gzip" in reply.error
        reply = await call(session, "POST", infer, b"{}", {"Content-Encoding": "br"})
        assert reply.status == 400 and "not supported" in reply.error
        index = f"{base}/v2/repository/index"
        reply = await call(session, "POST", index, b" " * (64 * 1024 + 1))
        assert reply.status == 413
        # A real gzip request still works (tritonclient compresses with gzip or deflate).
        body = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 224, 224],
                                       "datatype": "FP32", "data": [0.0] * 150528}]})  # fmt: skip
        reply = await call(session, "POST", infer, gzip.compress(body.encode()),
                           {"Content-Encoding": "gzip"})  # fmt: skip
        assert reply.status == 200, reply.body[:300]


async def test_body_budget_answers_429_while_it_is_spent(repository: Path):
    async with running_server(
        repository, http_port=0, max_message_bytes=2**20, http_body_budget_bytes=2**20
    ) as server:
        # A body in flight holds the whole budget: headers and half of its megabyte.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
        writer.write(
            f"POST /v2/models/{ONNX_MODEL}/infer HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {2**20}\r\n\r\n".encode()
            + b" " * 2**19
        )
        await writer.drain()
        await asyncio.sleep(0.3)
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{server.http_port}/v2/models/{ONNX_MODEL}/infer"
            reply = await call(session, "POST", url, b"{}")
            assert reply.status == 429 and "request bodies already" in reply.error
            writer.write(b" " * 2**19)  # the first body completes: not JSON, but read
            await writer.drain()
            assert (await asyncio.wait_for(reader.readline(), 30)).startswith(b"HTTP/1.1 400")
            writer.close()
            reply = await call(session, "POST", url, b"{}")  # the budget is back
            assert reply.status == 400 and "no inputs" in reply.error
