"""Bounded concurrent processing of a request stream, answering as each one completes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


async def bounded_map(
    handle: Callable[[In], Awaitable[Out]], items: AsyncIterator[In], window: int
) -> AsyncGenerator[Out, None]:
    """Run `handle` on up to `window` items at once (so they can share batches) and yield
    results in completion order. `handle` must turn its own errors into results; reading
    stops while the window is full, so a fast sender is held back by flow control."""
    results: asyncio.Queue[Out | None] = asyncio.Queue(maxsize=window)
    slots = asyncio.Semaphore(window)
    tasks: set[asyncio.Task[None]] = set()
    failure: list[BaseException] = []

    async def run_one(item: In) -> None:
        try:
            await results.put(await handle(item))
        finally:
            slots.release()

    async def read() -> None:
        try:
            async for item in items:
                await slots.acquire()
                task = asyncio.create_task(run_one(item))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*list(tasks), return_exceptions=True)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            failure.append(exc)
        await results.put(None)

    reader = asyncio.create_task(read())
    try:
        while (result := await results.get()) is not None:
            yield result
        if failure:
            raise failure[0]
    finally:
        reader.cancel()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(reader, *tasks, return_exceptions=True)
