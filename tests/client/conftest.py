"""Client fixtures: test certificates, a video made from photos, the cameras in every language.
Helpers live in testkit/; this file holds fixtures only."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.camera_examples import BuiltClients, build_camera_examples
from testkit.media import write_scenes_video


@pytest.fixture(scope="session")
def test_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MJPG .avi written with OpenCV (the client's video library) from skimage photos."""
    return write_scenes_video(tmp_path_factory.mktemp("video") / "scenes.avi")


@pytest.fixture(scope="session")
def built_clients() -> BuiltClients:
    """`make stubs`' script, once per session (see build_camera_examples)."""
    return build_camera_examples()
