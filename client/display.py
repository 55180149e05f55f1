"""The rich live view of running streams, and the summary table printed at the end."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from rich.console import Console
from rich.live import Live
from rich.table import Table

from client.runner import StreamRun
from client.stats import StreamState

REFRESH_S = 0.25
_STATE_STYLE = {
    StreamState.CONNECTING: "yellow",
    StreamState.STREAMING: "green",
    StreamState.RECONNECTING: "bold yellow",
    StreamState.FINISHED: "cyan",
    StreamState.FAILED: "bold red",
}

_UP = (StreamState.CONNECTING, StreamState.STREAMING)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def live_table(runs: Sequence[StreamRun]) -> Table:
    table = Table(title="edgefleet stream", expand=False)
    table.add_column("source", no_wrap=True, max_width=28, overflow="ellipsis")
    table.add_column("state", no_wrap=True, min_width=9)
    for column in ("sent", "done", "drop", "stale", "fps", "p50/p95 ms", "age ms"):
        # Numbers never shrink to an ellipsis; the source and last result give way instead.
        table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    table.add_column("last result", no_wrap=True, overflow="ellipsis")
    for run in runs:
        snap = run.stats.snapshot()
        state, style = snap.state.value, _STATE_STYLE[snap.state]
        if snap.state is StreamState.RECONNECTING:
            state = f"reconnecting #{snap.reconnects}"
        last = ", ".join(lb.split(",")[0] for lb in snap.last_labels[:2]) or (snap.last_error or "")
        if snap.camera_down and snap.state in _UP:
            # The server stream is fine; the camera is what is being retried.
            state, style = "camera down", "bold yellow"
            last = run.source.health.last_error or last
        elif snap.camera_reconnects and snap.state in _UP:
            state = f"{state}, camera back {snap.camera_reconnects}x"
        dropped = snap.frames_dropped + snap.frames_dropped_client + snap.frames_lost
        table.add_row(
            run.source.name,
            f"[{style}]{state}[/]",
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


def summary_table(runs: Sequence[StreamRun]) -> Table:
    table = Table(title="summary")
    for column in ("source", "state", "sent", "answered", "dropped srv/cli/lost",
                   "reconn srv/cam",
                   "avg fps", "p50/p95/p99 ms", "last result"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("source", "state") else "right")
    # Only when events go somewhere: what the sinks delivered and dropped (full queues).
    sinks = any(run.sinks for run in runs)
    if sinks:
        table.add_column("events/delivered/dropped", justify="right")
    # Only when clips are recorded: clips written, and clip frames dropped or evicted early.
    clips = any(run.clips is not None for run in runs)
    if clips:
        table.add_column("clips/dropped/evicted", justify="right")
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
            f"[{_STATE_STYLE[snap.state]}]{snap.state.value}[/]",
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


async def show_live(console: Console, runs: Sequence[StreamRun], done: asyncio.Event) -> None:
    """Redraw from the event loop (not rich's refresh thread: stats are not thread-safe)."""
    with Live(live_table(runs), console=console, auto_refresh=False, transient=True) as live:
        while not done.is_set():
            live.update(live_table(runs), refresh=True)
            try:
                async with asyncio.timeout(REFRESH_S):
                    await done.wait()
            except TimeoutError:
                continue
