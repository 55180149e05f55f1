"""Where a one-model server's RSS goes: RSS when ready over a few starts, and per import.

Starts `edgefleet serve --model efficientnet_lite0` (every listener on, as
`bench/footprint_probe.py` does) `--starts` times with `--python` (another install's
interpreter: the device's venv) running this checkout's code, and prints RSS when the port
file appears and its median. `--imports` instead imports, in a fresh process of that Python,
the libraries the server imports and then the server's own modules, one after the other, and
prints RSS after each: a module is charged with what it loads first. Prints only; the figures
go to docs/benchmarks.md ("Footprint of each install role") by hand.

    .venv/bin/python -m bench.ready_rss --python /path/to/device-venv/bin/python [--imports]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from bench.footprint_probe import MB, PROBE_MODEL, ServeProcess
from testkit.repositories import BUILT_MODELS, ROOT

# In the order the serving process first needs them.
STAGES = (
    "click", "pydantic", "pydantic_settings", "numpy", "PIL.Image", "grpc",
    "grpc_health.v1.health", "grpc_reflection.v1alpha.reflection", "onnxruntime",
    "prometheus_client", "psutil", "aiohttp.web", "protos.inference.grpc_service_pb2_grpc",
    "protos.edgefleet.v1.frame_stream_pb2_grpc", "server.settings", "server.hardware.planner",
    "server.frames.session", "server.core", "server.app", "server.http_api.kserve_http",
    "edgefleet.cli",
)  # fmt: skip

_IMPORTS = textwrap.dedent(
    """
    import importlib, sys
    def rss():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096 / 2**20
    previous = rss()
    print(f"{'python':45s} {previous:6.1f} MB")
    for name in sys.argv[1:]:
        importlib.import_module(name)
        now = rss()
        print(f"{name:45s} {now:6.1f} MB  +{now - previous:4.1f}")
        previous = now
    """
)


def ready_rss(python: str, starts: int, arguments: list[str]) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    figures: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ready-rss-") as cache:
        env["XDG_CACHE_HOME"] = cache
        for _ in range(starts):
            command = [python, "-m", "edgefleet.cli"]
            with ServeProcess(
                command, BUILT_MODELS, "--model", PROBE_MODEL, *arguments, env=env
            ) as server:
                figures.append(server.ready_rss / MB)
                print(f"ready in {server.ready_s:.1f} s, RSS {figures[-1]:.1f} MB", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="the install's interpreter")
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--imports", action="store_true", help="RSS after each import instead")
    parser.add_argument("serve_arguments", nargs="*", help="more `serve` flags (after --)")
    args = parser.parse_args()
    if args.imports:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run([args.python, "-c", _IMPORTS, *STAGES], check=True, cwd=Path(ROOT), env=env)
        return
    figures = ready_rss(args.python, args.starts, args.serve_arguments)
    print(f"median of {len(figures)}: {statistics.median(figures):.1f} MB")


if __name__ == "__main__":
    main()
