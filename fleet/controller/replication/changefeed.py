"""How controller replicas on one PostgreSQL tell each other what changed: LISTEN/NOTIFY.

A replica that changes shared state publishes a small JSON note on the `edgefleet` channel
(`PostgresStore.publish`, after its write committed); every other replica's `ChangeFeed` hears it
within milliseconds and acts on its own copy (inbound.py):

- `desired` (device ids): wake those devices' agent streams if they are connected here, so a pin
  or a wave made on another replica reaches the device within seconds;
- `device` (device ids): re-read those device records (enrolled or removed elsewhere);
- `rollout` (one id and its revision): re-read the rollout, and wake its driver if it runs here;
- `online` / `offline` (device ids): which devices are connected to some replica;
- `phase` (device, model, version and install phase, tab-separated): an install's progress;
- `who` (no ids): a roll call; the others answer with `online` for their devices.

A note is a hint, never the state: the store is. A replica that missed notes (its listening
connection dropped with PostgreSQL) re-reads everything when it reconnects (`resync`), so
nothing depends on a note arriving. A note is at most ~7 kB (PostgreSQL allows 8000 bytes):
long id lists are split over several notes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from fleet.controller.store.postgres import CHANNEL

logger = logging.getLogger(__name__)
MAX_PAYLOAD_BYTES = 7000
RECONNECT_MIN_S = 0.2
RECONNECT_MAX_S = 5.0


@dataclass(frozen=True)
class Change:
    origin: str
    kind: str
    ids: tuple[str, ...]
    revision: int = 0


def encode(origin: str, kind: str, ids: Iterable[str], revision: int = 0) -> list[str]:
    """The notes announcing `kind` for `ids`, each under PostgreSQL's payload limit."""
    notes: list[str] = []
    batch: list[str] = []
    size = 0
    for device_id in ids:
        if batch and size + len(device_id) + 4 > MAX_PAYLOAD_BYTES - 200:
            notes.append(json.dumps({"o": origin, "k": kind, "i": batch, "r": revision}))
            batch, size = [], 0
        batch.append(device_id)
        size += len(device_id) + 4
    if batch or not notes:
        notes.append(json.dumps({"o": origin, "k": kind, "i": batch, "r": revision}))
    return notes


def decode(payload: str) -> Change | None:
    try:
        note = json.loads(payload)
        return Change(
            origin=str(note["o"]),
            kind=str(note["k"]),
            ids=tuple(str(item) for item in note["i"]),
            revision=int(note.get("r", 0)),
        )
    except (ValueError, KeyError, TypeError):
        logger.warning("ignoring a malformed change note: %.200s", payload)
        return None


class ChangeFeed:
    """Listens on the channel from its own connection, reconnecting with backoff; calls
    `on_change` for every other replica's note and `resync` after each (re)connection."""

    def __init__(
        self,
        dsn: str,
        connect_kwargs: dict[str, Any],
        replica: str,
        on_change: Callable[[Change], Awaitable[None]],
        resync: Callable[[], Awaitable[None]],
    ) -> None:
        self._dsn = dsn
        self._kwargs = connect_kwargs
        self._replica = replica
        self._on_change = on_change
        self._resync = resync
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        # Times the listening connection dropped (PostgreSQL restarted, network); a metric.
        self.reconnects = 0

    async def start(self, timeout_s: float = 10.0) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="changefeed")
        # Listening before the controller serves: no note sent after start is missed.
        async with asyncio.timeout(timeout_s):
            await self._listening.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _listen_forever(self) -> None:
        delay = RECONNECT_MIN_S
        first = True
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, connect_timeout=10, **self._kwargs
                ) as connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    if not first:
                        self.reconnects += 1
                        await self._resync()
                    first = False
                    self._listening.set()
                    delay = RECONNECT_MIN_S
                    async for notify in connection.notifies():
                        change = decode(notify.payload)
                        if change is None or change.origin == self._replica:
                            continue
                        try:
                            await self._on_change(change)
                        except Exception:
                            logger.exception("acting on change %s failed", change)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # The password never appears: psycopg's message names host and port only.
                logger.warning("change feed: %s; reconnecting in %.1fs", error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)


class Announcer:
    """Publishes this replica's notes in order from one supervised task, off the request path.
    Bounded: when the store is away and the queue is full, a note is dropped and counted (the
    other replicas re-read everything when their feed reconnects)."""

    def __init__(self, publish: Callable[[str], Awaitable[None]], replica: str) -> None:
        self._publish = publish
        self._replica = replica
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=10_000)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.failures = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="announcer")

    async def stop(self) -> None:
        # What is queued still goes out (a clean shutdown), for a moment at most.
        if self._task is not None:
            try:
                async with asyncio.timeout(2.0):
                    await self._queue.join()
            except TimeoutError:
                logger.warning("stopping with %d change notes unsent", self._queue.qsize())
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def post(self, kind: str, ids: Sequence[str], revision: int = 0) -> None:
        for note in encode(self._replica, kind, ids, revision):
            try:
                self._queue.put_nowait(note)
            except asyncio.QueueFull:
                self.dropped += 1

    async def _run(self) -> None:
        while True:
            note = await self._queue.get()
            try:
                for attempt in range(3):
                    try:
                        await self._publish(note)
                        break
                    except Exception as error:
                        self.failures += 1
                        if attempt == 2:
                            self.dropped += 1
                            logger.warning("change note dropped: %s", error)
                        else:
                            await asyncio.sleep(0.5)
            finally:
                self._queue.task_done()
