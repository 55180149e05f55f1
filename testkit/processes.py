"""Child processes for tests and benchmarks: spawn one with its output in a log file, wait until
it is ready, stop it with SIGTERM and then SIGKILL, read its log.

One implementation for every caller. It is synchronous (subprocess.Popen): benchmarks call it
as is, and async tests run the waits in a thread (`await asyncio.to_thread(spawned.stop)`), so
the event loop, and an in-process controller on it, keeps running while a child starts or stops.
The log is a file, not a pipe: a chatty child can never block on a full pipe, and the log stays
readable after the child is gone.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from testkit.repositories import ROOT

# The CLIs as this checkout's Python runs them (PYTHONPATH decides which checkout they import).
EDGEFLEET = (sys.executable, "-m", "edgefleet.cli")
FLEETCTL = (sys.executable, "-m", "fleet.ctl.cli")

LOG_TAIL = 3000


@dataclass
class Spawned:
    """A running child process whose output goes to `log_path`."""

    command: list[str]
    process: subprocess.Popen[bytes]
    log_path: Path
    # The port it reported in its port file (`wait_for_port_file`); 0 until then.
    port: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, characters: int = LOG_TAIL) -> str:
        return self.log()[-characters:]

    def wait_until(
        self, ready: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.05
    ) -> None:
        """Poll `ready` until it is truthy. Fails with the log's tail if the child exits first
        (and `ready` still says no) or after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not ready():
            if not self.running:
                raise AssertionError(
                    f"{what}: {self.command[:4]} exited {self.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout_s} s:\n{self.log_tail()}")
            time.sleep(poll_s)

    def wait_for_port_file(self, port_file: Path, timeout_s: float, poll_s: float = 0.05) -> int:
        """The port the child wrote to `port_file` (`--port-file`) once it listens."""

        def written() -> bool:
            return port_file.is_file() and port_file.read_text().strip() != ""

        self.wait_until(written, timeout_s, f"{port_file.name} to be written", poll_s)
        self.port = int(port_file.read_text())
        return self.port

    def signal(self, number: signal.Signals) -> None:
        if self.running:
            self.process.send_signal(number)

    def wait(self, timeout_s: float) -> int:
        """Its exit status; raises subprocess.TimeoutExpired if it runs on."""
        return self.process.wait(timeout_s)

    def stop(self, grace_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within `grace_s`; its exit status."""
        if self.running:
            self.process.terminate()
            try:
                return self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        return self.kill()

    def kill(self) -> int:
        """SIGKILL: no drain, no goodbye, exactly what a power cut or a crash does."""
        if self.running:
            self.process.kill()
        return self.process.wait()


def spawn(
    command: Sequence[str],
    log_path: Path,
    *,
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
    stdout_to_log: bool = True,
) -> Spawned:
    """Start `command` with stderr (and stdout, unless `stdout_to_log` is false: then it is
    discarded) appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=log if stdout_to_log else subprocess.DEVNULL,
            stderr=log,
        )
    return Spawned(list(command), process, log_path)


def free_port() -> int:
    """A port free now. Only for servers that cannot listen on port 0 and say which port they
    got (nginx, PostgreSQL); their starters retry when another process took it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False
