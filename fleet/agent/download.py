"""Chunked, resumable bundle download: bytes go to `<sha256>.part`; a new attempt (after a
disconnect or an agent restart) asks for the rest from the size already on disk."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from fleet.bundle import sha256_path
from fleet.errors import BundleRejected
from protos.edgefleet.fleet.v1 import agent_pb2, agent_pb2_grpc

logger = logging.getLogger(__name__)


# A download with no chunk for this long is given up (and resumed later): a stalled controller
# or a half-open connection must not hold the agent's install task forever.
DOWNLOAD_IDLE_S = 60.0


async def _chunks(
    call: AsyncIterator[agent_pb2.DownloadResponse], idle_s: float
) -> AsyncIterator[agent_pb2.DownloadResponse]:
    iterator = aiter(call)
    while True:
        try:
            async with asyncio.timeout(idle_s):
                chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            cancel = getattr(call, "cancel", None)
            if cancel is not None:
                cancel()
            raise ConnectionError(f"no bundle data for {idle_s:.0f} s") from None
        yield chunk


def _open_partial(path: Path) -> tuple[BinaryIO, int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("ab")
    return handle, handle.tell()


def _append(handle: BinaryIO, data: bytes) -> None:
    handle.write(data)
    handle.flush()


def _finish(partial: Path, final: Path, sha256: str) -> None:
    actual = sha256_path(partial)
    if actual != sha256:
        partial.unlink(missing_ok=True)
        raise BundleRejected(
            f"downloaded bundle has sha256 {actual[:12]}..., expected {sha256[:12]}... (corrupt)"
        )
    partial.replace(final)


async def fetch_bundle(
    stub: agent_pb2_grpc.AgentServiceStub,
    sha256: str,
    directory: Path,
    chunk_bytes: int,
    idle_s: float = DOWNLOAD_IDLE_S,
) -> Path:
    """Return the verified local copy of bundle `sha256`, downloading what is missing. A
    controller that stops sending for `idle_s` ends the attempt (ConnectionError); what arrived
    is kept and the next attempt resumes from it."""
    if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
        raise BundleRejected(f"bundle address {sha256!r} is not a sha256")
    final = directory / f"{sha256}.efb"
    if await asyncio.to_thread(final.is_file):
        return final
    partial = directory / f"{sha256}.part"
    handle, offset = await asyncio.to_thread(_open_partial, partial)
    if offset:
        logger.info("resuming bundle %s at byte %d", sha256[:12], offset)
    call = stub.Download(
        agent_pb2.DownloadRequest(bundle_sha256=sha256, offset=offset, chunk_size=chunk_bytes)
    )
    try:
        total = None
        async for chunk in _chunks(call, idle_s):
            if chunk.total_size:
                total = chunk.total_size
                if offset > total:
                    raise BundleRejected("partial download is longer than the bundle")
            if chunk.offset != offset:
                raise BundleRejected(f"chunk at {chunk.offset}, expected {offset}")
            await asyncio.to_thread(_append, handle, chunk.data)
            offset += len(chunk.data)
    finally:
        await asyncio.to_thread(handle.close)
    if total is None or offset != total:
        raise ConnectionError(f"download of {sha256[:12]} stopped at {offset} of {total} bytes")
    await asyncio.to_thread(_finish, partial, final, sha256)
    return final
