"""The conversion child: `python -m server.hardware.convert_job`, one request as JSON on stdin.

It runs at a lower CPU priority (nice), so a serving process on the same cores is not
starved, and one at a time on the device (a lock in the planner's cache: a small board has
neither the cores nor the memory for several), in a scratch working directory it removes
(onnxruntime's shape inference writes `sym_shape_infer_temp.onnx` into the working directory
when it gives up). It measures the model's memory footprint, converts, runs the accuracy guard
and stores the signed verdict in the planner's cache. Only this process imports onnx and
onnxruntime.quantization (the `int8` extra); the server reads the verdict back from the cache.
On success it prints one JSON line; on failure the last line on stderr names the error (no
traceback).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from server.hardware.guard import GuardThresholds

MODULE = "server.hardware.convert_job"
LOCK_FILENAME = "conversions.lock"
# What the child imports that the device install does not have, and the extra that brings it.
TOOLING = ("onnx", "sympy")
TOOLING_EXTRA = "int8"


def missing_tooling() -> str | None:
    """The first conversion package not installed here (found without importing it), or None."""
    return next((name for name in TOOLING if importlib.util.find_spec(name) is None), None)


@dataclass(frozen=True)
class ConvertRequest:
    version_dir: str
    model_file: str
    model_sha256: str
    precision: str
    recipe: str
    providers: list[str]
    cache_dir: str
    key_file: str | None
    calibration_dir: str | None
    thresholds: dict[str, Any]
    fingerprint: str
    nice: int
    # The manifest the server serves the model with (a drop-in model has no file of it).
    manifest: dict[str, Any]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()


def command(nice: int) -> tuple[list[str], int]:
    """The child's argv and the niceness it must still apply itself: `nice(1)` lowers the
    priority before Python even starts, so the child never competes at full priority."""
    runner = shutil.which("nice")
    if runner is not None and nice:
        return [runner, "-n", str(nice), sys.executable, "-m", MODULE], 0
    return [sys.executable, "-m", MODULE], nice


def run(request: ConvertRequest) -> dict[str, Any]:
    from server.hardware import trust
    from server.hardware.calibration import guard_inputs
    from server.hardware.footprint import cached_footprint
    from server.hardware.precision import convert_with_guard
    from server.manifest import ModelManifest

    version_dir = Path(request.version_dir)
    manifest = ModelManifest.model_validate(request.manifest)
    cache_dir = Path(request.cache_dir)
    model_path = version_dir / request.model_file
    cached_footprint(model_path, manifest, request.model_sha256, cache_dir)
    key = trust.device_key(Path(request.key_file) if request.key_file else None)
    calibration_dir = Path(request.calibration_dir) if request.calibration_dir else None
    conversion = convert_with_guard(
        model_path=model_path,
        model_sha256=request.model_sha256,
        manifest=manifest,
        precision=request.precision,
        inputs=guard_inputs(manifest, calibration_dir),
        cache_dir=cache_dir,
        key=key,
        providers=tuple(request.providers),
        thresholds=GuardThresholds(**request.thresholds),
        fingerprint=request.fingerprint,
        recipe=request.recipe,
    )
    return {"accepted": conversion.accepted, "cached": conversion.cached}


def main() -> int:
    request = ConvertRequest(**json.loads(sys.stdin.buffer.read()))
    if request.nice:
        os.nice(request.nice)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with (
            _one_at_a_time(Path(request.cache_dir).resolve()),
            tempfile.TemporaryDirectory(prefix="edgefleet-convert-") as scratch,
        ):
            os.chdir(scratch)
            result = run(request)
    except Exception as exc:  # the parent reports the cause; the process must not hang
        message = str(exc).splitlines()[0][:300] if str(exc) else ""
        print(f"{type(exc).__name__}: {message}".rstrip(": "), file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


@contextlib.contextmanager
def _one_at_a_time(cache_dir: Path) -> Iterator[None]:
    """An exclusive lock on the cache's lock file for the whole conversion; the kernel releases
    it if the child dies."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / LOCK_FILENAME).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


if __name__ == "__main__":
    sys.exit(main())
