"""Frame sources: video files and RTSP/HTTP streams (OpenCV), image folders, a synthetic test
pattern and webcams. `open_source(spec)` picks one from a command-line string."""

from client.sources.base import FrameSource, SourceError, SourceHealth
from client.sources.open import open_source
from client.sources.pacing import paced, until_stopped

__all__ = ["FrameSource", "SourceError", "SourceHealth", "open_source", "paced", "until_stopped"]
