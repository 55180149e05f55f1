"""What every benchmark records beside its figures: the machine and the software it ran on."""

from __future__ import annotations

import os
import platform
import re
from datetime import UTC, datetime
from pathlib import Path

import psutil

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is written by its script in `bench/` (`make bench` runs them all).\n"


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.machine()


def describe() -> str:
    import grpc
    import numpy
    import onnxruntime

    memory = psutil.virtual_memory().total / 2**30
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {cpu_model()}, "
        f"{len(os.sched_getaffinity(0))} cores available, {memory:.0f} GiB RAM, no GPU; "
        f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, "
        f"grpcio {grpc.__version__}, numpy {numpy.__version__}; load average at start {load}"
    )


def write_section(area: str, body: str) -> None:
    """Replace this area's section of docs/benchmarks.md, leaving the others alone."""
    begin, end = f"<!-- bench:{area} -->", f"<!-- /bench:{area} -->"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else HEADER
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)
