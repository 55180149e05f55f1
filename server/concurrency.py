"""Bounded concurrent processing: a request stream answered as each completes; a unit of
work whose parts run all or nothing."""

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


async def all_or_nothing(*aws: Awaitable[Out]) -> list[Out]:
    """Await every part of one unit of work (a frame's crop batches, pyramid levels, a
    request's batch slices) together, in order. The first failure, or cancellation of the
    caller, cancels every other part at once and waits for them to unwind, so no part of a
    frame that can no longer be answered keeps a model busy or its arrays alive
    (`asyncio.gather` leaves the others running)."""
    tasks = [asyncio.ensure_future(item) for item in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def bounded_all_or_nothing(
    parts: list[Callable[[], Awaitable[Out]]], window: int
) -> list[Out]:
    """`all_or_nothing` over parts started at most `window` at a time: a frame with hundreds
    of crop batches never floods a model's queue, and other frames' batches interleave."""
    slots = asyncio.Semaphore(max(1, window))

    async def run(part: Callable[[], Awaitable[Out]]) -> Out:
        async with slots:
            return await part()

    return await all_or_nothing(*(run(part) for part in parts))
