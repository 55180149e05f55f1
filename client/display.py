"""The live view of running streams, and the summary table printed at the end."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TextIO

from client.runner import StreamRun
from client.stats import StreamState
from common.text_table import LiveText, TextTable

REFRESH_S = 0.25

_UP = (StreamState.CONNECTING, StreamState.STREAMING)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def live_table(runs: Sequence[StreamRun]) -> TextTable:
    # The last result comes last: on a narrow terminal the live view cuts it, not the numbers.
    numbers = ("sent", "done", "drop", "stale", "fps", "p50/p95 ms", "age ms")
    table = TextTable(
        "source", "state", *numbers, "last result",
        title="edgefleet stream", right=numbers, max_widths={"source": 28},
    )  # fmt: skip
    for run in runs:
        snap = run.stats.snapshot()
        state = snap.state.value
        if snap.state is StreamState.RECONNECTING:
            state = f"reconnecting #{snap.reconnects}"
        last = ", ".join(lb.split(",")[0] for lb in snap.last_labels[:2]) or (snap.last_error or "")
        if snap.camera_down and snap.state in _UP:
            # The server stream is fine; the camera is what is being retried.
            state = "camera down"
            last = run.source.health.last_error or last
        elif snap.camera_reconnects and snap.state in _UP:
            state = f"{state}, camera back {snap.camera_reconnects}x"
        dropped = snap.frames_dropped + snap.frames_dropped_client + snap.frames_lost
        table.add_row(
            run.source.name,
            state,
            str(snap.frames_sent),
            str(snap.frames_answered),
            str(dropped),
            str(snap.frames_stale),
            f"{snap.fps:.1f}",
            f"{_ms(snap.latency_p50_ms)}/{_ms(snap.latency_p95_ms)}",
            _ms(snap.result_age_ms),
            last,
        )
    return table


def summary_table(runs: Sequence[StreamRun]) -> TextTable:
    table = TextTable(title="summary")
    for column in ("source", "state", "sent", "answered", "dropped srv/cli/lost",
                   "reconn srv/cam",
                   "avg fps", "p50/p95/p99 ms", "last result"):  # fmt: skip
        table.add_column(column, right=column not in ("source", "state"))
    # Only when events go somewhere: what the sinks delivered and dropped (full queues).
    sinks = any(run.sinks for run in runs)
    if sinks:
        table.add_column("events/delivered/dropped", right=True)
    # Only when clips are recorded: clips written, and clip frames dropped or evicted early.
    clips = any(run.clips is not None for run in runs)
    if clips:
        table.add_column("clips/dropped/evicted", right=True)
    for run in runs:
        snap = run.stats.snapshot()
        elapsed = run.elapsed_s()
        average_fps = snap.frames_answered / elapsed if elapsed else 0.0
        latency = "/".join(
            _ms(value) for value in (snap.latency_p50_ms, snap.latency_p95_ms, snap.latency_p99_ms)
        )
        events = (
            [
                f"{run.events}/{sum(sink.stats.delivered for sink in run.sinks)}/"
                f"{sum(sink.stats.dropped for sink in run.sinks)}"
            ]
            if sinks
            else []
        )
        recorded = []
        if clips:
            clip_stats = run.clips.stats if run.clips is not None else None
            recorded = [
                f"{clip_stats.written}/{clip_stats.frames_dropped}/"
                f"{clip_stats.frames_evicted_early}"
                if clip_stats is not None
                else "-"
            ]
        table.add_row(
            run.source.name,
            snap.state.value,
            str(snap.frames_sent),
            str(snap.frames_answered),
            f"{snap.frames_dropped}/{snap.frames_dropped_client}/{snap.frames_lost}",
            f"{snap.reconnects}/{snap.camera_reconnects}",
            f"{average_fps:.1f}",
            latency,
            (run.error or ", ".join(label.split(",")[0] for label in snap.last_labels[:2]))[:60],
            *events,
            *recorded,
        )
    return table


async def show_live(stream: TextIO, runs: Sequence[StreamRun], done: asyncio.Event) -> None:
    """Redraw from the event loop (never another thread: stats are not thread-safe)."""
    with LiveText(stream, transient=True) as live:
        while not done.is_set():
            live.update(live_table(runs).render())
            try:
                async with asyncio.timeout(REFRESH_S):
                    await done.wait()
            except TimeoutError:
                continue
