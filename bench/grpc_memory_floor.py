"""gRPC's own memory floor for one big unary message, beside `edgefleet serve` on the same one.

A bare Python grpc.aio server (a generic handler, nothing else) receives one 30 MB KServe
ModelInferRequest three times: once handed over as bytes (no parsing) and once parsed by
protobuf, in its own process; then `edgefleet serve --model efficientnet_lite0` receives the
same request (refused: the wrong size for the input). RSS is sampled every 5 ms; the figure is
the peak above RSS just before the requests. What the edge server holds above the floor is its
own; the floor is what any Python gRPC server pays before its code runs.

    .venv/bin/python -m bench.grpc_memory_floor
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from bench import machine
from bench.footprint_probe import MB, PROBE_MODEL, ServeProcess, request_series
from protos.inference import grpc_service_pb2 as kserve
from testkit.processes import EDGEFLEET
from testkit.repositories import BUILT_MODELS

SIZE_MB = 30
REQUESTS = 3

# The bare server: prints its peak RSS over the requests a client child process sends.
_SERVER = textwrap.dedent(
    """
    import asyncio, subprocess, sys, threading, time
    import grpc, psutil
    from protos.inference import grpc_service_pb2 as kserve
    parse, payload, count = sys.argv[1] == "protobuf", sys.argv[2], int(sys.argv[3])

    def deserialize(data):
        return kserve.ModelInferRequest.FromString(data) if parse else len(data)

    async def handler(request, context):
        return b""

    async def main():
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 2**20)])
        method = grpc.unary_unary_rpc_method_handler(
            handler, request_deserializer=deserialize, response_serializer=lambda b: b)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("x.Floor", {"Call": method}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        process, peak, done = psutil.Process(), [0], threading.Event()
        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], process.memory_info().rss)
                time.sleep(0.005)
        before = process.memory_info().rss
        peak[0] = before
        threading.Thread(target=sample, daemon=True).start()
        client = (
            "import grpc, sys\\n"
            "data = open(sys.argv[1], 'rb').read()\\n"
            f"channel = grpc.insecure_channel('127.0.0.1:{port}',"
            " options=[('grpc.max_send_message_length', 64 * 2**20)])\\n"
            "call = channel.unary_unary('/x.Floor/Call', request_serializer=lambda b: b,"
            " response_deserializer=lambda b: b)\\n"
            "for _ in range(int(sys.argv[2])): call(data, timeout=60)\\n"
        )
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", client, payload, str(count))
        await child.wait()
        done.set()
        print(peak[0] - before)
        await server.stop(0)

    asyncio.run(main())
    """
)


def _floor(parse: bool, payload: Path) -> int:
    mode = "protobuf" if parse else "bytes"
    out = subprocess.run(
        [sys.executable, "-c", _SERVER, mode, str(payload), str(REQUESTS)],
        check=True, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": "."},
    )  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    header = machine.describe()
    request = kserve.ModelInferRequest(model_name=PROBE_MODEL)
    request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 224, 224])
    request.raw_input_contents.append(os.urandom(SIZE_MB * MB))
    with tempfile.TemporaryDirectory() as scratch:
        payload = Path(scratch) / "request.bin"
        payload.write_bytes(request.SerializeToString())
        del request
        as_bytes = _floor(False, payload)
        parsed = _floor(True, payload)
    with ServeProcess(EDGEFLEET, BUILT_MODELS, "--model", PROBE_MODEL) as server:
        first = request_series(server, SIZE_MB, 1, settle_s=3)
        series = request_series(server, SIZE_MB, REQUESTS, settle_s=3)
    rows = [
        f"| bare grpc.aio server, message handed over as bytes | +{as_bytes / MB:.0f} MB |",
        f"| bare grpc.aio server, parsed by protobuf | +{parsed / MB:.0f} MB |",
        f"| `edgefleet serve --model {PROBE_MODEL}`, first request (refused) "
        f"| +{(first.peak_rss - first.before_rss) / MB:.0f} MB |",
        f"| `edgefleet serve --model {PROBE_MODEL}`, {REQUESTS} more (refused) "
        f"| +{(series.peak_rss - series.before_rss) / MB:.0f} MB |",
    ]
    body = f"""## gRPC's memory floor for one {SIZE_MB} MB message (`bench/grpc_memory_floor.py`)

Machine: {header}.
One {SIZE_MB} MB KServe ModelInferRequest, {REQUESTS} times one after the other; RSS sampled
every 5 ms (every 20 ms for the edge server), peak above RSS just before the requests.

| receiver | peak over before |
|---|---:|
{chr(10).join(rows)}

The bare server peaks at three to five times the message (gRPC's receive buffers,
the bytes handed to the deserializer, the parsed message) before any application code runs;
what `edgefleet serve` holds above that is its own share (issue 21's goal is +150 MB for a
series of such requests).

Reproduce: `.venv/bin/python -m bench.grpc_memory_floor`.
"""
    machine.write_section("grpc-memory-floor", body)
    print(body)


if __name__ == "__main__":
    main()
