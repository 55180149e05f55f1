"""Typed settings of a `stream` run, built once by the CLI: flags over `EDGEFLEET_CLIENT_*`
environment variables (their own prefix, so a client's TLS files never read the server's)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from client.events import (
    CLIP_EVENT_KINDS,
    DEFAULT_AFTER_S,
    DEFAULT_BEFORE_S,
    DEFAULT_MAX_BYTES,
    ClipSettings,
    EventKind,
)
from client.frames import DEFAULT_JPEG_QUALITY, Encoding


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_CLIENT_", frozen=True, extra="ignore")

    server: str = "127.0.0.1:8001"
    model: str
    model_version: str = ""
    # None: each source's own rate (a file's fps; live cameras pace themselves); 0: flat out.
    fps: float | None = Field(default=None, ge=0)
    encoding: Encoding = Encoding.JPEG
    jpeg_quality: int = Field(default=DEFAULT_JPEG_QUALITY, ge=1, le=100)
    # None: BLOCK for files and folders (every frame matters), DROP_OLDEST for live sources.
    drop_oldest: bool | None = None
    max_in_flight: int = Field(default=0, ge=0)
    # The server drops frames that waited longer than this as stale; 0: no limit.
    max_age_ms: int = Field(default=0, ge=0, le=2**32 - 1)
    top_k: int = Field(default=0, ge=0)
    # Result options sent at stream open (ResultOptions); 0 or empty: the model's own.
    score_threshold: float = Field(default=0.0, ge=0.0, le=1.0)
    max_detections: int = Field(default=0, ge=0, le=2**32 - 1)
    classes: tuple[Annotated[int, Field(ge=0, le=2**32 - 1)], ...] = ()
    # Region of interest: x_min, y_min, x_max, y_max in source-frame pixels; None: whole frame.
    roi: tuple[float, float, float, float] | None = None
    # A live camera that drops, or is down at start, is retried with backoff.
    reconnect: bool = True
    # An outage lasting this long gives the camera up: its stream fails, the other cameras go
    # on (None: retried forever).
    camera_retry_for_s: float | None = Field(default=None, gt=0)
    # Live streams send a frame only when the server grants a credit (client/stream.py): far
    # fewer bytes and less client CPU per answer, answers as fresh (docs/benchmarks.md, flow
    # credits). A server that grants none gets every frame as before.
    flow_credits: bool = True
    duration_s: float | None = Field(default=None, gt=0)
    loop: bool = False
    # Consecutive failed connection attempts before a stream gives up; 0 retries forever.
    retries: int = Field(default=8, ge=0)
    tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None
    token: SecretStr | None = None
    output_jsonl: Path | None = None
    # Annotated video of the answered frames (client/overlay.py).
    save_video: Path | None = None
    # Event clips (client/clips.py): a video per group of analytics events, into this folder.
    clips_dir: Path | None = None
    clip_before_s: float = Field(default=DEFAULT_BEFORE_S, ge=0.0, le=60.0)
    clip_after_s: float = Field(default=DEFAULT_AFTER_S, ge=0.0, le=600.0)
    # Only these event kinds start a clip; empty: every analytics event.
    clip_events: tuple[EventKind, ...] = ()
    # Memory for one camera's ring and unwritten clip frames, in MiB.
    clip_max_mb: int = Field(default=DEFAULT_MAX_BYTES // 2**20, ge=1, le=65536)

    @field_validator("clip_events")
    @classmethod
    def _analytics_kinds_only(cls, kinds: tuple[EventKind, ...]) -> tuple[EventKind, ...]:
        for kind in kinds:
            if kind not in CLIP_EVENT_KINDS:
                allowed = ", ".join(sorted(CLIP_EVENT_KINDS))
                raise ValueError(f"{kind.value!r} starts no clip; one of {allowed}")
        return kinds

    def clip_settings(self) -> ClipSettings | None:
        if self.clips_dir is None:
            return None
        return ClipSettings(
            directory=self.clips_dir,
            before_s=self.clip_before_s,
            after_s=self.clip_after_s,
            events=frozenset(self.clip_events),
            max_bytes=self.clip_max_mb * 2**20,
        )

    @field_validator("roi", mode="before")
    @classmethod
    def _roi_has_four_numbers(cls, roi: object) -> object:
        if isinstance(roi, list | tuple) and len(roi) != 4:
            raise ValueError(f"expected 4 numbers x_min,y_min,x_max,y_max, got {len(roi)}")
        return roi

    @field_validator("roi")
    @classmethod
    def _roi_is_a_rectangle(
        cls, roi: tuple[float, float, float, float] | None
    ) -> tuple[float, float, float, float] | None:
        if roi is not None:
            x_min, y_min, x_max, y_max = roi
            if min(roi) < 0 or x_max <= x_min or y_max <= y_min:
                raise ValueError("expected x_min,y_min,x_max,y_max with 0 <= min < max")
        return roi
