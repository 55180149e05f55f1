"""TorchScript models are code: hostile ones, built here with torch.jit.script and served from a
repository or installed through a signed bundle, run in a confined worker (uid nobody, Landlock,
no sockets). No file outside the version directory is created, no byte of one comes back, the
device's keys stay unreadable, and the other models keep serving."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from fleet.bundle import build_bundle, install_bundle
from fleet.keys import TrustedKeys, generate_keypair, load_private_key
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from server.app import EdgeServer
from server.errors import ModelLoadError
from server.manifest import Batching, ModelManifest, TensorSpec, hash_directory, write_manifest
from server.models.backends.archive_scan import check_torchscript_archive
from server.models.backends.torchscript import TorchScriptBackend
from testkit.edge import running_server, server_settings
from testkit.kserve import infer_request, output_array
from testkit.repositories import ONNX_MODEL, TORCHSCRIPT_MODEL, copy_model

# Starts confined worker processes (and a fleet install): a system test.
pytestmark = pytest.mark.system

WORKER = "server.models.backends.torchscript_worker"
# 64 bytes: what the reading model maps.
SECRET = b"-----BEGIN PRIVATE KEY----- fake device key ".ljust(64, b"k")
FEATURES = 4


class WriteOnLoad(torch.nn.Module):
    """Creates `target` (and fills it) while torch.jit.load unpickles it."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.written = 0

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.target = state[0]
        self.training = state[1]
        # Kept in an attribute: TorchScript drops an unused result, with its write.
        written = torch.from_file(self.target, shared=True, size=16, dtype=torch.uint8)
        self.written = int(written.fill_(65).sum().item())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.written * 0


class WriteInForward(torch.nn.Module):
    """Creates `target` on the first real input (the server's warm-up sends zeros)."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() > 0):
            written = torch.from_file(self.target, shared=True, size=16, dtype=torch.uint8)
            return x + written.fill_(66)[:4].to(torch.float32) * 0
        return x


class ReadInForward(torch.nn.Module):
    """Returns the bytes of `paths[k - 1]` for an input whose first value is k."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__()
        self.paths = paths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = int(x[0, 0].item())
        if index <= 0:
            return torch.zeros(1, 64)
        data = torch.from_file(self.paths[index - 1], shared=False, size=64, dtype=torch.uint8)
        return data.to(torch.float32).reshape(1, 64)


