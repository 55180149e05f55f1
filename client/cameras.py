"""Many cameras from one TOML file (`edgefleet stream --config cameras.toml`), and the one
`Camera` plan every stream is run from (the command's flags build the same plans).

The file is read with `tomllib` and validated with pydantic; a mistake is a `ConfigError` that
names the file, the camera and the field (`cameras.toml: cameras.door.analytics.zones.hall:
a zone needs at least 3 points, got 2`). docs/cli.md documents the format.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from client.events import CLIP_EVENT_KINDS, AnalyticsSettings, Anchor, EventKind
from client.settings import ClientSettings
from client.sinks import DEFAULT_QUEUE, DEFAULT_TOPIC, MqttSink, WebhookSink

# A camera's name goes into MQTT topics and file names: no wildcards, no slashes.
CAMERA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
PointXY = tuple[float, float]


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class MqttTarget:
    url: str
    topic: str
    queue: int = DEFAULT_QUEUE

    def build(self) -> MqttSink:
        return MqttSink(self.url, self.topic, queue_size=self.queue)


@dataclass(frozen=True)
class WebhookTarget:
    url: str
    secret: bytes | None = None
    queue: int = DEFAULT_QUEUE

    def build(self) -> WebhookSink:
        return WebhookSink(self.url, secret=self.secret, queue_size=self.queue)


SinkTarget = MqttTarget | WebhookTarget


@dataclass(frozen=True)
class Camera:
    """One stream to run: its source, its own settings (model, result options), analytics and
    event sinks."""

    name: str
    source: str
    settings: ClientSettings
    analytics: AnalyticsSettings | None = None
    sinks: tuple[SinkTarget, ...] = ()
    # The stream's name on the server (its logs, metrics and events); empty: index:source.
    stream_id: str = ""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AnalyticsSection(_Strict):
    # name -> points; a zone is a polygon (3 to 256 points), a line exactly start and end.
    zones: dict[str, list[PointXY]] = {}
    lines: dict[str, list[PointXY]] = {}
    masks: list[list[PointXY]] = []
    # Class id ("0") or label ("face") -> least score.
    class_thresholds: dict[str, Unit] = {}
    anchor: Anchor = Anchor.BOTTOM_CENTER
    normalized: bool = False
    high_score: Unit = 0.0
    low_score: Unit = 0.0
    match_iou: Unit = 0.0
    min_hits: int = Field(default=0, ge=0)
    lost_seconds: float = Field(default=0.0, ge=0.0)

    @field_validator("zones", "masks")
    @classmethod
    def _polygons(cls, polygons: Any) -> Any:
        items = polygons.items() if isinstance(polygons, dict) else enumerate(polygons)
        for name, points in items:
            if not 3 <= len(points) <= 256:
                raise ValueError(f"{name}: a polygon needs 3 to 256 points, got {len(points)}")
        return polygons

    @field_validator("lines")
    @classmethod
    def _lines(cls, lines: dict[str, list[PointXY]]) -> dict[str, list[PointXY]]:
        for name, points in lines.items():
            if len(points) != 2 or points[0] == points[1]:
                raise ValueError(f"{name}: a line needs exactly 2 distinct points [start, end]")
        return lines

    @model_validator(mode="after")
    def _fractions_when_normalized(self) -> AnalyticsSection:
        if self.normalized:
            shapes = [*self.zones.values(), *self.lines.values(), *self.masks]
            if any(not (0 <= v <= 1) for points in shapes for point in points for v in point):
                raise ValueError("normalized = true: every point must be a fraction 0..1")
        return self

    def settings(self) -> AnalyticsSettings:
        return AnalyticsSettings(
            zones=tuple((name, tuple(points)) for name, points in self.zones.items()),
            lines=tuple((name, (points[0], points[1])) for name, points in self.lines.items()),
            masks=tuple(tuple(points) for points in self.masks),
            class_thresholds=tuple(self.class_thresholds.items()),
            anchor=self.anchor,
            normalized=self.normalized,
            high_score=self.high_score,
            low_score=self.low_score,
            match_iou=self.match_iou,
            min_hits=self.min_hits,
            lost_seconds=self.lost_seconds,
        )


class MqttSection(_Strict):
    url: str
    # `{camera}` is replaced by the camera's name.
    topic: str = DEFAULT_TOPIC
    queue: int = Field(default=DEFAULT_QUEUE, ge=1, le=1_000_000)

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, url: str) -> str:
        if not re.match(r"^(mqtt|tcp)://[^/\s]+$", url):
            raise ValueError(f"expected mqtt://host[:port], got {url!r}")
        return url

    @field_validator("topic")
    @classmethod
    def _topic(cls, topic: str) -> str:
        if not topic or "+" in topic or "#" in topic:
            raise ValueError("a topic to publish to: not empty, no + or # wildcards")
        return topic


class WebhookSection(_Strict):
    url: str
    # The name of the environment variable holding the HMAC secret (never the secret itself).
    secret_env: str | None = None
    queue: int = Field(default=DEFAULT_QUEUE, ge=1, le=1_000_000)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
        return url


class CameraSection(_Strict):
    source: str = Field(min_length=1)
    model: str | None = None
    model_version: str | None = None
    score_threshold: Unit | None = None
    max_detections: int | None = Field(default=None, ge=0, le=2**32 - 1)
    classes: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] | None = None
    roi: tuple[float, float, float, float] | None = None
    top_k: int | None = Field(default=None, ge=0)
    # Event clips (client/clips.py); unset: the command's --clips-dir and --clip-* flags.
    clips_dir: Path | None = None
    clip_before_s: float | None = Field(default=None, ge=0.0, le=60.0)
    clip_after_s: float | None = Field(default=None, ge=0.0, le=600.0)
    clip_events: list[EventKind] | None = None
    clip_max_mb: int | None = Field(default=None, ge=1, le=65536)
    analytics: AnalyticsSection | None = None
    mqtt: MqttSection | None = None
    webhook: WebhookSection | None = None

    @field_validator("clip_events")
    @classmethod
    def _clip_kinds(cls, kinds: list[EventKind] | None) -> list[EventKind] | None:
        for kind in kinds or []:
            if kind not in CLIP_EVENT_KINDS:
                allowed = ", ".join(sorted(CLIP_EVENT_KINDS))
                raise ValueError(f"{kind.value!r} starts no clip; one of {allowed}")
        return kinds

    @field_validator("roi")
    @classmethod
    def _roi(cls, roi: tuple[float, float, float, float] | None) -> Any:
        if roi is not None:
            x_min, y_min, x_max, y_max = roi
            if min(roi) < 0 or x_max <= x_min or y_max <= y_min:
                raise ValueError("expected [x_min, y_min, x_max, y_max] with 0 <= min < max")
        return roi


class CamerasFile(_Strict):
    # Defaults for every camera; a camera's own value wins, and command-line flags win over
    # the file's server.
    server: str | None = None
    model: str | None = None
    mqtt: MqttSection | None = None
    webhook: WebhookSection | None = None
    cameras: dict[str, CameraSection] = Field(min_length=1)

    @field_validator("cameras")
    @classmethod
    def _names(cls, cameras: dict[str, CameraSection]) -> dict[str, CameraSection]:
        for name in cameras:
            if not CAMERA_NAME.match(name):
                raise ValueError(
                    f"camera name {name!r}: letters, digits, '_', '.' and '-' only (it goes "
                    "into MQTT topics)"
                )
        return cameras


def _where(location: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in location) or "(top level)"


def _message(error: Mapping[str, Any]) -> str:
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _read(path: Path) -> CamerasFile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    try:
        return CamerasFile.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        raise ConfigError(f"{path}: {_where(first['loc'])}: {_message(first)}{more}") from None


def _secret(path: Path, where: str, section: WebhookSection) -> bytes | None:
    if section.secret_env is None:
        return None
    value = os.environ.get(section.secret_env)
    if not value:
        raise ConfigError(
            f"{path}: {where}.secret_env: environment variable {section.secret_env} is not set"
        )
    return value.encode()


def load_cameras(path: Path, base: ClientSettings | None, model: str | None) -> list[Camera]:
    """The file's cameras over `base` (the run's settings from flags and environment; None when
    they lack a model, which the file must then give). `model` is the `--model` flag."""
    config = _read(path)
    cameras = []
    for name, section in config.cameras.items():
        where = f"cameras.{name}"
        chosen = section.model or model or config.model or (base.model if base else None)
        if not chosen:
            raise ConfigError(
                f"{path}: {where}.model: no model (give one per camera, at the top of the file, "
                "or with --model)"
            )
        overrides: dict[str, Any] = {"model": chosen}
        if config.server is not None:
            overrides["server"] = config.server
        for field in (
            "model_version", "score_threshold", "max_detections", "roi", "top_k", "clips_dir",
            "clip_before_s", "clip_after_s", "clip_max_mb",
        ):  # fmt: skip
            if (value := getattr(section, field)) is not None:
                overrides[field] = value
        if section.classes is not None:
            overrides["classes"] = tuple(section.classes)
        if section.clip_events is not None:
            overrides["clip_events"] = tuple(section.clip_events)
        try:
            settings = (
                base.model_copy(update=overrides)
                if base is not None
                else ClientSettings(**overrides)
            )
        except ValidationError as error:
            first = error.errors()[0]
            raise ConfigError(
                f"{path}: {where}.{_where(first['loc'])}: {_message(first)}"
            ) from None
        sinks: list[SinkTarget] = []
        mqtt = section.mqtt or config.mqtt
        if mqtt is not None:
            sinks.append(MqttTarget(mqtt.url, mqtt.topic.replace("{camera}", name), mqtt.queue))
        webhook = section.webhook or config.webhook
        if webhook is not None:
            hook_where = f"{where}.webhook" if section.webhook else "webhook"
            sinks.append(
                WebhookTarget(webhook.url, _secret(path, hook_where, webhook), webhook.queue)
            )
        cameras.append(
            Camera(
                name=name,
                source=section.source,
                settings=settings,
                analytics=section.analytics.settings() if section.analytics else None,
                sinks=tuple(sinks),
                stream_id=name,
            )
        )
    return cameras
