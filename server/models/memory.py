"""Hand memory the process has freed back to the OS.

Loading an ONNX model parses the file, optimizes the graph and pre-packs weights; most of that
is freed once the session is built, but glibc keeps freed pages in its heaps, so RSS stays at
the peak (EfficientNet-Lite0 fp32: 68 MB after load and warm-up, 30 MB after a trim, measured
in docs/benchmarks.md). `malloc_trim(0)` returns free pages of every heap. A no-op where the C
library is not glibc.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)


def _load_trim() -> ctypes._NamedFuncPointer | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
    return trim


_TRIM = _load_trim()


def release_free_memory() -> None:
    """Blocking for a few milliseconds: call it off the event loop after a load or unload."""
    if _TRIM is not None:
        _TRIM(0)


async def trim_periodically(interval_s: float) -> None:
    """Serving frees and reallocates frame and tensor buffers all the time; glibc keeps the
    freed pages (EfficientNet-Lite0 server: 204 MB RSS after 40 requests, 167 MB after a trim).
    Runs until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(release_free_memory)