class Slow(torch.nn.Module):
    """Runs `x[0, 0]` matrix products: long enough to be killed in the middle of one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ones(256, 256)
        for _ in range(int(x[0, 0].item())):
            y = torch.mm(y, y) / 256.0
        return y[:1, :4] + x


class LoopsForever(torch.nn.Module):
    """Never returns for an input whose first value is positive (the warm-up's zeros pass)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        while bool(x[0, 0] > 0):
            y = y + 1.0
        return y


class LoopsOnLoad(torch.nn.Module):
    """Never returns from torch.jit.load: its scripted __setstate__ loops."""

    def __init__(self) -> None:
        super().__init__()
        self.spun = 0.0

    @torch.jit.export
    def __getstate__(self) -> tuple[float, bool]:
        return (self.spun, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[float, bool]) -> None:
        self.training = state[1]
        spun = torch.zeros(1)
        while bool(spun.sum() >= 0):
            spun = spun + 1.0
        self.spun = float(spun.item())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.spun


def _write_version(version_dir: Path, name: str, module: torch.nn.Module, out: int) -> Path:
    version_dir.mkdir(parents=True)
    torch.jit.save(torch.jit.script(module), str(version_dir / "model.pt"))
    _manifest(version_dir, name, out)
    return version_dir


def _manifest(version_dir: Path, name: str, out: int) -> None:
    write_manifest(
        version_dir,
        ModelManifest(
            name=name,
            version=version_dir.name,
            format="torchscript",
            model_file="model.pt",
            inputs=[TensorSpec(name="x", dtype="float32", shape=[1, FEATURES])],
            outputs=[TensorSpec(name="y", dtype="float32", shape=[1, out])],
            batching=Batching(max_batch_size=0),
            files=hash_directory(version_dir),
        ),
    )


def _pickle_naming_os_system(version_dir: Path, name: str) -> Path:
    """A real scripted archive whose constants.pkl is replaced by a pickle calling os.system."""

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch /tmp/edgefleet-pwned",))

    version_dir.mkdir(parents=True)
    source = io.BytesIO()
    torch.jit.save(torch.jit.script(WriteInForward("/nonexistent")), source)
    source.seek(0)
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(version_dir / "model.pt", "w") as z:
        for info in original.infolist():
            data = original.read(info)
            if info.filename.endswith("constants.pkl"):
                data = pickle.dumps(Payload(), protocol=2)
            z.writestr(info, data)
    _manifest(version_dir, name, FEATURES)
    return version_dir


@pytest.fixture
def outside(certificates) -> Iterator[dict[str, Path]]:
    """Files outside every version directory: a device key (0600), the server's TLS key
    (0600), a world-readable file in a world-readable folder (only Landlock keeps the model
    from it: pytest's own temporary folders are closed to `nobody` anyway), and the paths the
    hostile models try to create."""
    folder = Path(tempfile.mkdtemp(prefix="edgefleet-outside-"))
    folder.chmod(0o755)
    key = folder / "device.key"
    key.write_bytes(SECRET)
    key.chmod(0o600)
    world = folder / "world.txt"
    world.write_bytes(SECRET)
    world.chmod(0o644)
    certificates.server_key.chmod(0o600)
    yield {
        "device_key": key,
        "tls_key": certificates.server_key,
        "world": world,
        "created_on_load": folder / "created_on_load",
        "created_in_forward": folder / "created_in_forward",
        "created_by_bundle": folder / "created_by_bundle",
    }
    shutil.rmtree(folder)


_PROBE = """
import json, os, socket, sys
from pathlib import Path
from server.models.backends.confine import confine, drop_privileges
world, tmp, mode = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "confined":
    print(confine([Path(sys.prefix), Path(sys.base_prefix)], [Path(tmp)], require_landlock=True)
          .summary, file=sys.stderr)
else:
    drop_privileges()
def attempt(action):
    try:
        action()
        return "allowed"
    except OSError as exc:
        return exc.strerror
print(json.dumps({
    "read_world": attempt(lambda: open(world, "rb").read()),
    "create_beside": attempt(lambda: open(world + ".new", "wb").close()),
    "write_tmp": attempt(lambda: open(os.path.join(tmp, "scratch"), "wb").close()),
    "tcp_socket": attempt(lambda: socket.socket().close()),
    "unix_socket": attempt(lambda: socket.socket(socket.AF_UNIX).close()),
}))
"""


def test_landlock_not_the_uid_keeps_world_readable_files_and_sockets_away(
    outside: dict[str, Path],
):
    """The confinement alone, on a plain Python process: the uid drop without Landlock reads
    the world-readable file and opens sockets; confined, it may only write its own folder."""
    tmp = Path(tempfile.mkdtemp(prefix="edgefleet-probe-"))
    os.chown(tmp, 65534, 65534)
    try:
        seen = {}
        for mode in ("uid_only", "confined"):
            done = subprocess.run(
                [sys.executable, "-c", _PROBE, str(outside["world"]), str(tmp), mode],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            seen[mode] = json.loads(done.stdout)
    finally:
        shutil.rmtree(tmp)
    assert seen["uid_only"]["read_world"] == "allowed"
    assert seen["uid_only"]["tcp_socket"] == "allowed"
    assert seen["confined"] == {
        "read_world": "Permission denied",
        "create_beside": "Permission denied",
        "write_tmp": "allowed",
        "tcp_socket": "Permission denied",
        "unix_socket": "Permission denied",
    }


_NO_LANDLOCK_PROBE = """
import json, socket, sys
from server.models.backends import confine as sandbox

sandbox.landlock_abi = lambda: 0  # a kernel without Landlock
try:
    sandbox.confine([], [], require_landlock=sys.argv[1] == "required")
except sandbox.ConfinementError as exc:
    print(json.dumps({"refused": str(exc)}))
    raise SystemExit(0)
try:
    socket.socket()
    sockets = "allowed"
except OSError as exc:
    sockets = exc.strerror
print(json.dumps({"uid": __import__("os").getuid(), "sockets": sockets}))
"""


def test_without_landlock_models_are_refused_unless_unconfined_is_allowed():
    seen = {}
    for mode in ("required", "allowed"):
        done = subprocess.run(
            [sys.executable, "-c", _NO_LANDLOCK_PROBE, mode],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        seen[mode] = json.loads(done.stdout)
    assert "EDGEFLEET_SANDBOX_ALLOW_UNCONFINED" in seen["required"]["refused"]
    assert seen["allowed"]["uid"] != 0
    assert seen["allowed"]["sockets"] == "Permission denied"


def _hostile_repository(repository: Path, outside: dict[str, Path], built_models: Path) -> None:
    copy_model(built_models, TORCHSCRIPT_MODEL, repository)
    _write_version(repository / "write_on_load" / "1", "write_on_load",
                   WriteOnLoad(str(outside["created_on_load"])), FEATURES)  # fmt: skip
    _write_version(repository / "write_in_forward" / "1", "write_in_forward",
                   WriteInForward(str(outside["created_in_forward"])), FEATURES)  # fmt: skip
    secrets = [str(outside[key]) for key in ("device_key", "tls_key", "world")]
    _write_version(repository / "read_file" / "1", "read_file", ReadInForward(secrets), 64)
    _write_version(repository / "slow" / "1", "slow", Slow(), FEATURES)
    _pickle_naming_os_system(repository / "pickle_system" / "1", "pickle_system")


def _private_dirs() -> set[Path]:
    """The workers' temporary directories: removed with each worker, loaded or refused."""
    return set(Path(tempfile.gettempdir()).glob("edgefleet-model-*"))


def _workers() -> list[psutil.Process]:
    me = psutil.Process()
    return [child for child in me.children() if WORKER in " ".join(child.cmdline())]


def test_the_hostile_models_are_hostile_in_process(tmp_path: Path):
    """Without the worker (the old in-process way) the same models do what they claim: the
    confined tests below would otherwise prove nothing."""
    target = tmp_path / "created"
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    loaded = tmp_path / "created_on_load"
    modules = (WriteInForward(str(target)), ReadInForward([str(secret)]), WriteOnLoad(str(loaded)))
    for module in modules:
        path = tmp_path / f"{type(module).__name__}.pt"
        torch.jit.save(torch.jit.script(module), str(path))
        backend = TorchScriptBackend(
            path, model="m", input_names=["x"], output_names=["y"], threads=1
        )
        out = backend.run({"x": np.ones((1, FEATURES), np.float32)}, ["y"])["y"]
        backend.close()
        if isinstance(module, ReadInForward):
            assert bytes(out.astype(np.uint8).ravel()[: len(SECRET)]) == SECRET
    assert target.read_bytes() == b"B" * 16
    assert loaded.read_bytes() == b"A" * 16


def test_pickle_naming_os_system_is_refused_with_the_reason(tmp_path: Path):
    version_dir = _pickle_naming_os_system(tmp_path / "m" / "1", "m")
    with pytest.raises(ModelLoadError, match=r"names posix\.system.*TorchScript never needs"):
        check_torchscript_archive(version_dir / "model.pt", "m/1")


async def test_hostile_models_served_from_a_repository(
    repository: Path, built_models: Path, outside: dict[str, Path], preprocessed
):
    _hostile_repository(repository, outside, built_models)
    private_before = _private_dirs()
    server = EdgeServer(
        server_settings(
            repository,
            models=(ONNX_MODEL, TORCHSCRIPT_MODEL, "write_in_forward", "read_file", "slow"),
        )
    )
    await server.start()
    try:
        workers = _workers()
        assert len(workers) == 4
        assert all(worker.uids().real != 0 and worker.uids().effective != 0 for worker in workers)
        # Loading runs __setstate__: refused, nothing created.
        with pytest.raises(ModelLoadError, match="write_on_load.*Permission denied"):
            await server.core.load_model("write_on_load")
        with pytest.raises(ModelLoadError, match=r"names posix\.system"):
            await server.core.load_model("pickle_system")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            image = preprocessed("chelsea")
            before = output_array(await stub.ModelInfer(infer_request(TORCHSCRIPT_MODEL, image)))
            ones = np.ones((1, FEATURES), np.float32)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.ModelInfer(infer_request("write_in_forward", ones, input_name="x"))
            assert failed.value.code() is grpc.StatusCode.INTERNAL
            for index in (1, 2, 3):  # device key, TLS key, world-readable file
                request = infer_request("read_file", ones * index, input_name="x", output="y")
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await stub.ModelInfer(request)
                assert failed.value.code() is grpc.StatusCode.INTERNAL
                assert SECRET not in str(failed.value.details()).encode()
            # Killed in the middle of a request: that request is answered UNAVAILABLE with the
            # model named, the worker restarts, and every other model keeps serving.
            slow = [w for w in _workers() if w.cmdline()[-1] == "slow/1"]
            assert len(slow) == 1
            call = stub.ModelInfer(infer_request("slow", ones * 100000, input_name="x"))
            pending = asyncio.ensure_future(call)
            await asyncio.sleep(1.0)
            os.kill(slow[0].pid, signal.SIGKILL)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await pending
            assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "slow/1" in str(failed.value.details())
            assert "died" in str(failed.value.details())
            after = output_array(await stub.ModelInfer(infer_request(TORCHSCRIPT_MODEL, image)))
            np.testing.assert_array_equal(before, after)
            answer = await stub.ModelInfer(infer_request("slow", ones, input_name="x"))
            assert output_array(answer).shape == (1, FEATURES)
            onnx = output_array(await stub.ModelInfer(infer_request(ONNX_MODEL, image)))
            assert int(np.argmax(onnx)) == int(np.argmax(after))
        deaths = server.core.metrics.model_events.labels("slow", "1", "worker_died")._value.get()
        assert deaths == 1
    finally:
        await server.stop(grace_s=1.0)
    for created in ("created_on_load", "created_in_forward"):
        assert not outside[created].exists(), created
    assert sorted(p.name for p in outside["world"].parent.iterdir()) == ["device.key", "world.txt"]
    assert _workers() == []
    assert _private_dirs() == private_before


async def test_hostile_models_installed_through_a_signed_bundle(
    tmp_path: Path, repository: Path, outside: dict[str, Path]
):
    private, public = generate_keypair(tmp_path / "keys", "release")
    trusted = TrustedKeys.from_paths([public])
    build = tmp_path / "build"
    sources = {
        "write_on_load": _write_version(build / "a" / "1", "write_on_load",
                                        WriteOnLoad(str(outside["created_by_bundle"])), FEATURES),
        "read_file": _write_version(build / "b" / "1", "read_file",
                                    ReadInForward([str(outside["device_key"])]), 64),
        "pickle_system": _pickle_naming_os_system(build / "c" / "1", "pickle_system"),
    }  # fmt: skip
    private_before = _private_dirs()
    server = EdgeServer(server_settings(repository, models=(ONNX_MODEL,)))
    await server.start()
    try:
        for name, source in sources.items():
            bundle = build_bundle(source, name, "2", load_private_key(private), tmp_path / "out")
            # What the fleet agent does with a bundle: verify, install, load.
            install_bundle(bundle, trusted, repository)
        with pytest.raises(ModelLoadError, match="write_on_load.*Permission denied"):
            await server.core.load_model("write_on_load", "2")
        with pytest.raises(ModelLoadError, match=r"names posix\.system"):
            await server.core.load_model("pickle_system", "2")
        await server.core.load_model("read_file", "2")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            ones = np.ones((1, FEATURES), np.float32)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.ModelInfer(infer_request("read_file", ones, input_name="x", output="y"))
            assert failed.value.code() is grpc.StatusCode.INTERNAL
            assert SECRET not in str(failed.value.details()).encode()
            image = np.zeros((1, 3, 224, 224), np.float32)
            await stub.ModelInfer(infer_request(ONNX_MODEL, image))
    finally:
        await server.stop(grace_s=1.0)
    assert not outside["created_by_bundle"].exists()
    assert _workers() == []
    assert _private_dirs() == private_before


def test_model_check_runs_under_the_same_confinement(tmp_path: Path, outside: dict[str, Path]):
    from click.testing import CliRunner

    from edgefleet.cli import build_app

    hostile = WriteOnLoad(str(outside["created_on_load"]))
    version_dir = _write_version(tmp_path / "write_on_load" / "1", "write_on_load", hostile, 4)
    private_before = _private_dirs()
    result = CliRunner().invoke(build_app(), ["model", "check", str(version_dir)])
    assert result.exit_code == 1
    assert "FAIL" in result.output and "Permission denied" in result.output
    assert not outside["created_on_load"].exists()
    assert _private_dirs() == private_before


# The deadlines below, for a loaded 2-core machine: the run limit is short so the test is; the
# slack on it is generous; the load limit stays well above a worker's start (5 to 7 s here).
RUN_LIMIT_S = 5.0
SLACK_S = 30.0


def _one_worker(label: str) -> psutil.Process:
    found = [worker for worker in _workers() if worker.cmdline()[-1] == label]
    assert len(found) == 1, found
    return found[0]


async def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://127.0.0.1:{port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_a_run_past_the_limit_is_killed_and_answered_deadline_exceeded(
    repository: Path, monkeypatch: pytest.MonkeyPatch
):
    _write_version(repository / "loops" / "1", "loops", LoopsForever(), FEATURES)
    _write_version(repository / "slow" / "1", "slow", Slow(), FEATURES)
    monkeypatch.setenv("EDGEFLEET_SANDBOX_RUN_TIMEOUT_S", str(RUN_LIMIT_S))
    async with (
        running_server(repository, models=(ONNX_MODEL, "loops", "slow"), metrics_port=0) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        looping = _one_worker("loops/1")
        ones, zeros = np.ones((1, FEATURES), np.float32), np.zeros((1, FEATURES), np.float32)
        started = time.monotonic()
        # The client's own deadline is far away: the device's limit is what ends the run.
        call = stub.ModelInfer(infer_request("loops", ones, input_name="x"), timeout=120)
        pending = asyncio.ensure_future(call)
        # Meanwhile the other models serve, in-process and in their own worker.
        image = np.zeros((1, 3, 224, 224), np.float32)
        await stub.ModelInfer(infer_request(ONNX_MODEL, image))
        answer = output_array(await stub.ModelInfer(infer_request("slow", ones, input_name="x")))
        assert answer.shape == (1, FEATURES)
        assert not pending.done()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await pending
        elapsed = time.monotonic() - started
        assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        details = str(failed.value.details())
        assert "loops/1" in details and "5 s" in details and "restarted" in details
        assert RUN_LIMIT_S * 0.9 <= elapsed < RUN_LIMIT_S + SLACK_S
        assert not looping.is_running()  # killed and reaped, not left spinning
        # A restarted worker answers the model's next, ordinary input.
        answer = output_array(await stub.ModelInfer(infer_request("loops", zeros, input_name="x")))
        np.testing.assert_array_equal(answer, zeros)
        assert _one_worker("loops/1").pid != looping.pid
        samples = await _scrape(server.metrics_port)
    events = {
        event: samples.get(
            ("edgefleet_model_events_total",
             (("event", event), ("model", "loops"), ("version", "1"))), 0.0
        )
        for event in ("run_timeout", "worker_died")
    }  # fmt: skip
    assert events == {"run_timeout": 1.0, "worker_died": 0.0}
    assert _workers() == []


async def test_shutdown_kills_a_looping_run_instead_of_waiting_for_it(
    repository: Path, monkeypatch: pytest.MonkeyPatch
):
    """A run limit far beyond the test: only the stop's own kill can end the run in time. A
    model that loops while loading is refused at the load limit and leaves no worker."""
    _write_version(repository / "loops" / "1", "loops", LoopsForever(), FEATURES)
    _write_version(repository / "loops_on_load" / "1", "loops_on_load", LoopsOnLoad(), FEATURES)
    monkeypatch.setenv("EDGEFLEET_SANDBOX_RUN_TIMEOUT_S", "600")
    monkeypatch.setenv("EDGEFLEET_SANDBOX_LOAD_TIMEOUT_S", "45")
    server = EdgeServer(server_settings(repository, models=("loops",)))
    await server.start()
    stopped_in = None
    try:
        with pytest.raises(ModelLoadError, match=r"loops_on_load/1.*within 45 s.*killed"):
            await server.core.load_model("loops_on_load")
        assert [worker.cmdline()[-1] for worker in _workers()] == ["loops/1"]
        looping = _one_worker("loops/1")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            ones = np.ones((1, FEATURES), np.float32)
            pending = asyncio.ensure_future(
                stub.ModelInfer(infer_request("loops", ones, input_name="x"), timeout=120)
            )
            await asyncio.sleep(1.0)  # the run has reached the worker
            started = time.monotonic()
            # Bounded so that a regression fails here instead of hanging for 600 s.
            await asyncio.wait_for(server.stop(grace_s=1.0), timeout=SLACK_S)
            stopped_in = time.monotonic() - started
            with pytest.raises(grpc.aio.AioRpcError):
                await pending
    finally:
        if stopped_in is None:  # the stop did not end the run: end it, so the test can end
            for worker in _workers():
                worker.kill()
            await server.stop(grace_s=0)
    assert stopped_in is not None and stopped_in < SLACK_S
    assert not looping.is_running()
    assert _workers() == []


def _ends_within(process: psutil.Process, seconds: float) -> bool:
    """Gone, or dead and waiting for whoever reaps orphans here (a container's init may not)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


_SERVER_KILLED_MID_RUN = """
import sys
import numpy as np
from pathlib import Path
from server.models.backends.factory import load_backend
from server.models.registry import read_version_manifest
from server.models.runtime_plan import ManifestPlanner
from server.settings import SandboxSettings

version_dir = Path(sys.argv[1])
manifest = read_version_manifest(version_dir)
plan = ManifestPlanner().plan(version_dir, manifest)
backend = load_backend(version_dir, manifest, plan, SandboxSettings())
print(backend.pid, flush=True)
backend.run({"x": np.ones((1, 4), np.float32)}, ["y"])  # loops until this process is killed
"""


def test_a_worker_does_not_outlive_a_killed_server(tmp_path: Path):
    """A server killed (SIGKILL: no close, no run limit) while its model loops: the worker,
    which would otherwise spin on as an orphan, dies with it."""
    version_dir = _write_version(tmp_path / "loops" / "1", "loops", LoopsForever(), FEATURES)
    with subprocess.Popen(
        [sys.executable, "-c", _SERVER_KILLED_MID_RUN, str(version_dir)],
        stdout=subprocess.PIPE, text=True,
    ) as server:  # fmt: skip
        assert server.stdout is not None
        worker = psutil.Process(int(server.stdout.readline()))
        try:
            time.sleep(1.0)  # the run has reached the worker, which spins
            assert worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE
            server.kill()
            server.wait(60)
            assert _ends_within(worker, SLACK_S)
        finally:
            if worker.is_running():
                worker.kill()
            server.kill()
