"""Bundles from any HTTP origin: an ordered list of base URLs (site mirrors, a CDN, the
controller's publish directory behind nginx) tried before the controller's own gRPC download.

A bundle is content-addressed and signed, so where its bytes come from does not matter for
trust: a source serves `<base>/<sha256>.efb`, and every download is checked against that sha256
before it is kept (the signature is checked at install, as for a bundle from the controller).
A source that serves wrong bytes, an error or nothing is logged and the next one is tried.

Downloads share the `<sha256>.part` file with the controller download, so an interrupted
download resumes (HTTP `Range: bytes=N-`) from the same source, another source, or the
controller, after a disconnect or an agent restart.

aiohttp: one well-kept HTTP stack for this client and the controller's dashboard server, typed,
with a C-accelerated parser. httpx was tried first (typed, pleasant API), but in the 1,000-device
simulated rollout of bench/bench_fleet.py, whose simulated agents download in one process, its
per-chunk cost made the client, not the links or nginx, the bottleneck.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import aiohttp

from fleet.bundle import BUNDLE_SUFFIX, sha256_path
from fleet.errors import BundleRejected

logger = logging.getLogger(__name__)
# One read of the response body; each is written to disk off the event loop.
_CHUNK_BYTES = 1 << 20


class SourceFailed(Exception):
    """This source could not deliver the bundle; try the next one."""


class SourceCorrupt(SourceFailed):
    """This source sent bytes that cannot be the bundle; they are discarded."""


def is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def bundle_url(base: str, sha256: str) -> str:
    return f"{base.rstrip('/')}/{sha256}{BUNDLE_SUFFIX}"


def _open_at(path: Path, offset: int) -> BinaryIO:
    """The partial file positioned at `offset`, truncated there (0 starts over)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("r+b" if path.exists() else "wb")
    handle.truncate(offset)
    handle.seek(offset)
    return handle


def _append(handle: BinaryIO, data: bytes) -> None:
    handle.write(data)
    handle.flush()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _keep_if_valid(partial: Path, final: Path, sha256: str) -> str:
    """Move a complete download into place if its digest is `sha256`; else delete it and return
    the digest it had."""
    actual = sha256_path(partial)
    if actual == sha256:
        partial.replace(final)
    else:
        partial.unlink(missing_ok=True)
    return actual


class BundleSources:
    """The agent's HTTP bundle sources, in the order they are tried, and one HTTP client."""

    def __init__(
        self,
        urls: Sequence[str],
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
    ) -> None:
        self.urls = tuple(urls)
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._client: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def fetch(self, sha256: str, size: int, directory: Path) -> Path | None:
        """The verified local copy of bundle `sha256` from the first source that delivers it, or
        None when every source failed (the caller falls back to the controller).

        `size` (0 if unknown) bounds what a source may send: a source that streams more is cut
        off, so a hostile mirror cannot fill the disk.
        """
        if not is_sha256(sha256):
            raise BundleRejected(f"bundle address {sha256!r} is not a sha256")
        final = directory / f"{sha256}{BUNDLE_SUFFIX}"
        if await asyncio.to_thread(final.is_file):
            return final
        partial = directory / f"{sha256}.part"
        for base in self.urls:
            if await self._from(base, sha256, size, partial, final):
                return final
        return None

    async def _from(self, base: str, sha256: str, size: int, partial: Path, final: Path) -> bool:
        url = bundle_url(base, sha256)
        # Bytes already on disk may come from another source (or be bad): a resumed download
        # that fails its digest is tried once more from byte 0 before this source is blamed.
        attempts = 2 if await asyncio.to_thread(_size, partial) else 1
        for _ in range(attempts):
            try:
                await self._download(url, partial, size)
            except (SourceFailed, aiohttp.ClientError, TimeoutError, OSError) as error:
                logger.warning("bundle %s: source %s failed: %s", sha256[:12], base, error)
                if isinstance(error, SourceCorrupt):
                    await asyncio.to_thread(partial.unlink, True)
                return False
            actual = await asyncio.to_thread(_keep_if_valid, partial, final, sha256)
            if actual == sha256:
                logger.info("bundle %s: downloaded from %s", sha256[:12], base)
                return True
            logger.warning(
                "bundle %s: %s served bytes with sha256 %s..., not the bundle's; rejected",
                sha256[:12],
                base,
                actual[:12],
            )
        return False

    async def _download(self, url: str, partial: Path, size: int) -> None:
        """Complete `partial` from `url`, resuming from the bytes already on disk."""
        offset = await asyncio.to_thread(_size, partial)
        if size and offset > size:
            offset = 0
        if size and offset == size:
            return
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        async with self._http().get(url, headers=headers) as response:
            if response.status == 416 and offset:
                # The partial file is longer than what this source holds: start over.
                response.release()
                await asyncio.to_thread(partial.unlink, True)
                return await self._download(url, partial, size)
            if response.status == 200:
                offset = 0  # the source ignored the range: the body is the whole bundle
            elif response.status == 206:
                start = _content_range_start(response.headers.get("Content-Range", ""))
                if start != offset:
                    raise SourceCorrupt(f"asked for byte {offset}, got a range from {start}")
                logger.info("resuming %s at byte %d", url, offset)
            else:
                raise SourceFailed(f"HTTP {response.status}")
            handle = await asyncio.to_thread(_open_at, partial, offset)
            try:
                async for data in response.content.iter_chunked(_CHUNK_BYTES):
                    offset += len(data)
                    if size and offset > size:
                        raise SourceCorrupt(f"sent more than the bundle's {size} bytes")
                    await asyncio.to_thread(_append, handle, data)
            finally:
                await asyncio.to_thread(handle.close)
        if size and offset != size:
            raise SourceFailed(f"stopped at byte {offset} of {size}")
        return None


def _content_range_start(value: str) -> int:
    """The first byte of `Content-Range: bytes START-END/TOTAL`, or -1."""
    unit, _, spec = value.partition(" ")
    start, _, _ = spec.partition("-")
    return int(start) if unit == "bytes" and start.isdigit() else -1
