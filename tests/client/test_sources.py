"""Frame sources and what the CLI says when one cannot be opened."""

from __future__ import annotations

import asyncio
import functools
import http.server
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from client.backoff import CAMERA_BACKOFF
from client.frames import CapturedFrame, Encoding, encode_frame
from client.sources import SourceError, open_source, paced, until_stopped
from client.sources.pattern import TestPatternSource
from client.sources.video import VideoSource
from testkit.media import VIDEO_FRAMES, jpeg_bytes, photo, png_bytes
from testkit.repositories import ROOT


async def collect(
    source_spec: str, limit: int = 100, *, reconnect: bool = True
) -> list[CapturedFrame]:
    source = open_source(source_spec, reconnect=reconnect)
    await source.open()
    frames = []
    async for frame in source.frames():
        frames.append(frame)
        if len(frames) >= limit:
            break
    return frames


async def test_pattern_burns_in_a_counter_and_honours_size_and_count() -> None:
    source = TestPatternSource(320, 240, fps=30, count=3)
    frames = [frame async for frame in source.frames()]
    assert len(frames) == 3
    assert all(frame.pixels_bgr.shape == (240, 320, 3) for frame in frames)
    # Only the counter (and the moving marker) differ between frames.
    assert not np.array_equal(frames[0].pixels_bgr, frames[1].pixels_bgr)
    spec = open_source("pattern:64x48@12.5")
    assert (spec.native_fps, spec.live) == (12.5, True)


async def test_image_folder_plays_in_name_order_and_skips_unreadable_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "b.png").write_bytes(png_bytes(photo("coffee")))
    (tmp_path / "a.png").write_bytes(png_bytes(photo("chelsea")))
    (tmp_path / "c.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    frames = await collect(str(tmp_path))
    assert [frame.pixels_bgr.shape for frame in frames] == [(300, 451, 3), (400, 600, 3)]
    assert "c.jpg: skipped, not a readable image" in caplog.text


async def test_video_and_folder_errors_name_the_source_and_the_reason(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"missing\.mp4: no such file"):
        open_source(str(tmp_path / "missing.mp4"))
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError, match=r"fake\.mp4: .*(could not open|no frame)"):
        await collect(str(fake))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match=r"empty: no images"):
        open_source(str(empty))
    with pytest.raises(SourceError, match="no such file or directory"):
        open_source(str(tmp_path / "missing.png"))


@pytest.mark.skipif(any(Path("/dev").glob("video*")), reason="this machine has a webcam")
def test_webcam_without_a_device_says_so() -> None:
    with pytest.raises(SourceError, match=r"webcam: no /dev/video\* device"):
        open_source("webcam")


async def test_pacing_spreads_frames_over_time_and_stop_ends_a_source() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    frames = [f async for f in paced(TestPatternSource(32, 32, count=6).frames(), 50)]
    # Six frames at 50 fps: five intervals of 20 ms at the least.
    assert len(frames) == 6 and loop.time() - started >= 0.1
    stop = asyncio.Event()
    endless = until_stopped(paced(TestPatternSource(32, 32).frames(), 100), stop)
    received = 0
    async for _frame in endless:
        received += 1
        if received == 3:
            stop.set()
    assert received == 3


