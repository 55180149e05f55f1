"""Dynamic batching: one collector task per model version, one bounded queue.

Requests from every stream and unary call land in the same queue. The collector takes the
first request, waits for a free runner, then keeps adding compatible ones (same non-batch
shapes) until `max_batch_size` rows or `max_queue_delay_us` (no wait at all when the first
request found nobody queued behind it), runs the batch in the model's own
executor (off the event loop, one run at a time per instance) and splits the outputs back.
A full queue is an answer (Overloaded), never a hidden wait.

The freshness scheduler does not queue here: it forms its batches of camera frames itself
and runs them with `run_job` on the same runners (first come, first served with the
collector), decoding and running in one hop to the model's thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from server.errors import ModelNotReady, Overloaded
from server.models.backends.base import Backend
from server.models.types import Arrays
from server.observability.failure_log import FailureLog

log = logging.getLogger(__name__)

Signature = tuple[tuple[str, tuple[int, ...], np.dtype[Any]], ...]
JobResult = TypeVar("JobResult")


@dataclass(frozen=True)
class BatchOutcome:
    outputs: Arrays
    queue_s: float
    input_s: float
    infer_s: float
    output_s: float
    batch_rows: int
    # Requests that shared the run, those of one group (a camera frame's pyramid levels or
    # crop batches) counted once.
    batch_requests: int
    # Loop times at which the run began and ended: what the model worked for this request.
    run_start: float
    run_end: float


@dataclass
class _Pending:
    inputs: Arrays
    rows: int
    enqueued_at: float
    future: asyncio.Future[BatchOutcome]
    group: Hashable
    signature: Signature = field(init=False)

    def __post_init__(self) -> None:
        # dtype objects compare and hash by value: no str() per request.
        self.signature = tuple(
            (name, array.shape[1:], array.dtype) for name, array in sorted(self.inputs.items())
        )


class DynamicBatcher:
    def __init__(
        self,
        backend: Backend,
        *,
        name: str,
        output_names: list[str],
        max_batch_size: int,
        max_queue_delay_us: int,
        max_queue_size: int,
        instance_count: int = 1,
        on_execution: Callable[[int, float], None] | None = None,
    ) -> None:
        self._backend = backend
        self._name = name
        self._failures = FailureLog(log)
        self._output_names = output_names
        # 0 means the model does not batch: every request runs on its own.
        self._max_rows = max(max_batch_size, 1)
        self._batching = max_batch_size > 0
        self._max_delay_s = max_queue_delay_us / 1e6
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queue_size)
        self._runners = asyncio.Semaphore(instance_count)
        self._executor = ThreadPoolExecutor(
            max_workers=instance_count, thread_name_prefix=f"model-{name}"
        )
        self._on_execution = on_execution
        self._carry: list[_Pending] = []
        self._runs: set[asyncio.Task[None]] = set()
        self._collector: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() + len(self._carry)

    async def run_job(self, job: Callable[[Backend], JobResult]) -> JobResult:
        """Run `job` with the runtime on one of the model's runners (its executor thread),
        between the collector's batches. The job does its own batching."""
        if self._closed:
            raise ModelNotReady(f"model {self._name} is unloading")
        async with self._runners:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, job, self._backend
            )

    def start(self) -> None:
        self._collector = asyncio.create_task(self._collect(), name=f"batcher-{self._name}")

    async def submit(self, inputs: Arrays, group: Hashable | None = None) -> BatchOutcome:
        """Queue one request (its arrays carry a leading batch dimension) and await its rows.
        Requests of one `group` sharing a run count as one in its `batch_requests`."""
        if self._closed:
            raise ModelNotReady(f"model {self._name} is unloading")
        rows = next(iter(inputs.values())).shape[0] if self._batching else 1
        loop = asyncio.get_running_loop()
        pending = _Pending(
            inputs,
            rows,
            loop.time(),
            loop.create_future(),
            group if group is not None else object(),
        )
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise Overloaded(
                f"model {self._name}: {self._queue.maxsize} requests already queued"
            ) from None
        try:
            return await pending.future
        except asyncio.CancelledError:
            # Its frame was dropped or its caller went away: the collector skips it, and its
            # arrays need not live until then.
            pending.inputs = {}
            raise

    async def close(self) -> None:
        """Stop taking requests, finish every queued and running one, release the runtime."""
        self._closed = True
        if self._collector is not None:
            # Every queued item is marked done once answered (or skipped as cancelled).
            await self._queue.join()
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
        self._executor.shutdown(wait=True)
        self._backend.close()

    async def _next(self, wait_s: float | None) -> _Pending | None:
        if self._carry:
            return self._carry.pop(0)
        if wait_s is None:
            return await self._queue.get()
        if wait_s <= 0:
            try:
                return self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return None
        try:
            async with asyncio.timeout(wait_s):
                return await self._queue.get()
        except TimeoutError:
            return None

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Request first, runner second: an idle collector must not hold a runner that a
            # job (`run_job`) could use.
            first = await self._next(None)
            assert first is not None
            self._carry.insert(0, first)  # counted in queue_depth while it waits for a runner
            await self._runners.acquire()
            first = self._carry.pop(0)
            batch, rows = [first], first.rows
            # Eager when alone: a request reaching an idle model with nobody queued behind it
            # runs at once. Waiting for companions only pays when others are already queued;
            # under load batches also form by themselves while the runner is busy.
            wait_s = self._max_delay_s if self.queue_depth else 0.0
            deadline = loop.time() + wait_s
            skipped: list[_Pending] = []
            while self._batching and rows < self._max_rows:
                item = await self._next(deadline - loop.time())
                if item is None:
                    break
                if item.signature != first.signature or rows + item.rows > self._max_rows:
                    skipped.append(item)  # runs in a later batch, in arrival order
                    if rows + item.rows > self._max_rows:
                        break
                    continue
                batch.append(item)
                rows += item.rows
            self._carry = skipped + self._carry
            live = [item for item in batch if not item.future.cancelled()]
            for _ in range(len(batch) - len(live)):
                self._queue.task_done()
            if not live:
                self._runners.release()
                continue
            task = asyncio.create_task(self._run(live))
            self._runs.add(task)
            task.add_done_callback(self._runs.discard)

    async def _run(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            outputs, timings = await loop.run_in_executor(self._executor, self._execute, batch)
        except Exception as exc:  # a runtime failure fails this batch, never the collector
            self._failures.failed(f"model {self._name}: a batch failed", exc)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
                self._queue.task_done()
            return
        finally:
            self._runners.release()
        finished = loop.time()
        input_s, infer_s, output_s = timings
        batch_rows = sum(item.rows for item in batch)
        requests = len({item.group for item in batch})
        if self._on_execution is not None:
            self._on_execution(batch_rows, infer_s)
        for item, item_outputs in zip(batch, outputs, strict=True):
            if not item.future.done():
                item.future.set_result(
                    BatchOutcome(
                        outputs=item_outputs,
                        queue_s=started - item.enqueued_at,
                        input_s=input_s,
                        infer_s=infer_s,
                        output_s=output_s,
                        batch_rows=batch_rows,
                        batch_requests=requests,
                        run_start=started,
                        run_end=finished,
                    )
                )
            self._queue.task_done()

    def _execute(self, batch: list[_Pending]) -> tuple[list[Arrays], tuple[float, float, float]]:
        """Runs in the model's executor thread: concatenate, run, split."""
        t0 = time.perf_counter()
        if len(batch) == 1:
            inputs = batch[0].inputs
        else:
            inputs = {
                name: np.concatenate([item.inputs[name] for item in batch])
                for name in batch[0].inputs
            }
        t1 = time.perf_counter()
        outputs = self._backend.run(inputs, self._output_names)
        t2 = time.perf_counter()
        split: list[Arrays] = []
        offset = 0
        for item in batch:
            if not self._batching:
                split.append(outputs)
                continue
            split.append(
                {name: value[offset : offset + item.rows] for name, value in outputs.items()}
            )
            offset += item.rows
        t3 = time.perf_counter()
        return split, (t1 - t0, t2 - t1, t3 - t2)
