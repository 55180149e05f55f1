"""Run the real `edgefleet serve` CLI in this process and, once it serves and the test says so,
report which modules the serving process holds and its RSS, then stop it with SIGTERM.

Run as its own process by test_lean_process.py (pytest itself has torch and onnx loaded).
Usage: python -m testkit.programs.lean_serve REPORT GO -- <edgefleet serve arguments>
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
    from server.models.memory import release_free_memory

    release_free_memory()
    report.write_text(
        json.dumps({"modules": sorted(sys.modules), "rss_bytes": rss, "rss_trimmed": rss_bytes()})
    )
    os.kill(os.getpid(), signal.SIGTERM)


def claim_int8_dot_product() -> None:
    """Make the probe report an int8 dot-product instruction (VNNI) this CPU may lack, so the
    planner queues an int8 conversion in its child: the process under test must stay lean while
    that conversion runs. Only the CPU's feature list is faked (an instruction set cannot be
    installed here); the rest of the probe reads this machine."""
    from server.hardware import probe

    real_probe_cpu = probe._probe_cpu

    def probe_cpu(*args: object, **kwargs: object) -> object:
        cpu = real_probe_cpu(*args, **kwargs)  # type: ignore[arg-type]
        if "avx512_vnni" in cpu.features:
            return cpu
        return cpu.model_copy(update={"features": (*cpu.features, "avx512_vnni")})

    probe._probe_cpu = probe_cpu  # type: ignore[assignment]


def main() -> None:
    report, go = Path(sys.argv[1]), Path(sys.argv[2])
    threading.Thread(target=watch, args=(report, go), daemon=True).start()
    claim_int8_dot_product()
    sys.argv = ["edgefleet", "serve", *sys.argv[sys.argv.index("--") + 1 :]]
    from edgefleet.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
