"""Reading request bodies within limits: size per endpoint, time, and bytes held at once.

- Size: a declared Content-Length over the endpoint's limit is refused (413) before a byte is
  read; a chunked body is cut off when it passes the limit.
- Time: the whole body must arrive within `http_body_timeout_s` (408), so a client that sends
  most of a body and stops holds nothing for long. (Headers have their own timeout: the
  server's keep-alive timer, which aiohttp also runs while it waits for a request's headers.)
- Bytes held: every body being received or parsed holds its size in one budget shared by all
  connections; when the budget is spent, new bodies are answered 429 at once instead of
  queueing memory. Twenty connections that each send 31 MiB and stop hold at most the budget.
- Encoding: gzip and deflate bodies (Triton's clients compress with either) are inflated in a
  thread, never past the endpoint's limit, so a compression bomb costs at most that limit;
  anything else is refused. aiohttp's own decompression is off, so a corrupt stream is a clean
  400 here instead of an error inside aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from server.errors import InvalidInput, Overloaded, RequestTimeout, RequestTooLarge

READ_CHUNK = 256 * 1024
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


@dataclass(frozen=True)
class BodyLimit:
    """What one endpoint accepts: at most `max_bytes` (after inflating), within `timeout_s`."""

    max_bytes: int
    timeout_s: float


class BodyBudget:
    """Bytes of request bodies held at once, across every connection of the HTTP port."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.held = 0

    def take(self, size: int) -> None:
        if self.held + size > self.limit_bytes:
            raise Overloaded(
                f"the server is receiving {self.held >> 20} MiB of request bodies already "
                f"(limit {self.limit_bytes >> 20} MiB): retry shortly"
            )
        self.held += size

    def give_back(self, size: int) -> None:
        self.held -= size


class _Hold:
    """The bytes one request holds in the budget; grows as its body arrives or inflates."""

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.size = 0

    def grow_to(self, size: int) -> None:
        if size > self.size:
            self._budget.take(size - self.size)
            self.size = size

    def release(self) -> None:
        self._budget.give_back(self.size)
        self.size = 0


@contextlib.asynccontextmanager
async def read_body(
    request: web.Request, limit: BodyLimit, budget: BodyBudget
) -> AsyncIterator[bytes]:
    """The request's body, decoded; its bytes count against `budget` until the block ends."""
    declared = request.content_length
    if declared is not None and declared > limit.max_bytes:
        raise RequestTooLarge(
            f"request body of {declared} bytes exceeds the limit of {limit.max_bytes} bytes"
        )
    hold = _Hold(budget)
    try:
        hold.grow_to(declared or 0)
        try:
            async with asyncio.timeout(limit.timeout_s):
                raw = await _read_raw(request, limit.max_bytes, hold)
        except TimeoutError:
            raise RequestTimeout(
                f"request body not received within {limit.timeout_s:g} s"
            ) from None
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raw = await _inflate(raw, encoding, limit.max_bytes, hold)
        yield raw
    finally:
        hold.release()


async def _read_raw(request: web.Request, max_bytes: int, hold: _Hold) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        size += len(chunk)
        if size > max_bytes:
            raise RequestTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
        hold.grow_to(size)
        chunks.append(chunk)
    return b"".join(chunks)


async def _inflate(raw: bytes, encoding: str, max_bytes: int, hold: _Hold) -> bytes:
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise InvalidInput(
            f"Content-Encoding {encoding[:40]!r} is not supported (gzip, deflate or identity)"
        )
    # deflate expands at most about 1032:1; the inflated copy never passes the limit.
    hold.grow_to(len(raw) + min(max_bytes, 1032 * len(raw)))
    try:
        data = await asyncio.to_thread(_inflate_bounded, raw, wbits, max_bytes)
    except zlib.error as exc:
        raise InvalidInput(f"request body is not valid {encoding}: {exc}") from None
    if data is None:
        raise RequestTooLarge(f"inflated request body exceeds the limit of {max_bytes} bytes")
    return data


def _inflate_bounded(raw: bytes, wbits: int, max_bytes: int) -> bytes | None:
    """The inflated bytes, or None past `max_bytes` (zlib releases the GIL meanwhile)."""
    inflater = zlib.decompressobj(wbits)
    data = inflater.decompress(raw, max_bytes + 1)
    if len(data) > max_bytes:
        return None
    if not inflater.eof:
        raise zlib.error("the compressed stream is truncated")
    return data
