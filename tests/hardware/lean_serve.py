"""Run the real `edgefleet serve` CLI in this process and, once it serves and the test says so,
report which modules the serving process holds and its RSS, then stop it with SIGTERM.

Run as its own process by test_lean_process.py (pytest itself has torch and onnx loaded).
Usage: python -m tests.hardware.lean_serve REPORT GO -- <edgefleet serve arguments>
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def watch(report: Path, go: Path) -> None:
    while not go.exists():
        time.sleep(0.05)
    rss = rss_bytes()
    from server.memory import release_free_memory

    release_free_memory()
    report.write_text(
        json.dumps({"modules": sorted(sys.modules), "rss_bytes": rss, "rss_trimmed": rss_bytes()})
    )
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    report, go = Path(sys.argv[1]), Path(sys.argv[2])
    threading.Thread(target=watch, args=(report, go), daemon=True).start()
    sys.argv = ["edgefleet", "serve", *sys.argv[sys.argv.index("--") + 1 :]]
    from edgefleet.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