def test_jpeg_is_smaller_and_raw_is_exact() -> None:
    pixels = cv2.cvtColor(photo("astronaut"), cv2.COLOR_RGB2BGR)
    frame = CapturedFrame(pixels, 1)
    raw = encode_frame(frame, Encoding.RAW)
    jpeg = encode_frame(frame, Encoding.JPEG, jpeg_quality=80)
    assert raw.data == pixels.tobytes() and (raw.width, raw.height) == (512, 512)
    assert len(jpeg.data) < len(raw.data) / 5
    decoded = cv2.imdecode(np.frombuffer(jpeg.data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape == pixels.shape


# The edgefleet CLI as a child process.
@pytest.mark.system
def test_cli_names_a_source_it_cannot_open(tmp_path: Path) -> None:
    missing = tmp_path / "camera-7.mp4"
    completed = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "stream", str(missing), "--model", "m"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert completed.returncode == 2
    assert f"{missing}: no such file" in " ".join(completed.stderr.split())


async def _first(frames: AsyncIterator[CapturedFrame], count: int) -> AsyncIterator[CapturedFrame]:
    """The first `count` frames, then the source is closed (aclose releases its capture)."""
    received = 0
    try:
        async for frame in frames:
            yield frame
            received += 1
            if received == count:
                return
    finally:
        await frames.aclose()  # type: ignore[attr-defined]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


async def test_http_stream_source_reads_a_served_video(test_video: Path) -> None:
    """A real HTTP server on port 0 serves the test video; OpenCV's FFmpeg reads it by URL."""
    handler = functools.partial(_QuietHandler, directory=str(test_video.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        frames = await collect(f"{base}/{test_video.name}", reconnect=False)
        with pytest.raises(SourceError, match=r"missing\.avi: could not connect, or no video"):
            await collect(f"{base}/missing.avi", reconnect=False)
        # As a camera (the default), a stream that ends is a drop: it is opened again and
        # read on, and one that is not there yet is retried, not refused.
        camera = open_source(f"{base}/{test_video.name}")
        await camera.open()
        again = [frame async for frame in _first(camera.frames(), VIDEO_FRAMES + 3)]
        assert len(again) == VIDEO_FRAMES + 3
        assert camera.health.reconnects == 1 and not camera.health.down
        absent = open_source(f"{base}/later.avi")
        await absent.open()
        assert absent.health.down and absent.health.attempts == 1
        assert "could not connect" in (absent.health.last_error or "")
        (test_video.parent / "later.avi").symlink_to(test_video)
        try:
            came_up = [frame async for frame in _first(absent.frames(), 2)]
        finally:
            (test_video.parent / "later.avi").unlink()
        assert len(came_up) == 2 and absent.health.reconnects == 1
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert len(frames) == VIDEO_FRAMES
    assert open_source(f"{base}/{test_video.name}").live


class _OneClientCamera(http.server.BaseHTTPRequestHandler):
    """An MJPEG-over-HTTP camera (multipart/x-mixed-replace, as cheap IP cameras serve) that
    takes one client at a time and counts the connections it was asked for."""

    frame = b""
    connections = 0
    busy = threading.Lock()

    def do_GET(self) -> None:
        type(self).connections += 1
        if not self.busy.acquire(blocking=False):
            self.send_error(503, "one client at a time")
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            for _ in range(300):
                self.wfile.write(
                    b"--frame\r\nContent-Type: image/jpeg\r\n"
                    + f"Content-Length: {len(self.frame)}\r\n\r\n".encode()
                    + self.frame
                    + b"\r\n"
                )
                time.sleep(0.02)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away
        finally:
            self.busy.release()

    def log_message(self, format: str, *args: object) -> None:
        pass


async def test_a_camera_is_opened_once_for_the_check_and_the_frames() -> None:
    _OneClientCamera.frame = jpeg_bytes(photo("astronaut"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OneClientCamera)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        source = open_source(f"http://127.0.0.1:{server.server_port}/video.mjpg")
        await source.open()
        frames = [frame async for frame in _first(source.frames(), 10)]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert len(frames) == 10 and frames[0].pixels_bgr.shape == (512, 512, 3)
    # The check in open() and the frames share one connection: nothing to race for.
    assert _OneClientCamera.connections == 1
    assert source.health.reconnects == 0 and not source.health.down


class _StallingCamera(http.server.BaseHTTPRequestHandler):
    """An MJPEG camera whose first connection goes silent after 5 frames (a camera that hangs
    without closing the connection); later connections stream normally."""

    frame = b""
    connections = 0

    def do_GET(self) -> None:
        type(self).connections += 1
        stalls = self.connections == 1
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            for sent in range(300):
                if stalls and sent == 5:
                    time.sleep(30)
                    return
                self.wfile.write(
                    b"--frame\r\nContent-Type: image/jpeg\r\n"
                    + f"Content-Length: {len(self.frame)}\r\n\r\n".encode()
                    + self.frame
                    + b"\r\n"
                )
                time.sleep(0.02)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: object) -> None:
        pass


# Waits out a read timeout and a backoff: seconds.
@pytest.mark.system
async def test_a_camera_that_goes_silent_is_dropped_after_its_timeout_and_reopened() -> None:
    _StallingCamera.frame = jpeg_bytes(photo("astronaut"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StallingCamera)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/video.mjpg"
        # A short timeout for the test; cameras get LIVE_TIMEOUT_S (5 s).
        source = VideoSource(url, url, live=True, reconnect=CAMERA_BACKOFF, timeout_s=1.0)
        await source.open()
        frames = [frame async for frame in _first(source.frames(), 12)]
    finally:
        server.shutdown()
        server.server_close()
    assert len(frames) == 12
    assert _StallingCamera.connections == 2 and source.health.reconnects == 1
