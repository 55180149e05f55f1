"""The live view says when a stream is reconnecting; the summary names each source."""

from __future__ import annotations

from client.display import live_table, summary_table
from client.runner import StreamRun
from client.sources.pattern import TestPatternSource
from client.stats import StreamState, StreamStats
from testkit.display import render


def test_live_view_shows_reconnecting_and_the_summary_shows_counts() -> None:
    stats = StreamStats()
    stats.frames_sent, stats.reconnects = 12, 2
    stats.record_result(0.040, 0, ("tabby, tabby cat", "tiger cat"))
    stats.state = StreamState.RECONNECTING
    run = StreamRun(TestPatternSource(64, 48), stats)
    live = render(live_table([run]))
    assert "reconnecting #2" in live
    assert "tabby, tiger cat" in live and "pattern:64x48@30" in live
    stats.state = StreamState.FINISHED
    summary = render(summary_table([run]))
    assert "finished" in summary and " 12 " in summary and "40.0/40.0/40.0" in summary


def test_live_view_says_when_the_camera_is_down_and_the_summary_counts_its_returns() -> None:
    source = TestPatternSource(64, 48)
    stats = StreamStats(source=source.health)
    stats.state = StreamState.STREAMING
    run = StreamRun(source, stats)
    source.health.lost("could not connect, or no video stream at this address")
    live = render(live_table([run]))
    assert "camera down" in live and "could not connect" in live
    source.health.back()
    assert "camera back 1x" in render(live_table([run]))
    stats.reconnects = 2
    assert " 2/1 " in render(summary_table([run]))
    assert stats.snapshot().as_dict()["camera_reconnects"] == 1
