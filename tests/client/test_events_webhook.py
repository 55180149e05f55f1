"""The webhook sink against a real aiohttp receiver in this process (testkit/webhooks.py):
signed deliveries in order, a receiver that fails is retried, one that refuses is not, and a
receiver that stalls costs only what overflowed the queue, counted, never the one in flight."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from client.backoff import BackoffPolicy
from client.sinks import WebhookSink, drain
from testkit.webhooks import Receiver

# Fast retries: the test is about what is retried, not how long it waits.
QUICK = BackoffPolicy(initial_s=0.01, max_s=0.05, max_attempts=0)


def document(number: int) -> dict[str, object]:
    return {"id": str(number), "event": "line_cross", "camera": "door"}


@contextlib.asynccontextmanager
async def running(sink: WebhookSink) -> AsyncIterator[WebhookSink]:
    task = asyncio.create_task(sink.run())
    try:
        yield sink
    finally:
        await drain([sink], [task], 10.0)


async def test_signed_in_order_and_a_failing_receiver_is_retried() -> None:
    receiver = await Receiver(secret=b"k", answers=[500, 503]).start()
    try:
        async with running(WebhookSink(receiver.url, secret=b"k", backoff=QUICK)) as sink:
            for number in range(3):
                sink.offer(document(number))
    finally:
        await receiver.stop()
    # Two 5xx answers, then every document once, in order, each signature valid (else 401).
    assert [status for _, status in receiver.attempts] == [500, 503, 200, 200, 200]
    assert [event["id"] for event in receiver.events] == ["0", "1", "2"]
    assert (sink.stats.delivered, sink.stats.retries, sink.stats.dropped) == (3, 2, 0)


async def test_a_wrong_secret_is_refused_once_not_retried() -> None:
    receiver = await Receiver(secret=b"right").start()
    try:
        async with running(WebhookSink(receiver.url, secret=b"wrong", backoff=QUICK)) as sink:
            sink.offer(document(0))
    finally:
        await receiver.stop()
    assert receiver.attempts == [("line_cross", 401)] and not receiver.events
    assert (sink.stats.rejected, sink.stats.delivered) == (1, 0)
    assert sink.stats.last_error == "HTTP 401"


async def test_a_stalled_receiver_costs_only_the_overflow() -> None:
    hold = asyncio.Event()
    receiver = await Receiver(hold=hold).start()
    try:
        async with running(WebhookSink(receiver.url, queue_size=3, backoff=QUICK)) as sink:
            sink.offer(document(0))
            await asyncio.wait_for(receiver.arrived.wait(), 10)
            # Document 0 is in flight, held; 1..9 arrive while the receiver stalls: offer()
            # never waits, and the queue keeps the newest 3.
            for number in range(1, 10):
                sink.offer(document(number))
            assert sink.pending() == 4 and sink.stats.dropped == 6
            hold.set()
    finally:
        await receiver.stop()
    assert [event["id"] for event in receiver.events] == ["0", "7", "8", "9"]
    assert (sink.stats.delivered, sink.stats.dropped) == (4, 6)
