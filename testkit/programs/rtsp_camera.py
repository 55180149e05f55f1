"""A real RTSP camera: GStreamer's RTSP server (Debian's gir1.2-gst-rtsp-server-1.0) serving a
live H.264 test pattern at rtsp://127.0.0.1:PORT/camera until it is killed.

Run by Debian's own python3 (PyGObject is a Debian package, not in the project's virtualenv):
    /usr/bin/python3 testkit/programs/rtsp_camera.py PORT [WIDTH HEIGHT FPS]
It prints `ready` once it listens.
"""

from __future__ import annotations

import sys

import gi  # type: ignore[import-not-found, unused-ignore]

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # type: ignore[import-not-found, unused-ignore]  # noqa: E402

PATH = "/camera"


def main() -> None:
    port = sys.argv[1]
    width, height, fps = (sys.argv[2:5] + ["320", "240", "15"][len(sys.argv[2:5]) :])[:3]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    # A live source with a key frame every second, so a client that (re)connects decodes soon.
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},"
        f"framerate={fps}/1 ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} "
        "! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    # One pipeline shared by every client, as a camera has one sensor.
    factory.set_shared(True)
    server.get_mount_points().add_factory(PATH, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        sys.exit(3)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
