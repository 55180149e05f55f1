"""The attacks of issue 22 on the HTTP port, run as a separate process (so the attacker's own
work never runs on the server's event loop): prints one JSON line with what it saw.

    python -m testkit.programs.http_attacks big-json URL MIB|BODY_FILE
    python -m testkit.programs.http_attacks slow-bodies HOST PORT CONNECTIONS DECLARED SENT WAIT_S
    python -m testkit.programs.http_attacks slow-headers HOST PORT CONNECTIONS WAIT_S

big-json posts one JSON infer body of about MIB MiB (8 photos' worth of float values as text),
or the body in BODY_FILE (written beforehand with `write_big_json`, so that encoding it is not
part of the measurement).
slow-bodies opens connections that declare DECLARED MiB, send SENT MiB of it and stop;
slow-headers opens connections that send a header line a second and never finish. Both report,
per connection, the status line the server answered (if any) and when it closed the connection.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MIB = 2**20


def big_json_body(mib: float) -> bytes:
    """A KServe JSON infer request for the default model, about `mib` MiB of digits."""
    rng = np.random.default_rng(22)
    shape = [8, 3, 224, 224]
    values = rng.standard_normal(int(np.prod(shape)))
    text = json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                                   "data": values.tolist()}]})  # fmt: skip
    data = text.encode()
    if len(data) < mib * MIB:  # pad with whitespace JSON allows, to the size asked for
        data = data[:-1] + b" " * int(mib * MIB - len(data)) + b"}"
    return data


def write_big_json(path: Path, mib: float) -> Path:
    path.write_bytes(big_json_body(mib))
    return path


async def big_json(url: str, size_or_file: str) -> dict[str, Any]:
    import aiohttp

    file = Path(size_or_file)
    body = file.read_bytes() if file.is_file() else big_json_body(float(size_or_file))  # noqa: ASYNC240
    start = time.monotonic()
    async with aiohttp.ClientSession() as session, session.post(url, data=body) as response:
        answer = await response.read()
    return {"status": response.status, "bytes": len(body), "seconds": time.monotonic() - start,
            "answer": answer[:300].decode(errors="replace")}  # fmt: skip


async def _until_closed(
    reader: asyncio.StreamReader, start: float, wait_s: float
) -> dict[str, Any]:
    status = None
    try:
        async with asyncio.timeout(wait_s):
            line = await reader.readline()
            status = line.decode(errors="replace").strip() or None
            while await reader.read(65536):
                pass
        return {"status": status, "closed_after_s": round(time.monotonic() - start, 2)}
    except TimeoutError:
        return {"status": status, "closed_after_s": None}
    except ConnectionError:
        return {"status": status, "closed_after_s": round(time.monotonic() - start, 2)}


async def slow_body(
    host: str, port: int, declared: int, sent: int, wait_s: float
) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection(host, port)
    start = time.monotonic()
    writer.write(
        f"POST /v2/models/efficientnet_lite0/infer HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n".encode()
    )
    chunk = b" " * MIB
    try:
        for _ in range(sent // MIB):
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), wait_s)
    except (ConnectionError, TimeoutError):
        pass
    result = await _until_closed(reader, start, max(0.1, wait_s - (time.monotonic() - start)))
    writer.close()
    return result


async def slow_header(host: str, port: int, wait_s: float) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection(host, port)
    start = time.monotonic()
    writer.write(f"GET /v2/health/ready HTTP/1.1\r\nHost: {host}\r\n".encode())

    async def trickle() -> None:
        for index in range(int(wait_s) + 1):
            await asyncio.sleep(1.0)
            writer.write(f"X-Slow-{index}: x\r\n".encode())

    feeding = asyncio.create_task(trickle())
    try:
        return await _until_closed(reader, start, wait_s)
    finally:
        feeding.cancel()
        writer.close()


async def main(argv: list[str]) -> dict[str, Any]:
    mode = argv[0]
    if mode == "big-json":
        return await big_json(argv[1], argv[2])
    host, port, count = argv[1], int(argv[2]), int(argv[3])
    if mode == "slow-bodies":
        declared, sent, wait_s = (
            int(float(argv[4]) * MIB),
            int(float(argv[5]) * MIB),
            float(argv[6]),
        )
        results = await asyncio.gather(
            *(slow_body(host, port, declared, sent, wait_s) for _ in range(count))
        )
    else:
        wait_s = float(argv[4])
        results = await asyncio.gather(*(slow_header(host, port, wait_s) for _ in range(count)))
    return {"connections": results}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1:]))))
