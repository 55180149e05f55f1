"""What the operator asks of the hardware planner: built once by the CLI, passed to the planner."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.hardware.guard import GuardThresholds
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
    # Accuracy guard (server/hardware/guard.py), judged on inputs the conversion was not
    # calibrated on. Classifiers: top-1 agreement with fp32 on inputs where fp32's top softmax
    # score exceeds `confident_score`, fp32's top-1 inside the candidate's top-5, mean KL
    # divergence of the softmax outputs. Raw outputs: worst relative error (L2 norm of the
    # difference over the L2 norm of the fp32 output).
    confident_score: float = Field(default=0.3, ge=0, lt=1)
    min_top1_agreement: float = Field(default=0.95, gt=0, le=1)
    min_top5_agreement: float = Field(default=0.97, gt=0, le=1)
    max_kl_divergence: float = Field(default=0.15, gt=0)
    max_relative_error: float = Field(default=0.05, gt=0)
    int8_recipe: Literal["qdq", "qdq-fp32-ends", "qoperator"] = "qdq-fp32-ends"
    # Sample frames (jpg/png) for calibration; None uses built-in sample images. Every other
    # frame is held out to judge the result.
    calibration_dir: Path | None = None
    # Converted models, verdicts, footprints and autotune results; None: the server's own
    # directory ($XDG_CACHE_HOME/edgefleet), never inside a model repository.
    cache_dir: Path | None = None
    # The key that signs verdicts; None: device.key in the default cache directory.
    device_key_file: Path | None = None
    # CPU priority of the conversion child (added to the server's niceness).
    conversion_nice: int = Field(default=10, ge=0, le=19)
    # Choices pinned on the command line; they win over the manifest's pins and the planner.
    pins: RuntimePins = RuntimePins()

    def thresholds(self) -> GuardThresholds:
        return GuardThresholds(
            confident_score=self.confident_score,
            min_top1_confident=self.min_top1_agreement,
            min_top5=self.min_top5_agreement,
            max_kl_mean=self.max_kl_divergence,
            max_relative_error=self.max_relative_error,
        )
