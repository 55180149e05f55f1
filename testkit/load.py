"""A loaded machine for tests that must not depend on a quiet one: one busy process per core."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# No hog outlives this, even if the test process is killed before it can stop them.
HOG_S = 300
_HOG = f"import time\nend = time.monotonic() + {HOG_S}\nwhile time.monotonic() < end: pass\n"


@contextmanager
def cpu_hog() -> Iterator[None]:
    """Keep every core busy (bounded to HOG_S seconds) while the block runs."""
    hogs = [subprocess.Popen([sys.executable, "-c", _HOG]) for _ in range(os.cpu_count() or 1)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
