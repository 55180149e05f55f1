"""TorchScript models, run in a confined worker process per loaded version (the worker is
torchscript_worker.py; what confines it, confine.py). The server process never imports torch
for serving and never runs a model's TorchScript code: it scans the archive's pickles, starts
the worker, and exchanges arrays with it over a socket pair (worker_wire.py). A run that passes
the sandbox's run time limit gets its worker killed, like a worker that dies by itself."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import server
from server.errors import ModelLoadError, ModelNotReady, ModelRunTimedOut, ModelWorkerFailed
from server.manifest import ModelManifest
from server.models.backends import worker_wire
from server.models.backends.archive_scan import check_torchscript_archive
from server.models.backends.confine import unprivileged_ids
from server.models.runtime_plan import RuntimePlan
from server.models.types import Arrays
from server.settings import SandboxSettings

log = logging.getLogger(__name__)

WORKER_MODULE = "server.models.backends.torchscript_worker"
# Deaths of a version's worker (killed for its run time too) before the version is marked
# failed (a model that kills its worker on every frame would otherwise cost a torch start-up
# per frame, or one run time limit per frame when it loops forever).
MAX_RESTARTS = 3
_EXIT_WAIT_S = 5.0


class ConfinedTorchScriptBackend:
    def __init__(
        self,
        model_path: Path,
        version_dir: Path,
        manifest: ModelManifest,
        plan: RuntimePlan,
        sandbox: SandboxSettings,
        *,
        on_restart: Callable[[], None] | None = None,
        on_timeout: Callable[[], None] | None = None,
    ) -> None:
        """`on_restart`: called when the worker dies by itself; `on_timeout`: when it is
        killed for passing the run time limit."""
        self._label = f"{manifest.name}/{manifest.version}"
        check_torchscript_archive(model_path, self._label)
        self._run_timeout_s = sandbox.run_timeout_s
        self._load_timeout_s = sandbox.load_timeout_s
        self._request = {
            "model": self._label,
            "model_path": str(model_path.resolve()),
            "version_dir": str(version_dir.resolve()),
            "input_names": [spec.name for spec in manifest.inputs],
            "output_names": [spec.name for spec in manifest.outputs],
            "threads": plan.intra_op_threads,
            "allow_unconfined": sandbox.allow_unconfined,
            "server_pid": os.getpid(),
        }
        self._threads = plan.intra_op_threads
        self._on_restart = on_restart
        self._on_timeout = on_timeout
        # Set by interrupt() (the server stops): a worker killed then is no death to count.
        self._interrupted = False
        self._lock = threading.Lock()
        self._restarts = 0
        self._failed = False
        self._process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._tmp: Path | None = None
        self._description = ""
        self._process_bytes = 0
        self._start()
        # Unconfined by the operator's choice (no Landlock here): said loudly, never silently.
        level = logging.WARNING if "NO Landlock" in self._description else logging.INFO
        log.log(
            level,
            "model %s: TorchScript worker pid %d, %s",
            self._label,
            self.pid,
            self._description,
        )

    @property
    def pid(self) -> int:
        return self._process.pid if self._process is not None else 0

    def _start(self) -> None:
        self._tmp = _private_tmp()
        ours, theirs = socket.socketpair()
        self._sock = ours
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(Path(server.__file__).resolve().parent.parent),
            "HOME": "/nonexistent",
            "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": str(self._threads),
        }
        try:
            self._process = subprocess.Popen(
                # The label is for `ps` and tests; the worker reads only the FD.
                # -P: no current directory on sys.path (the worker runs in /).
                [sys.executable, "-P", "-m", WORKER_MODULE, str(theirs.fileno()), self._label],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
                cwd="/",
            )
        except BaseException:
            self._stop()
            raise
        finally:
            theirs.close()
        # Every send and receive below waits at most this long (a model's `__setstate__` runs
        # in the load, its forward in each run); the worker is killed past it.
        ours.settimeout(self._load_timeout_s)
        try:
            worker_wire.send(ours, {**self._request, "tmp": str(self._tmp)})
            reply, _ = worker_wire.receive(ours)
        except TimeoutError:
            self._kill()
            self._stop()
            raise ModelLoadError(
                f"{self._label}: the TorchScript worker did not load the model within "
                f"{self._load_timeout_s:g} s (EDGEFLEET_SANDBOX_LOAD_TIMEOUT_S); it was killed"
            ) from None
        except (OSError, worker_wire.PeerGone):
            code = self._stop()
            raise ModelLoadError(
                f"{self._label}: the TorchScript worker exited while loading ({_how(code)})"
            ) from None
        if not reply.get("ok"):
            self._stop()
            raise ModelLoadError(str(reply.get("error", "the worker refused the model")))
        self._description = str(reply["description"])
        self._process_bytes = int(reply.get("process_bytes", 0))
        ours.settimeout(self._run_timeout_s)

    def _kill(self) -> None:
        """SIGKILL the worker (a model's code may ignore anything milder); _stop() reaps it."""
        process = self._process  # read once: interrupt() comes from another thread
        if process is not None:
            process.kill()

    def _stop(self) -> int | None:
        """Close the socket, let the worker exit (kill it past a wait), remove its temp dir."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        code = None
        if self._process is not None:
            try:
                code = self._process.wait(_EXIT_WAIT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                code = self._process.wait()
            self._process = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        return code

    @property
    def description(self) -> str:
        return self._description

    @property
    def provider(self) -> str:
        return "cpu"

    @property
    def process_bytes(self) -> int:
        """The worker's resident set with torch imported, before its model (its own report)."""
        return self._process_bytes

    def run(self, inputs: Arrays, output_names: list[str]) -> Arrays:
        with self._lock:
            if self._interrupted:  # the server is stopping: no worker restarts for it
                raise ModelNotReady(f"model {self._label} is unloading")
            if self._failed:
                raise ModelNotReady(
                    f"model {self._label}: its TorchScript worker died or was killed "
                    f"{self._restarts} times; the version is marked failed"
                )
            if self._sock is None:
                self._restart()
            assert self._sock is not None
            names = list(inputs)
            try:
                worker_wire.send(
                    self._sock,
                    {"inputs": names, "outputs": output_names},
                    [inputs[name] for name in names],
                )
                reply, arrays = worker_wire.receive(self._sock)
            except TimeoutError:
                raise self._timed_out() from None
            except (OSError, worker_wire.PeerGone):
                if self._interrupted:
                    self._stop()
                    raise ModelNotReady(f"model {self._label} is unloading") from None
                raise self._died() from None
        if not reply.get("ok"):
            # The model's own error (its forward raised): answered INTERNAL, details logged.
            raise RuntimeError(f"model {self._label} failed in its worker: {reply.get('error')}")
        return dict(zip(reply["outputs"], arrays, strict=True))

    def _restart(self) -> None:
        try:
            self._start()
        except ModelLoadError as exc:
            self._failed = True
            raise ModelNotReady(
                f"model {self._label}: restarting its worker failed: {exc}"
            ) from None
        log.warning("model %s: TorchScript worker restarted (pid %d)", self._label, self.pid)

    def _died(self) -> ModelWorkerFailed:
        code = self._stop()
        if self._on_restart is not None:
            self._on_restart()
        then = self._count_restart()
        log.error("model %s: TorchScript worker died (%s); %s", self._label, _how(code), then)
        return ModelWorkerFailed(
            f"model {self._label}: its TorchScript worker died during this request "
            f"({_how(code)}); {then}"
        )

    def _timed_out(self) -> ModelRunTimedOut:
        self._kill()
        self._stop()
        if self._on_timeout is not None:
            self._on_timeout()
        then = self._count_restart()
        limit = f"{self._run_timeout_s:g} s"
        log.error("model %s: run passed the %s limit; TorchScript worker killed; %s",
                  self._label, limit, then)  # fmt: skip
        return ModelRunTimedOut(
            f"model {self._label}: its run passed the device's limit of {limit} "
            f"(EDGEFLEET_SANDBOX_RUN_TIMEOUT_S); its worker was killed; {then}"
        )

    def _count_restart(self) -> str:
        """One more worker lost: what happens next, for the log and the client."""
        self._restarts += 1
        if self._restarts > MAX_RESTARTS:
            self._failed = True
            return "the version is marked failed"
        return "it is restarted for the next request"

    def interrupt(self) -> None:
        """Kill the worker now, in the middle of a run if one is going (the server is stopping
        past its grace: nobody waits for the answer). Safe from any thread: no lock, since a
        run holds it; the run then answers ModelNotReady and close() reaps the worker."""
        self._interrupted = True
        self._kill()

    def close(self) -> None:
        with self._lock:
            self._stop()


def _private_tmp() -> Path:
    """A directory only the model's user may write: its TMPDIR, removed after the worker."""
    tmp = Path(tempfile.mkdtemp(prefix="edgefleet-model-"))
    if os.getuid() == 0:
        os.chown(tmp, *unprivileged_ids())
    return tmp


def _how(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"
