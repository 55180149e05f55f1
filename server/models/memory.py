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


# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Buffers from this size up get their own mapping, returned to the OS when freed. Below it stay
# onnxruntime's activations up to batch 4 of EfficientNet-Lite0 (a 1x96x112x112 tensor is
# 4.8 MB): mapping those afresh on every run cost 4.4 ms of CPU per inference at 4 MB.
MMAP_THRESHOLD = 24 * 2**20
# glibc gives each thread that allocates its own arena (up to 8 per core); a thread arena's
# freed pages are only returned from its top, so gRPC's read buffers for a big message stayed
# in the arenas of the threads that read it (+70 MB 10 s after twenty 30 MB requests; +34 MB
# with two arenas). One arena, shared by every thread, keeps them where a trim returns them;
# small allocations still come from each thread's cache without the arena's lock.
ARENA_MAX = 1


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def _load_trim() -> ctypes._NamedFuncPointer | None:
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
    return trim


_TRIM = _load_trim()


def release_free_memory() -> None:
    """Blocking for a few milliseconds: call it off the event loop after a load or unload."""
    if _TRIM is not None:
        _TRIM(0)


def bound_big_buffers() -> None:
    """Give every buffer of MMAP_THRESHOLD or more its own mapping, for good.

    glibc maps big buffers and unmaps them at free, but after the first such free it raises
    its threshold to that size (up to 32 MB), so the next requests' message copies come from
    the heaps, whose freed pages it keeps: twenty refused 30 MB requests left the server at
    +300 MB after a trim. A fixed threshold (which also stops the dynamic one) returns them at
    once; frames, tensors and activations below MMAP_THRESHOLD stay in the heaps, as before.
    The trim threshold keeps the ratio glibc would have used. Process-wide and idempotent; a
    no-op without glibc."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None:
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if not (
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        and mallopt(_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD)
        and mallopt(_M_ARENA_MAX, ARENA_MAX)
    ):
        log.debug("mallopt refused the mmap threshold; big buffers stay in the heaps")


async def trim_periodically(interval_s: float) -> None:
    """Serving frees and reallocates frame and tensor buffers all the time; glibc keeps the
    freed pages (EfficientNet-Lite0 server: 204 MB RSS after 40 requests, 167 MB after a trim).
    Runs until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(release_free_memory)
