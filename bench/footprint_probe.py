"""Measuring a running `edgefleet serve`: RSS when ready, under a series of big requests, after.

Shared by `bench/bench_footprint.py` (before/after, per install role) and the memory-bound test
(`tests/server/test_memory_bound.py`). The server is a child process started from any Python
(a role's fresh virtualenv, an older checkout's): this module needs only grpc, psutil and the
generated KServe stubs on the caller's side.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil

from protos.inference import grpc_service_pb2 as kserve
from protos.inference import grpc_service_pb2_grpc as kserve_grpc

MB = 2**20
# The default classifier's input: 1x3x224x224 FP32 (602,112 bytes); the series sends far more.
PROBE_MODEL = "efficientnet_lite0"


@dataclass
class Sampler:
    """RSS of one process (and how many child processes it has) every `interval_s`."""

    pid: int
    interval_s: float = 0.02
    peak_rss: int = 0
    peak_children: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        process = psutil.Process(self.pid)
        ticks = 0
        while not self._stop.is_set():
            try:
                rss = process.memory_info().rss
                if ticks % 5 == 0:
                    children = len(process.children(recursive=True))
                    self.peak_children = max(self.peak_children, children)
            except psutil.Error:
                return
            ticks += 1
            self.peak_rss = max(self.peak_rss, rss)
            self.samples.append((time.monotonic(), rss))
            self._stop.wait(self.interval_s)


class ServeProcess:
    """`edgefleet serve` as a child process: `command` is how to run the CLI (a venv's console
    script, or `python -m edgefleet.cli`); it runs in its own empty working directory, so
    anything it leaves behind there is visible (`leftovers`). Every listener is on, as in a
    default start, on ports the system picks."""

    def __init__(
        self,
        command: Sequence[str],
        repository: Path,
        *arguments: str,
        env: dict[str, str] | None = None,
        timeout_s: float = 300.0,
    ) -> None:
        self._command = list(command)
        self._repository = repository
        self._arguments = list(arguments)
        self._env = env
        self._timeout_s = timeout_s
        self._workdir = tempfile.TemporaryDirectory(prefix="edgefleet-serve-")
        self.cwd = Path(self._workdir.name) / "cwd"
        self.cwd.mkdir()
        self.port_file = Path(self._workdir.name) / "port"
        self.log_file = Path(self._workdir.name) / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.ready_s = 0.0
        self.ready_rss = 0
        self.startup_children = 0

    def __enter__(self) -> ServeProcess:
        started = time.perf_counter()
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                [*self._command, "serve", "--repository", str(self._repository.resolve()),
                 "--port", "0", "--port-file", str(self.port_file), "--metrics-port", "0",
                 "--http-port", "0", *self._arguments],
                cwd=self.cwd, env=self._env, stdout=log, stderr=subprocess.STDOUT,
                # Its own session: a signal the server sends its process group on the way
                # out (it did, since the HTTP parse pool) never reaches the measuring process.
                start_new_session=True,
            )  # fmt: skip
        with Sampler(self.process.pid, interval_s=0.05) as sampler:
            while not (self.port_file.exists() and self.port_file.read_text().strip()):
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited before serving:\n{self.log()[-3000:]}")
                if time.perf_counter() - started > self._timeout_s:
                    self.__exit__()
                    raise TimeoutError(f"the server was not ready in {self._timeout_s:.0f} s")
                time.sleep(0.01)
            self.ready_s = time.perf_counter() - started
            self.ready_rss = self.rss()
        self.startup_children = sampler.peak_children
        self.port = int(self.port_file.read_text())
        return self

    def rss(self) -> int:
        assert self.process is not None
        return int(psutil.Process(self.process.pid).memory_info().rss)

    def children(self) -> int:
        assert self.process is not None
        return len(psutil.Process(self.process.pid).children(recursive=True))

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def leftovers(self) -> list[str]:
        return sorted(path.name for path in self.cwd.iterdir())

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._workdir.cleanup()


@dataclass(frozen=True)
class SeriesResult:
    size_mb: int
    count: int
    codes: tuple[str, ...]  # distinct status codes answered
    before_rss: int
    peak_rss: int
    after_rss: int  # `settle_s` after the last answer
    settled_s: float  # seconds until RSS was back within `settled_margin` of `before_rss`

    def describe(self) -> str:
        return (
            f"{self.count} x {self.size_mb} MB ({'/'.join(self.codes)}): RSS "
            f"{self.before_rss / MB:.0f} -> peak {self.peak_rss / MB:.0f} -> "
            f"{self.after_rss / MB:.0f} MB"
        )


def request_series(
    server: ServeProcess,
    size_mb: int,
    count: int = 20,
    *,
    settle_s: float = 10.0,
    settled_margin: int = 30 * MB,
    reference: int | None = None,
    model: str = PROBE_MODEL,
) -> SeriesResult:
    """`count` ModelInfer requests of `size_mb` MB each, one after the other; each declares the
    model's 1x3x224x224 FP32 input but carries far more bytes, so the server refuses it (wrong
    size under the message limit, RESOURCE_EXHAUSTED over it). Samples the server's RSS
    throughout and for `settle_s` afterwards; `settled_s` is how long RSS took to come back
    within `settled_margin` of `reference` (default: RSS before the series)."""
    payload = os.urandom(1024) * (size_mb * 1024)
    options = [("grpc.max_send_message_length", 2 * size_mb * MB + MB)]
    codes: set[str] = set()
    before = server.rss()
    settled_below = (before if reference is None else reference) + settled_margin
    with (
        Sampler(server.process.pid if server.process else 0) as sampler,
        grpc.insecure_channel(f"127.0.0.1:{server.port}", options=options) as channel,
    ):
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        for index in range(count):
            request = kserve.ModelInferRequest(model_name=model, id=str(index))
            request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 224, 224])
            request.raw_input_contents.append(payload)
            try:
                stub.ModelInfer(request, timeout=60)
                codes.add("OK")
            except grpc.RpcError as exc:
                codes.add(exc.code().name)
            del request
        finished = time.monotonic()
        settled_at: float | None = None
        while time.monotonic() - finished < settle_s:
            time.sleep(0.1)
            if settled_at is None and server.rss() <= settled_below:
                settled_at = time.monotonic() - finished
        after = server.rss()
    return SeriesResult(
        size_mb=size_mb,
        count=count,
        codes=tuple(sorted(codes)),
        before_rss=before,
        peak_rss=sampler.peak_rss,
        after_rss=after,
        settled_s=settled_at if settled_at is not None else float("inf"),
    )
