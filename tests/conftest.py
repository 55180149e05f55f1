"""Shared fixtures: a real model repository, a real EdgeServer on 127.0.0.1:0, real channels.

The default repository is built once by `make models` (the pretrained EfficientNet-Lite0).
Each test gets its own copy, so tests that add versions or corrupt files touch nothing shared.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from skimage import data as skimage_data

from server.app import EdgeServer
from server.settings import ServerSettings

ROOT = Path(__file__).resolve().parent.parent
BUILT_MODELS = ROOT / "models"
ONNX_MODEL = "efficientnet_lite0"
TORCHSCRIPT_MODEL = "efficientnet_lite0_torchscript"

# ImageNet classes a correct classifier must give these skimage photos (top-1).
EXPECTED_TOP1 = {
    "chelsea": {"Egyptian cat", "tabby, tabby cat", "tiger cat"},
    "coffee": {"espresso", "cup", "coffee mug"},
}


@pytest.fixture(scope="session")
def built_models() -> Path:
    if not (BUILT_MODELS / ONNX_MODEL / "1" / "manifest.json").is_file():
        pytest.fail("the default models are missing: run `make models` (make test does it)")
    return BUILT_MODELS


def copy_model(source_repo: Path, name: str, target_repo: Path, version: str = "1") -> Path:
    """Copy one model version; big files are hard-linked (never modified in place by tests)."""
    target = target_repo / name / version
    shutil.copytree(source_repo / name / "1", target, copy_function=_link_or_copy)
    if version != "1":
        manifest = target / "manifest.json"
        text = manifest.read_text().replace('"version": "1"', f'"version": "{version}"')
        manifest.write_text(text)
    return target


def _link_or_copy(source: str, target: str) -> None:
    if source.endswith(".onnx") or source.endswith(".pt"):
        try:
            Path(target).hardlink_to(source)
            return
        except OSError:
            pass
    shutil.copy2(source, target)


@pytest.fixture
def repository(tmp_path: Path, built_models: Path) -> Path:
    """A fresh repository holding only the ONNX EfficientNet-Lite0 (version 1)."""
    repo = tmp_path / "repo"
    copy_model(built_models, ONNX_MODEL, repo)
    return repo


def server_settings(repository: Path, **overrides: object) -> ServerSettings:
    values: dict[str, object] = {
        "repository": repository,
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": -1,
        "http_port": -1,
        "shutdown_grace_s": 2.0,
    }
    values.update(overrides)
    return ServerSettings(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running_server(repository: Path, **overrides: object) -> AsyncIterator[EdgeServer]:
    """The real server on `repository` (settings as `server_settings`), stopped afterwards."""
    server = EdgeServer(server_settings(repository, **overrides))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace_s=1.0)


@pytest.fixture
async def edge_server(repository: Path) -> AsyncIterator[EdgeServer]:
    async with running_server(repository) as server:
        yield server


@pytest.fixture
async def channel(edge_server: EdgeServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge_server.port}") as ch:
        yield ch


def photo(name: str) -> np.ndarray:
    """An RGB uint8 photo from scikit-image's bundled data."""
    image: np.ndarray = getattr(skimage_data, name)()
    return image


def jpeg_bytes(image_rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    assert ok
    return encoded.tobytes()


def png_bytes(image_rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


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
