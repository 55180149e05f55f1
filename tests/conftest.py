"""Shared fixtures: a real model repository, a real EdgeServer on 127.0.0.1:0, real channels.

The default repository is built once by `make models` (the pretrained EfficientNet-Lite0).
Each test gets its own copy, so tests that add versions or corrupt files touch nothing shared.
Helpers live in testkit/; this file holds fixtures only.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from server.app import EdgeServer
from testkit.certificates import Certificates, issue_certificates
from testkit.edge import running_server
from testkit.media import photo
from testkit.repositories import BUILT_MODELS, ONNX_MODEL, built_models_missing, copy_model

# Once the session has ended, the interpreter must exit within this long.
EXIT_GRACE_S = 120


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A thread left blocked by a failed test (a server never stopped, a call without a
    deadline) would keep the interpreter from exiting, and CI would wait out its whole limit
    with the result already printed. After EXIT_GRACE_S, print every thread's stack (what hung)
    and exit with the session's status."""

    def exit_now() -> None:
        print(f"\npytest: the process did not exit {EXIT_GRACE_S}s after the session ended;"
              " every thread's stack:", file=sys.stderr, flush=True)  # fmt: skip
        faulthandler.dump_traceback(all_threads=True)
        os._exit(int(exitstatus))

    timer = threading.Timer(EXIT_GRACE_S, exit_now)
    timer.daemon = True
    timer.start()


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A private CA, a server cert for 127.0.0.1/localhost, a client cert, and a rogue one."""
    return issue_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def built_models() -> Path:
    missing = built_models_missing()
    if missing:
        pytest.fail(missing)
    return BUILT_MODELS


@pytest.fixture
def repository(tmp_path: Path, built_models: Path) -> Path:
    """A fresh repository holding only the ONNX EfficientNet-Lite0 (version 1)."""
    repo = tmp_path / "repo"
    copy_model(built_models, ONNX_MODEL, repo)
    return repo


@pytest.fixture
async def edge_server(repository: Path) -> AsyncIterator[EdgeServer]:
    async with running_server(repository) as server:
        yield server


@pytest.fixture
async def channel(edge_server: EdgeServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge_server.port}") as ch:
        yield ch


@pytest.fixture
def preprocessed() -> Callable[[str], np.ndarray]:
    """The default model's input for a named photo, exactly as the server prepares it."""
    from server.manifest import read_manifest
    from server.vision.preprocess import to_model_input

    spec = read_manifest(BUILT_MODELS / ONNX_MODEL / "1").preprocess
    assert spec is not None

    def prepare(name: str) -> np.ndarray:
        return to_model_input(photo(name), "rgb", spec)

    return prepare
