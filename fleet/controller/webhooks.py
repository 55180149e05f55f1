"""Outgoing webhooks: what the controller decided on its own, POSTed as JSON to operators' URLs.

Events (the `event` field, the same names as the audit log's actions):

- `rollout.wave-started`: a wave's devices were told to install (`wave`, `percent`, `devices`);
- `rollout.verdict`: a wave was judged (`wave`, `verdict` PASS/FAIL/INCONCLUSIVE, `reason`);
- `rollout.paused`: an inconclusive wave paused the rollout (`reason`);
- `rollout.rolled-back`: automatically or by the operator (`reason`, `devices`, `automatic`);
- `rollout.succeeded`: every wave passed.

Each event goes to every global URL (`--webhook`) and to its rollout's own URL
(`fleetctl deploy --webhook`). One bounded queue and one sender per URL keep events in order per
receiver and keep a dead receiver from delaying the others. A delivery is retried with
exponential backoff until it gets a 2xx answer or runs out of attempts; then it is counted as
failed and logged. A full queue drops the new event (counted): rollouts never wait for a
receiver. Delivery is at least once: `id` is unique per event, for receivers that deduplicate.
With a secret (`--webhook-secret-file`), every delivery carries `X-Edgefleet-Signature:
sha256=<hex HMAC-SHA256 of the body>` for receivers to check.

Targets are restricted (`WebhookTargets`): http or https only; a rollout's own URL (set by
whoever creates the rollout) must name a host the controller's operator allowed with
`--webhook-allow` (host patterns), or the host of a `--webhook` URL; redirects are never
followed (a 3xx answer is a failed delivery: the body must not be replayed at another address).
A receiver's queue and sender go away after `idle_s` without events, so one-off rollout URLs
do not keep a task each forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from fleet.controller.store.records import RolloutRecord

logger = logging.getLogger(__name__)
USER_AGENT = "edgefleet-controller"
IDLE_S = 600.0


def _host_port(url: str) -> str:
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return ""
    return f"{parts.hostname.lower()}:{port}" if parts.hostname else ""


class WebhookTargets:
    """Which URLs the controller may POST its events to. The global `--webhook` URLs, and the
    hosts matching `--webhook-allow` patterns (fnmatch, case-insensitive, against `host` and
    `host:port`: `hooks.example.com`, `*.example.com`, `10.0.0.7:8080`). Patterns match the
    URL's host name as written, never the address it resolves to."""

    def __init__(self, urls: Iterable[str] = (), allow: Iterable[str] = ()) -> None:
        self._urls = frozenset(urls)
        # The global URLs' hosts (with their port) are allowed as if listed.
        hosts = [_host_port(url) for url in self._urls]
        self._allow = tuple(pattern.lower() for pattern in allow) + tuple(
            host for host in hosts if host
        )

    def refusal(self, url: str) -> str | None:
        """Why the controller will not send to `url`, or None."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return f"webhook {url!r} is not a URL"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"webhook {url!r} must be an http:// or https:// URL"
        if url in self._urls:
            return None  # the controller operator's own
        if parts.username is not None or parts.password is not None:
            return "a webhook URL must not carry credentials (sign deliveries with a secret)"
        host = parts.hostname.lower()
        port = port or (443 if parts.scheme == "https" else 80)
        names = (host, f"{host}:{port}")
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in self._allow for name in names):
            return None
        return (
            f"webhook host {host}:{port} is not allowed: the controller sends only to its"
            " --webhook URLs and the hosts its --webhook-allow patterns match"
        )


def rollout_event(
    rollout: RolloutRecord, event: str, detail: Mapping[str, object]
) -> dict[str, Any]:
    """The JSON document of one event."""
    return {
        "id": uuid.uuid4().hex,
        "event": event,
        "at": time.time(),
        "rollout_id": rollout.rollout_id,
        "model": rollout.model_name,
        "version": rollout.version,
        "state": rollout.state.value,
        # The wave the event is about (a verdict's judged wave, not the one it moved on to).
        "wave": detail.get("wave", rollout.current_wave),
        "waves": len(rollout.waves),
        "reason": rollout.reason,
        "detail": dict(detail),
    }


class WebhookSender:
    def __init__(
        self,
        urls: Iterable[str],
        registry: CollectorRegistry,
        *,
        queue_size: int,
        attempts: int,
        backoff_s: float,
        timeout_s: float,
        secret: bytes | None = None,
        allow: Iterable[str] = (),
        idle_s: float = IDLE_S,
    ) -> None:
        self._urls = tuple(urls)
        self.targets = WebhookTargets(self._urls, allow)
        self._idle_s = idle_s
        self._secret = secret
        self._queue_size = queue_size
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._events = Counter(
            "edgefleet_controller_webhook_events",
            "Webhook events by outcome: delivered (2xx), failed (every attempt failed, or a "
            "redirect), dropped (the receiver's queue was full), refused (a target not allowed)",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("delivered", "failed", "dropped", "refused"):
            self._events.labels(outcome)
        self._retries = Counter(
            "edgefleet_controller_webhook_retries",
            "Webhook deliveries retried after a failed attempt",
            registry=registry,
        )
        self._queued = Gauge(
            "edgefleet_controller_webhook_queued",
            "Webhook events waiting to be delivered",
            registry=registry,
        )
        self._queued.set_function(lambda: sum(q.qsize() for q in self._queues.values()))

    def publish(self, event: dict[str, Any], rollout_url: str = "") -> None:
        """Queue `event` for every global URL and the rollout's own; never waits."""
        for url in dict.fromkeys((*self._urls, *([rollout_url] if rollout_url else []))):
            refusal = self.targets.refusal(url)
            if refusal is not None:
                # Checked when the rollout was created; the allow-list may have changed since.
                self._events.labels("refused").inc()
                logger.warning("webhook: %s; %s not sent", refusal, event["event"])
                continue
            queue = self._queues.get(url)
            if queue is None:
                queue = self._queues[url] = asyncio.Queue(self._queue_size)
                self._workers[url] = asyncio.create_task(
                    self._deliver_forever(url, queue), name=f"webhook {url}"
                )
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._events.labels("dropped").inc()
                logger.warning(
                    "webhook %s: %d events queued; dropped %s", url, queue.qsize(), event["event"]
                )

    async def stop(self, grace_s: float = 1.0) -> None:
        """Give queued events `grace_s` to go out, then stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await asyncio.gather(*(queue.join() for queue in self._queues.values()))
        for worker in self._workers.values():
            worker.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
        left = sum(queue.qsize() for queue in self._queues.values())
        if left:
            logger.warning("stopping with %d webhook events undelivered", left)
        self._workers.clear()
        self._queues.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def receivers(self) -> int:
        """Receivers with a queue and a sender now (idle ones go away)."""
        return len(self._workers)

    async def _deliver_forever(self, url: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            try:
                async with asyncio.timeout(self._idle_s):
                    event = await queue.get()
            except TimeoutError:
                if queue.empty():  # nothing can arrive in between: one event loop
                    del self._queues[url], self._workers[url]
                    return
                continue
            try:
                await self._deliver(url, event)
            except Exception:
                # A bug must not silence this receiver for good: count it, go on.
                self._events.labels("failed").inc()
                logger.exception("webhook %s: delivering %s failed", url, event.get("event"))
            finally:
                queue.task_done()

    async def _deliver(self, url: str, event: dict[str, Any]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, headers={"User-Agent": USER_AGENT}
            )
        body = json.dumps(event, allow_nan=False).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Edgefleet-Event": event["event"],
            "X-Edgefleet-Delivery": event["id"],
        }
        if self._secret is not None:
            digest = hmac.new(self._secret, body, hashlib.sha256).hexdigest()
            headers["X-Edgefleet-Signature"] = f"sha256={digest}"
        problem = ""
        for attempt in range(self._attempts):
            if attempt:
                self._retries.inc()
                await asyncio.sleep(min(self._backoff_s * 2 ** (attempt - 1), 60.0))
            try:
                async with self._session.post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    if 200 <= response.status < 300:
                        self._events.labels("delivered").inc()
                        return
                    problem = f"HTTP {response.status}"
                    if 300 <= response.status < 400:
                        problem += " (a redirect: not followed, not retried)"
                        break
            except (aiohttp.ClientError, TimeoutError) as error:
                problem = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        self._events.labels("failed").inc()
        logger.warning(
            "webhook %s: %s %s not delivered after %d attempts (%s)",
            url, event["event"], event["id"], self._attempts, problem,
        )  # fmt: skip
