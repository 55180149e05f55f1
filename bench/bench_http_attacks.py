"""Issue 22's attacks on the HTTP port of a real `edgefleet serve`, with the numbers the issue
asks for: how long gRPC ServerLive stalls while a 32 MiB JSON body (and two at once) is
parsed, the server's RSS, when slow-body and slow-header connections are closed, and the
status of each item-4 input.

    python -m bench.bench_http_attacks [--root DIR] [--wait-s 40]

--root serves another checkout's code (e.g. the commit before issue 22) for a before/after
table. The attacker runs in its own process (testkit/programs/http_attacks.py); ServerLive is
probed from this one every 10 ms. On the shared 2-core machine the figures move by tens of
percent from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil

from protos.inference import grpc_service_pb2 as kserve
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from testkit.hostile_http import ITEM_4
from testkit.programs.http_attacks import write_big_json

ROOT = Path(__file__).resolve().parent.parent
MODEL = "efficientnet_lite0"


class Probe:
    """ServerLive every 10 ms, and the server's RSS (with its children) every 100 ms."""

    def __init__(self, stub: kserve_grpc.GRPCInferenceServiceStub, process: psutil.Process):
        self._stub, self._process = stub, process
        self.latencies: list[float] = []
        self.rss_peak = 0

    def rss(self) -> int:
        total = self._process.memory_info().rss
        for child in self._process.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += child.memory_info().rss
        return total

    async def run(self, stop: asyncio.Event) -> None:
        last_rss = 0.0
        while not stop.is_set():
            start = time.monotonic()
            await self._stub.ServerLive(kserve.ServerLiveRequest(), timeout=60)
            self.latencies.append(time.monotonic() - start)
            if start - last_rss > 0.1:
                self.rss_peak, last_rss = max(self.rss_peak, self.rss()), start
            await asyncio.sleep(0.01)


async def attack(probe_stub, process, *argv: str) -> dict[str, Any]:
    probe = Probe(probe_stub, process)
    rss_before = probe.rss()
    stop = asyncio.Event()
    probing = asyncio.create_task(probe.run(stop))
    attacker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "testkit.programs.http_attacks", *argv, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    output, _ = await attacker.communicate()
    stop.set()
    await probing
    latencies = np.asarray(probe.latencies) * 1000
    return {
        "result": json.loads(output.decode().strip().splitlines()[-1]),
        "live_p99_ms": float(np.percentile(latencies, 99)),
        "live_max_ms": float(latencies.max()),
        "rss_before_mb": rss_before / 2**20,
        "rss_peak_mb": probe.rss_peak / 2**20,
    }


def closed(result: dict[str, Any]) -> str:
    times = [c["closed_after_s"] for c in result["result"]["connections"]]
    done = [t for t in times if t is not None]
    statuses = sorted({str(c["status"]) for c in result["result"]["connections"]})
    if not done:
        return f"none of {len(times)} closed (statuses {statuses})"
    return f"{len(done)}/{len(times)} closed, last after {max(done):.1f} s (statuses {statuses})"


async def item_4(base: str) -> dict[str, int]:
    import aiohttp

    paths = {"infer": f"/v2/models/{MODEL}/infer", "index": "/v2/repository/index",
             "load": f"/v2/repository/models/{MODEL}/load"}  # fmt: skip
    statuses = {}
    async with aiohttp.ClientSession() as session:
        for name, (endpoint, body) in ITEM_4.items():
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            async with session.post(base + paths[endpoint], data=raw) as response:
                statuses[name] = response.status
    return statuses


async def main(root: Path, wait_s: float) -> None:
    env = {
        **os.environ, "PYTHONPATH": str(root),
        # Read by the new settings only; short enough for the benchmark to finish.
        "EDGEFLEET_HTTP_BODY_TIMEOUT_S": "5", "EDGEFLEET_HTTP_HEADER_TIMEOUT_S": "5",
    }  # fmt: skip
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgefleet.cli", "serve", "--repository", str(ROOT / "models"),
        "--model", MODEL, "--port", "0", "--http-port", "0", "--metrics-port", "-1",
        "--planner", "manifest", cwd=root, env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert server.stderr is not None
    drain: asyncio.Task[bytes] | None = None
    try:
        while True:
            line = (await asyncio.wait_for(server.stderr.readline(), 120)).decode()
            found = re.search(r"serving on [\d.]+:(\d+) \(HTTP on (\d+)", line)
            if found:
                grpc_port, http_port = int(found.group(1)), int(found.group(2))
                break
        drain = asyncio.create_task(server.stderr.read())
        process = psutil.Process(server.pid)
        base = f"http://127.0.0.1:{http_port}"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            rows = []
            body = str(write_big_json(Path(tempfile.mkdtemp()) / "body.json", 31.5))
            for label, argv in [
                ("one 31.5 MiB JSON body", ["big-json", f"{base}/v2/models/{MODEL}/infer", body]),
                ("20 slow bodies (31 of 32 MiB sent)",
                 ["slow-bodies", "127.0.0.1", str(http_port), "20", "32", "31", str(wait_s)]),
                ("200 slow-header connections",
                 ["slow-headers", "127.0.0.1", str(http_port), "200", str(wait_s)]),
            ]:  # fmt: skip
                outcome = await attack(stub, process, *argv)
                detail = (
                    f"HTTP {outcome['result']['status']} in {outcome['result']['seconds']:.1f} s"
                    if "status" in outcome["result"]
                    else closed(outcome)
                )
                rows.append(
                    f"| {label} | {outcome['live_p99_ms']:.0f} | {outcome['live_max_ms']:.0f} | "
                    f"{outcome['rss_before_mb']:.0f} -> {outcome['rss_peak_mb']:.0f} | {detail} |"
                )
            statuses = await item_4(base)
        print(f"\nHTTP attacks against {root}\n")
        print("| attack | ServerLive p99 ms | max ms | RSS MB (with children) | outcome |")
        print("| --- | ---: | ---: | --- | --- |")
        print("\n".join(rows))
        print("\n| item-4 input | status |\n| --- | ---: |")
        print("\n".join(f"| {name} | {status} |" for name, status in statuses.items()))
    finally:
        if server.returncode is None:
            server.terminate()
        await server.wait()
        if drain is not None:
            drain.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--wait-s", type=float, default=40.0)
    options = parser.parse_args()
    asyncio.run(main(options.root.resolve(), options.wait_s))
