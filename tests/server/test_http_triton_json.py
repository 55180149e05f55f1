"""Issue 22 item 5: statistics and config over HTTP as Triton writes them, read by Triton's own
tools. perf_analyzer (from the tritonclient 2.41.0 wheel; `make test` installs it with
scripts/install_perf_analyzer.sh) measures over HTTP and gRPC and must read the same server
counts; tritonclient's HTTP client must read the very messages its gRPC client reads.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from server.app import EdgeServer
from testkit.edge import running_server
from testkit.http import call
from testkit.repositories import ONNX_MODEL, ROOT

# Starts child processes (the server, an attacker) or runs for seconds: a system test.
pytestmark = pytest.mark.system

PERF_ANALYZER = ROOT / "build" / "perf_analyzer"


@pytest.fixture
async def http_server(repository: Path) -> AsyncIterator[EdgeServer]:
    async with running_server(repository, http_port=0) as server:
        yield server


async def run(*command: str, env: dict[str, str] | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(env or {})},
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 180)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-3000:]
    return text


async def test_tritonclient_reads_the_same_stats_and_config_over_http_and_grpc(http_server):
    text = await run(
        sys.executable, str(Path(__file__).with_name("http_stats_check.py")),
        f"127.0.0.1:{http_server.http_port}", f"127.0.0.1:{http_server.port}", ONNX_MODEL,
    )  # fmt: skip
    report = json.loads(text.strip().splitlines()[-1])
    assert report["stats_equal"] and report["config_equal"] and report["all_models_equal"]
    assert report["strings_for_numbers"] == []
    assert report["durations_present"] == sorted([
        "success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
        "cache_hit", "cache_miss",
    ])  # fmt: skip
    assert report["fail"] == {"count": 0, "ns": 0}  # zero fields present, as numbers
    assert report["success_count"] == 2 and report["inference_count"] == 2
    assert report["version"] == "1"
    assert report["max_batch_size"] == 8 and report["dims"] == [3, 224, 224]


async def test_json_answers_are_strict_and_errors_are_plain_application_json(http_server):
    base = f"http://127.0.0.1:{http_server.http_port}"
    async with aiohttp.ClientSession() as session:
        for path in (f"/v2/models/{ONNX_MODEL}/stats", f"/v2/models/{ONNX_MODEL}/config", "/v2"):
            reply = await call(session, "GET", base + path)
            assert reply.status == 200 and reply.content_type == "application/json"
        for method, path, feature in [
            ("GET", "/v2/systemsharedmemory/status", "system shared memory"),
            ("POST", "/v2/cudasharedmemory/region/r/register", "CUDA shared memory"),
            ("GET", "/v2/trace/setting", "trace settings"),
            ("POST", f"/v2/models/{ONNX_MODEL}/trace/setting", "trace settings"),
            ("GET", "/v2/logging", "log settings"),
        ]:
            reply = await call(session, method, base + path, b"{}")
            assert reply.status == 501 and f"{feature} is not supported" in reply.error
        reply = await call(session, "GET", base + "/v2/nothing")
        assert reply.status == 404 and "no such endpoint" in reply.error
        reply = await call(session, "DELETE", f"{base}/v2/models/{ONNX_MODEL}/infer")
        assert reply.status == 405 and reply.error
        load = f"{base}/v2/repository/models/{ONNX_MODEL}/load"
        reply = await call(session, "POST", load, b'{"parameters": {"config": "{}"}}')
        assert reply.status == 400 and "'config' is not supported" in reply.error


def perf_server_section(output: str) -> dict[str, int]:
    client = int(re.search(r"Client:\s+Request count: (\d+)", output).group(1))  # type: ignore[union-attr]
    server = re.search(
        r"Server:\s+Inference count: (\d+)\s+Execution count: (\d+)\s+"
        r"Successful request count: (\d+)\s+Avg request latency: (\d+) usec", output
    )  # fmt: skip
    assert server is not None, output[-2000:]
    inference, execution, success, latency = (int(group) for group in server.groups())
    return {"client": client, "inference": inference, "execution": execution,
            "success": success, "latency_us": latency}  # fmt: skip


@pytest.mark.skipif(
    not (PERF_ANALYZER / "bin" / "perf_analyzer").exists(),
    reason="perf_analyzer is not installed: `make test` (scripts/install_perf_analyzer.sh)",
)
@pytest.mark.parametrize("protocol", ["http", "grpc"])
async def test_perf_analyzer_reads_server_stats(http_server, protocol: str):
    port = http_server.http_port if protocol == "http" else http_server.port
    output = await run(
        str(PERF_ANALYZER / "bin" / "perf_analyzer"), "-m", ONNX_MODEL, "-x", "1",
        "-u", f"127.0.0.1:{port}", "-i", protocol, "--shape", "input:3,224,224",
        "--measurement-mode", "count_windows", "--measurement-request-count", "20",
        # A loaded 2-core machine rarely gives three windows within 10% of each other.
        "--stability-percentage", "200", "--max-trials", "4",
        env={"LD_LIBRARY_PATH": str(PERF_ANALYZER / "lib"), "HOME": os.environ.get("HOME", "/")},
    )  # fmt: skip
    counts = perf_server_section(output)
    # Both sides count the same measurement windows of synchronous requests.
    assert counts["client"] >= 20, counts
    assert abs(counts["inference"] - counts["client"]) <= 2, counts
    assert counts["success"] == counts["inference"] and counts["execution"] <= counts["inference"]
    assert 0 < counts["latency_us"] < 10_000_000, counts
