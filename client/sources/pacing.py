"""Pace frames at a rate, and stop a source on request, both on the monotonic clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import TypeVar

T = TypeVar("T")


async def paced(items: AsyncIterable[T], fps: float | None) -> AsyncIterator[T]:
    """Yield at most `fps` items a second (None or 0: as fast as they come).

    A consumer that falls behind does not get a burst to catch up: the schedule restarts.
    """
    if not fps:
        async for item in items:
            yield item
        return
    loop = asyncio.get_running_loop()
    interval = 1.0 / fps
    next_at = loop.time()
    async for item in items:
        wait = next_at - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        elif wait < -interval:
            next_at = loop.time()
        next_at += interval
        yield item


async def until_stopped(items: AsyncIterable[T], stop: asyncio.Event) -> AsyncIterator[T]:
    """Yield until `stop` is set, even while the source is blocked waiting for its next item."""
    iterator = aiter(items)
    stopped = asyncio.create_task(stop.wait())
    try:
        while not stop.is_set():
            following = asyncio.ensure_future(anext(iterator))
            await asyncio.wait({following, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not following.done():
                following.cancel()
                await asyncio.gather(following, return_exceptions=True)
                return
            try:
                item = following.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        stopped.cancel()
        await asyncio.gather(stopped, return_exceptions=True)
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()
