"""Large JSON bodies are parsed (and large JSON answers written) in a separate process.

`json.loads` and numpy's conversion of a list of Python numbers are C loops that hold the GIL
from start to end: in a thread they would stall the event loop as surely as on it, and with it
every gRPC call and camera stream (a 32 MiB body held the loop for 3-15 s). A process has its
own GIL. It is spawned, not forked, so it inherits none of this process's threads, sockets or
models, and it imports only numpy and the parser (`server.http_api.infer_body`).

Like any spawned process it imports the program's main module: a script that embeds EdgeServer
needs Python's usual `if __name__ == "__main__":` guard (the CLI and pytest have it).

Small bodies are parsed on the loop: below ON_LOOP_JSON_BYTES the parse takes well under a
millisecond, less than the round trip to the process.

The process starts with the first large body, not with the server: with multiprocessing's
resource tracker it holds about 41 MB that a device serving cameras and small JSON never needs.
That first body waits for the spawn (about a second on a small CPU).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from server.errors import Overloaded

log = logging.getLogger(__name__)

# JSON bytes parsed on the event loop; above, in the parse process (~0.3 ms per 64 KiB).
ON_LOOP_JSON_BYTES = 64 * 1024
# JSON values of an answer written on the event loop; above, in the parse process.
ON_LOOP_JSON_VALUES = 16 * 1024

# Niceness of the parse process (0 is the server's; 19 the lowest priority).
PARSE_NICENESS = 10

T = TypeVar("T")


def _ready() -> bool:
    return True


def _yield_to_serving() -> None:
    """Parsing is background work: on a machine with few cores, the serving process (event
    loop, models) gets the CPU first."""
    os.nice(PARSE_NICENESS)


def _log_failed_start(warm: asyncio.Future[bool]) -> None:
    if not warm.cancelled() and warm.exception() is not None:
        log.error("the HTTP parse process did not start: %s", warm.exception())


class ParsePool:
    def __init__(self, processes: int, on_restart: Callable[[], None] | None = None) -> None:
        """`on_restart`: called each time a dead parse process is replaced (a metric)."""
        self._processes = processes
        self._on_restart = on_restart
        self._pool: ProcessPoolExecutor | None = None
        self._warm: asyncio.Future[bool] | None = None

    def start(self) -> None:
        """Spawn the processes (in the background); `run` calls this for the first large body."""
        if self._processes == 0 or self._pool is not None:
            return
        self._pool = ProcessPoolExecutor(
            self._processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_yield_to_serving,
        )
        self._warm = asyncio.get_running_loop().run_in_executor(self._pool, _ready)
        self._warm.add_done_callback(_log_failed_start)

    async def run(self, on_loop: bool, function: Callable[..., T], *args: object) -> T:
        """`function(*args)`: here when `on_loop` (cheap) or no process is configured, else in
        the parse process. Exceptions (InvalidInput, ...) come back as raised there."""
        if on_loop or self._processes == 0:
            return function(*args)
        if self._pool is None:
            self.start()
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, function, *args)
        except BrokenProcessPool:
            # The process died (killed for memory, say): answer this request, start afresh.
            log.error("the HTTP parse process died; starting a new one")
            if self._on_restart is not None:
                self._on_restart()
            await self.close()
            self.start()
            raise Overloaded("the request parser restarted: retry") from None

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if self._warm is not None:
            self._warm.cancel()
            self._warm = None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
