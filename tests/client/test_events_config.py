"""The per-camera TOML file of `edgefleet stream --config`: what a good one becomes (the stream
settings, analytics and sinks of each camera, and the StreamOpen the server gets), and bad ones
refused with the file, the camera and the field named (exit 2 from the CLI)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from client.cameras import ConfigError, MqttTarget, WebhookTarget, load_cameras
from client.events import Anchor
from client.runner import stream_config
from client.settings import ClientSettings
from client.sources.pattern import TestPatternSource
from client.stream import analytics_to_pb
from testkit.repositories import ROOT

GOOD = """
server = "127.0.0.1:9"
model = "faces"

[mqtt]
url = "mqtt://127.0.0.1:1883"

[cameras.door]
source = "rtsp://10.0.0.5/stream"
score_threshold = 0.6
max_detections = 20
classes = [0]
roi = [0, 0, 640, 480]

[cameras.door.analytics]
anchor = "center"
min_hits = 2
lost_seconds = 0.5
class_thresholds = { face = 0.8 }
zones = { hall = [[250, 0], [400, 0], [400, 480], [250, 480]] }
lines = { entrance = [[450, 480], [450, 0]] }
masks = [[[0, 0], [50, 0], [50, 50]]]

[cameras.door.webhook]
url = "http://127.0.0.1:8080/hook"
secret_env = "DOOR_HOOK_SECRET"

[cameras.yard]
source = "pattern"
model = "efficientnet_lite0"
mqtt = { url = "mqtt://broker:1884", topic = "site1/{camera}" }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cameras.toml"
    path.write_text(text)
    return path


def test_a_good_file_gives_each_camera_its_settings_analytics_and_sinks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOOR_HOOK_SECRET", "s3cret")
    base = ClientSettings(model="", server="127.0.0.1:8001")
    door, yard = load_cameras(write(tmp_path, GOOD), base, None)

    assert (door.name, door.source) == ("door", "rtsp://10.0.0.5/stream")
    assert door.settings.model == "faces"
    assert door.settings.server == "127.0.0.1:9"
    assert (door.settings.score_threshold, door.settings.max_detections) == (0.6, 20)
    assert door.settings.classes == (0,) and door.settings.roi == (0, 0, 640, 480)
    assert door.sinks == (
        MqttTarget("mqtt://127.0.0.1:1883", "edgefleet/door/events"),
        WebhookTarget("http://127.0.0.1:8080/hook", b"s3cret"),
    )
    assert yard.settings.model == "efficientnet_lite0" and yard.analytics is None
    assert yard.sinks == (MqttTarget("mqtt://broker:1884", "site1/yard"),)

    # What the server is sent at stream open.
    config = stream_config(base, TestPatternSource(), 0, door)
    assert config.model_name == "faces" and config.score_threshold == 0.6
    assert config.analytics is not None and config.analytics.anchor is Anchor.CENTER
    wire = analytics_to_pb(config.analytics)
    assert [(z.name, [(p.x, p.y) for p in z.points]) for z in wire.zones] == [
        ("hall", [(250, 0), (400, 0), (400, 480), (250, 480)])
    ]
    assert [(line.name, len(line.points)) for line in wire.lines] == [("entrance", 2)]
    assert len(wire.masks) == 1 and wire.class_score_thresholds["face"] == pytest.approx(0.8)
    assert (wire.min_hits, round(wire.lost_seconds, 3)) == (2, 0.5)


BAD = [
    (
        "[cameras.door]\nsource = 'x'\nmodel = 'm'\n"
        "[cameras.door.analytics]\nzones = { hall = [[0, 0], [1, 1]] }\n",
        "cameras.door.analytics.zones: hall: a polygon needs 3 to 256 points, got 2",
    ),
    (
        "[cameras.door]\nsource = 'x'\nmodel = 'm'\n"
        "[cameras.door.analytics]\nlines = { entrance = [[0, 0]] }\n",
        "cameras.door.analytics.lines: entrance: a line needs exactly 2 distinct points",
    ),
    (
        "[cameras.door]\nsource = 'x'\nmodel = 'm'\nscore_threshold = 1.5\n",
        "cameras.door.score_threshold: Input should be less than or equal to 1",
    ),
    (
        "[cameras.door]\nsource = 'x'\nmodel = 'm'\nroi = [10, 10, 5, 20]\n",
        "cameras.door.roi: expected [x_min, y_min, x_max, y_max] with 0 <= min < max",
    ),
    (
        "[cameras.door]\nsource = 'x'\nmodel = 'm'\nsorce = 'typo'\n",
        "cameras.door.sorce: Extra inputs are not permitted",
    ),
    (
        "[cameras.door]\nsource = 'x'\nmodel = 'm'\nmqtt = { url = 'http://broker' }\n",
        "cameras.door.mqtt.url: expected mqtt://host[:port], got 'http://broker'",
    ),
    (
        "[cameras.door]\nsource = 'x'\nmodel = 'm'\n"
        "webhook = { url = 'http://h/hook', secret_env = 'NOT_SET_ANYWHERE_42' }\n",
        "cameras.door.webhook.secret_env: environment variable NOT_SET_ANYWHERE_42 is not set",
    ),
    (
        "[cameras.door]\nsource = 'x'\n",
        "cameras.door.model: no model (give one per camera, at the top of the file, or with "
        "--model)",
    ),
    (
        "[cameras.'a/b']\nsource = 'x'\nmodel = 'm'\n",
        "cameras: camera name 'a/b': letters, digits",
    ),
    ("model = 'm'\n", "cameras: Field required"),
    ("[cameras.door\nsource = 'x'\n", "not valid TOML"),
    (
        "[cameras.door]\nsource = 'x'\nmodel = 'm'\n[cameras.door.analytics]\n"
        "normalized = true\nzones = { hall = [[0, 0], [1, 0], [640, 480]] }\n",
        "cameras.door.analytics: normalized = true: every point must be a fraction 0..1",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_a_bad_file_names_the_file_camera_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_cameras(path, ClientSettings(model=""), None)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read"):
        load_cameras(tmp_path / "missing.toml", ClientSettings(model=""), None)


@pytest.mark.system  # runs the CLI as a child process
async def test_the_cli_exits_2_naming_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, BAD[0][0])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgefleet.cli", "stream", "--config", str(path),
        cwd=ROOT, env={**os.environ, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 2
    assert f"{path}: cameras.door.analytics.zones: hall: a polygon needs 3" in stderr.decode()
    # A source and --config together is a mistake too.
    both = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgefleet.cli", "stream", "pattern", "--config", str(path),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.wait_for(both.communicate(), 120)
    assert both.returncode == 2
