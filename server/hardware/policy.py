"""What the operator asks of the hardware planner: built once by the CLI, passed to the planner."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.manifest import RuntimePins

Policy = Literal["latency", "throughput", "balanced"]


class PlannerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_PLANNER_", frozen=True, extra="forbid")

    # latency: batch of one, no queueing; throughput: big batches, more instances; balanced: the
    # manifest's batching on every real core.
    policy: Policy = "balanced"
    # A request's end-to-end budget; bounds the queue delay and what autotune may pick.
    latency_budget_ms: float | None = Field(default=None, gt=0)
    # Memory a model may take (weights + activations), on top of what is free on the device.
    memory_budget_mb: float | None = Field(default=None, gt=0)
    # Share of free memory a plan may use; the rest stays for the OS and other models.
    memory_headroom: float = Field(default=0.8, gt=0, le=1)
    # None: on for the throughput policy (where a wrong batch size costs most), off otherwise.
    autotune: bool | None = None
    autotune_time_s: float = Field(default=20.0, gt=0)
    # Reduced precisions the planner may choose (each still has to pass the accuracy guard).
    allow_int8: bool = True
    allow_fp16: bool = True
    # Accuracy guard: classifiers need this top-1 agreement with fp32, raw outputs at most this
    # relative error (L2 norm of the difference over the L2 norm of the fp32 output).
    min_top1_agreement: float = Field(default=0.99, gt=0, le=1)
    max_relative_error: float = Field(default=0.05, gt=0)
    # Sample frames (jpg/png) for calibration; None uses built-in sample images.
    calibration_dir: Path | None = None
    # Where converted models and autotune results go; None: `.edgefleet-cache` beside each model.
    cache_dir: Path | None = None
    # Choices pinned on the command line; they win over the manifest's pins and the planner.
    pins: RuntimePins = RuntimePins()
