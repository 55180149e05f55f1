"""Deliver a camera's events (client/events.py documents) to an MQTT broker or a webhook.

Sinks never hold up frames: the stream only `offer`s a document to a sink's bounded queue and
goes on. A full queue drops its oldest document (counted); a sink whose broker or receiver is
down keeps what fits and retries with backoff, so an outage loses only what overflowed. One
sender task per sink keeps documents in order; a document is removed from the queue only once
it was delivered (MQTT QoS 1: the broker's PUBACK; webhook: a 2xx answer), so the one in
flight when a broker drops is sent again after the reconnect (at least once: `id` is unique per
event, for receivers that deduplicate).

Webhooks are signed like the fleet controller's (fleet/controller/webhooks.py): with a secret,
`X-Edgefleet-Signature: sha256=<hex HMAC-SHA256 of the body>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
from collections import deque
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote, urlsplit

import aiohttp

from client.backoff import BackoffPolicy

log = logging.getLogger(__name__)

DEFAULT_TOPIC = "edgefleet/{camera}/events"
DEFAULT_QUEUE = 1000
# A broker or receiver that is down is retried forever, from 0.5 s up to 10 s apart.
SINK_BACKOFF = BackoffPolicy(initial_s=0.5, max_s=10.0, max_attempts=0)
USER_AGENT = "edgefleet-camera"
SIGNATURE_HEADER = "X-Edgefleet-Signature"
# At the end of a run, queued events get this long to go out before they are counted dropped.
DRAIN_S = 5.0


@dataclass
class SinkStats:
    delivered: int = 0
    # Dropped because the queue was full (the oldest first), or left when the run ended.
    dropped: int = 0
    # Refused for good by the receiver (a 4xx answer): not retried.
    rejected: int = 0
    # Times the broker or receiver was down and retried.
    retries: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "delivered": self.delivered,
            "dropped": self.dropped,
            "rejected": self.rejected,
            "retries": self.retries,
            "last_error": self.last_error,
        }


class EventSink(Protocol):
    # Where it delivers, without secrets: for the summary.
    name: str
    stats: SinkStats

    def offer(self, document: dict[str, object]) -> None:
        """Queue a document; never waits (drops the oldest queued one when full)."""
        ...

    async def run(self) -> None:
        """Deliver queued documents until cancelled."""
        ...

    def pending(self) -> int: ...

    async def flushed(self) -> None:
        """Return once nothing is queued."""
        ...


class _Outbox:
    """A bounded FIFO of encoded documents that drops its oldest when full. The one being sent
    is taken out (a full queue cannot drop it mid-send) and put back first if sending failed."""

    def __init__(self, size: int, stats: SinkStats) -> None:
        self._items: deque[bytes] = deque()
        self._size = size
        self._stats = stats
        self._sending: bytes | None = None
        self._ready = asyncio.Event()
        self.emptied = asyncio.Event()
        self.emptied.set()

    def put(self, document: dict[str, object]) -> None:
        if len(self._items) >= self._size:
            self._items.popleft()
            self._stats.dropped += 1
        self._items.append(json.dumps(document, separators=(",", ":")).encode())
        self._ready.set()
        self.emptied.clear()

    async def take(self) -> bytes:
        """The oldest document (the one that failed last, if any), out of the queue until
        `done` or `unsent`."""
        if self._sending is None:
            while not self._items:
                self._ready.clear()
                await self._ready.wait()
            self._sending = self._items.popleft()
        return self._sending

    def done(self) -> None:
        """Delivered, or refused for good."""
        self._sending = None
        if not self._items:
            self.emptied.set()

    def unsent(self) -> None:
        """Sending failed: the document goes first again, unless newer ones filled the queue
        meanwhile (then it is the oldest, and dropped)."""
        if self._sending is not None and len(self._items) >= self._size:
            self._sending = None
            self._stats.dropped += 1
            if not self._items:
                self.emptied.set()

    def __len__(self) -> int:
        return len(self._items) + (self._sending is not None)


class _QueuedSink:
    """What every sink shares: the bounded outbox the stream offers to without waiting, the
    figures, and the retry bookkeeping (backoff with jitter, the last error, the log line)."""

    name: str

    def __init__(self, queue_size: int, backoff: BackoffPolicy, rng: random.Random | None) -> None:
        self._backoff = backoff
        self._rng = rng if rng is not None else random.Random()
        self.stats = SinkStats()
        self._outbox = _Outbox(queue_size, self.stats)

    def offer(self, document: dict[str, object]) -> None:
        self._outbox.put(document)

    def pending(self) -> int:
        return len(self._outbox)

    async def flushed(self) -> None:
        await self._outbox.emptied.wait()

    def _delivered(self) -> None:
        self._outbox.done()
        self.stats.delivered += 1

    async def _retry_later(self, failures: int, reason: str) -> None:
        """The document in flight goes back to the head of the outbox; wait the backoff."""
        self._outbox.unsent()
        self.stats.retries += 1
        self.stats.last_error = reason
        delay = self._backoff.delay_s(failures, self._rng)
        log.warning("%s: %s; retry %d in %.1fs", self.name, reason, failures, delay)
        await asyncio.sleep(delay)


class MqttSink(_QueuedSink):
    """Publishes each document as JSON to `topic` (QoS 1) on the broker at `url`
    (mqtt://[user:password@]host[:1883])."""

    def __init__(
        self,
        url: str,
        topic: str,
        *,
        queue_size: int = DEFAULT_QUEUE,
        backoff: BackoffPolicy = SINK_BACKOFF,
        rng: random.Random | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
            raise ValueError(f"expected mqtt://host[:port], got {url!r}")
        self._host = parts.hostname
        self._port = parts.port or 1883
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._topic = topic
        self.name = f"mqtt://{self._host}:{self._port}/{topic}"
        super().__init__(queue_size, backoff, rng)

    async def run(self) -> None:
        # Here, not at the top: the `camera` extra brings it, and only MQTT sinks need it.
        import aiomqtt

        failures = 0
        while True:
            try:
                async with aiomqtt.Client(
                    self._host,
                    self._port,
                    username=self._username,
                    password=self._password,
                    timeout=10,
                ) as client:
                    if failures:
                        log.warning("%s: connected again after %d attempts", self.name, failures)
                    failures = 0
                    while True:
                        payload = await self._outbox.take()
                        await client.publish(self._topic, payload, qos=1, timeout=10)
                        self._delivered()
            except aiomqtt.MqttError as error:
                failures += 1
                await self._retry_later(failures, str(error))


class WebhookSink(_QueuedSink):
    """POSTs each document as JSON to `url`, signed with `secret` when given."""

    def __init__(
        self,
        url: str,
        *,
        secret: bytes | None = None,
        queue_size: int = DEFAULT_QUEUE,
        backoff: BackoffPolicy = SINK_BACKOFF,
        timeout_s: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
        self._url = url
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        # No query string in the name: it may carry a token.
        self.name = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        super().__init__(queue_size, backoff, rng)

    def _headers(self, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._secret is not None:
            digest = hmac.new(self._secret, body, hashlib.sha256).hexdigest()
            headers[SIGNATURE_HEADER] = f"sha256={digest}"
        return headers

    async def run(self) -> None:
        failures = 0
        async with aiohttp.ClientSession(
            timeout=self._timeout, headers={"User-Agent": USER_AGENT}
        ) as session:
            while True:
                body = await self._outbox.take()
                try:
                    async with session.post(
                        self._url, data=body, headers=self._headers(body), allow_redirects=False
                    ) as response:
                        status = response.status
                except (aiohttp.ClientError, TimeoutError) as error:
                    status, reason = 0, f"{type(error).__name__}: {error}"
                else:
                    reason = f"HTTP {status}"
                if 200 <= status < 300:
                    self._delivered()
                    failures = 0
                    continue
                if 400 <= status < 500 and status not in (408, 429):
                    # The receiver refuses this document (bad signature, bad request): retrying
                    # the same bytes gets the same answer.
                    self._outbox.done()
                    self.stats.rejected += 1
                    self.stats.last_error = reason
                    log.warning("%s refused an event: %s", self.name, reason)
                    continue
                failures += 1
                await self._retry_later(failures, reason)


async def drain(sinks: list[EventSink], tasks: list[asyncio.Task[None]], within_s: float) -> None:
    """Give queued documents `within_s` to go out, then stop the senders; what is left is
    counted as dropped."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            await asyncio.gather(*(sink.flushed() for sink in sinks))
    for task in tasks:
        task.cancel()
    # gather: the senders' cancellations are taken, a cancellation of this caller is not.
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(outcome, Exception):
            log.error("an event sink failed", exc_info=outcome)
    for sink in sinks:
        sink.stats.dropped += sink.pending()
