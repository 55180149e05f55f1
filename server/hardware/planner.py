"""The hardware planner: facts + manifest + policy -> a RuntimePlan that says why.

`draft_plan` decides from facts; this class makes the draft real: it converts to the chosen
precision and admits the result only through the accuracy guard, autotunes when asked, and
logs the plan. It implements `server.runtime_plan.Planner`; `plan` blocks (quantization and
autotune take seconds), so the server calls it off the event loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from server.errors import PlanRefused
from server.hardware.autotune import autotune, candidate_batches, candidate_threads
from server.hardware.calibration import calibration_set
from server.hardware.decide import GPU_PROVIDERS, draft_plan, fit_memory
from server.hardware.facts import HardwareFacts
from server.hardware.footprint import Footprint, cached_footprint
from server.hardware.policy import PlannerSettings
from server.hardware.precision import cache_dir_for, convert_with_guard
from server.hardware.probe import probe_hardware
from server.manifest import ModelManifest, sha256_file
from server.runtime_plan import RuntimePlan

logger = logging.getLogger(__name__)


class HardwarePlanner:
    def __init__(
        self,
        settings: PlannerSettings,
        facts: HardwareFacts | None = None,
        probe: Callable[[], HardwareFacts] = probe_hardware,
    ) -> None:
        """With `facts`, every plan uses them (recorded profiles, tests). Without, the device is
        probed again for each plan, so free memory counts the models loaded before it."""
        self._settings = settings
        self._fixed = facts is not None
        self._facts = facts
        self._probe = probe
        self._lock = threading.Lock()

    @property
    def settings(self) -> PlannerSettings:
        return self._settings

    def facts(self) -> HardwareFacts:
        """The latest facts (probing now if there are none yet); never blocks for long."""
        with self._lock:
            if self._facts is None:
                self._facts = self._probe_now()
            return self._facts

    def _current_facts(self) -> HardwareFacts:
        with self._lock:
            if not self._fixed or self._facts is None:
                self._facts = self._probe_now()
            return self._facts

    def _probe_now(self) -> HardwareFacts:
        facts = self._probe()
        for line in facts.skipped:
            logger.debug("hardware probe skipped %s", line)
        return facts

    def plan(self, version_dir: Path, manifest: ModelManifest) -> RuntimePlan:
        facts = self._current_facts()
        footprints: dict[str, Footprint] = {}

        def footprint_of(model_file: str) -> Footprint:
            if model_file not in footprints:
                path = version_dir / model_file
                footprints[model_file] = cached_footprint(
                    path,
                    manifest,
                    manifest.files.get(model_file) or sha256_file(path),
                    cache_dir_for(version_dir, self._settings.cache_dir),
                )
            return footprints[model_file]

        plan = draft_plan(manifest, facts, self._settings, footprint_of)
        if plan.precision in ("int8", "fp16") and plan.backend == "onnx":
            plan = self._apply_precision(plan, version_dir, manifest)
            plan = fit_memory(
                plan, manifest, facts, self._settings, footprint_of(manifest_file(plan, manifest))
            )
        if self._autotune_wanted(manifest, plan):
            plan = self._apply_autotune(plan, version_dir, manifest)
            # Check the batch autotune picked against memory (it may exceed the draft's).
            plan = fit_memory(
                plan, manifest, facts, self._settings, footprint_of(manifest_file(plan, manifest))
            )
        log_plan(manifest, plan)
        return plan

    def _apply_precision(
        self, plan: RuntimePlan, version_dir: Path, manifest: ModelManifest
    ) -> RuntimePlan:
        settings = self._settings
        reasons = dict(plan.reasons)
        pinned = "precision" in plan.pinned
        why = reasons.get("precision", plan.precision).removesuffix("; pending the accuracy guard")
        source = version_dir / plan.model_file
        try:
            calibration = calibration_set(manifest, settings.calibration_dir)
            conversion = convert_with_guard(
                model_path=source,
                model_sha256=manifest.files.get(plan.model_file) or sha256_file(source),
                manifest=manifest,
                precision=plan.precision,
                calibration=calibration,
                cache_dir=cache_dir_for(version_dir, settings.cache_dir),
                providers=plan.providers,
                min_agreement=settings.min_top1_agreement,
                max_error=settings.max_relative_error,
                fingerprint=self.facts().fingerprint,
            )
        except Exception as exc:  # quantizers fail on odd graphs in many ways
            logger.warning(
                "%s/%s: %s conversion failed",
                manifest.name,
                manifest.version,
                plan.precision,
                exc_info=True,
            )
            # The traceback is in the log; the reason reaches clients, so it names no paths.
            failure = f"{plan.precision} conversion failed ({type(exc).__name__})"
            if pinned:
                raise PlanRefused(
                    f"{manifest.name}/{manifest.version}: precision {plan.precision} is pinned "
                    f"but {failure}"
                ) from exc
            reasons["precision"] = f"fp32: {failure}"
            return replace(plan, precision="fp32", reasons=reasons)

        verdict = conversion.verdict
        threshold = (
            f">= {settings.min_top1_agreement:.0%}"
            if verdict.metric == "top1_agreement"
            else f"<= {settings.max_relative_error:g}"
        )
        if conversion.accepted and conversion.path is not None:
            reasons["precision"] = (
                f"{why}; accuracy guard passed: {verdict.describe()} ({verdict.calibration}), "
                f"needs {threshold}"
            )
            reasons["model_file"] = f"{plan.precision} copy cached by sha256 of {plan.model_file}"
            return replace(
                plan, model_file=relative_if_inside(conversion.path, version_dir), reasons=reasons
            )
        failing = (
            f"{plan.precision} failed the accuracy guard: {verdict.describe()}, needs {threshold}"
        )
        if pinned:
            raise PlanRefused(
                f"{manifest.name}/{manifest.version}: precision {plan.precision} is pinned but "
                f"{failing}; it is never served"
            )
        reasons["precision"] = f"fp32: {failing}"
        return replace(plan, precision="fp32", reasons=reasons)

    def _autotune_wanted(self, manifest: ModelManifest, plan: RuntimePlan) -> bool:
        # The command line (or environment) first, then the manifest, then the policy.
        choices = (self._settings.pins.autotune, self._settings.autotune, manifest.runtime.autotune)
        wanted = next((choice for choice in choices if choice is not None), None)
        if wanted is None:
            wanted = self._settings.policy == "throughput"
        return wanted and plan.backend == "onnx"

    def _apply_autotune(
        self, plan: RuntimePlan, version_dir: Path, manifest: ModelManifest
    ) -> RuntimePlan:
        settings = self._settings
        facts = self.facts()
        reasons = dict(plan.reasons)
        model_path = Path(plan.model_file)
        model_path = model_path if model_path.is_absolute() else version_dir / model_path
        on_gpu = any(name in GPU_PROVIDERS for name in plan.providers)
        threads = (
            [plan.intra_op_threads]
            if "intra_op_threads" in plan.pinned or on_gpu
            else candidate_threads(max(1, facts.cpu.compute_cores // plan.instance_count))
        )
        # Up to the manifest's batch even where the policy chose less: measuring is the point.
        # The memory check after autotune still shrinks what does not fit.
        batches = (
            [plan.max_batch_size]
            if "max_batch_size" in plan.pinned or plan.max_batch_size == 0
            else candidate_batches(max(plan.max_batch_size, manifest.batching.max_batch_size))
        )
        result = autotune(
            model_path=model_path,
            model_sha256=sha256_file(model_path),
            manifest=manifest,
            providers=plan.providers,
            threads=threads,
            batches=batches,
            fingerprint=facts.fingerprint,
            cache_dir=cache_dir_for(version_dir, settings.cache_dir),
            time_budget_s=settings.autotune_time_s,
            queue_delay_ms=plan.max_queue_delay_us / 1000,
            latency_budget_ms=settings.latency_budget_ms,
        )
        best = result.best
        origin = (
            "cached measurement"
            if result.cached
            else f"measured {len(result.measurements)} pairs in {result.seconds:.1f} s"
        )
        if result.skipped_candidates:
            bound = f"{settings.autotune_time_s:g} s"
            origin += f", {result.skipped_candidates} left out by the {bound} bound"
        budget = (
            f", within the {settings.latency_budget_ms:g} ms budget"
            if settings.latency_budget_ms is not None and result.within_budget
            else (
                ", nothing fits the latency budget: fastest batch"
                if not result.within_budget
                else ""
            )
        )
        summary = (
            f"autotune ({origin}): {best.throughput_fps:.1f} fps, "
            f"batch p95 {best.batch_p95_ms:.1f} ms{budget}"
        )
        reasons["autotune"] = summary
        if "intra_op_threads" not in plan.pinned:
            reasons["intra_op_threads"] = f"{best.intra_op_threads}: {summary}"
        if "max_batch_size" not in plan.pinned:
            reasons["max_batch_size"] = f"{best.batch_size}: {summary}"
        delay = plan.max_queue_delay_us
        if best.batch_size <= 1 and "max_queue_delay_us" not in plan.pinned:
            delay = 0
            reasons["max_queue_delay_us"] = "0: batches of one never wait"
        return replace(
            plan,
            intra_op_threads=best.intra_op_threads,
            max_batch_size=best.batch_size,
            max_queue_delay_us=delay,
            reasons=reasons,
        )


def manifest_file(plan: RuntimePlan, manifest: ModelManifest) -> str:
    """The manifest file the plan derives from (a converted copy keeps the original's size)."""
    return plan.model_file if plan.model_file in manifest.files else manifest.model_file


def relative_if_inside(path: Path, version_dir: Path) -> str:
    try:
        return path.resolve().relative_to(version_dir.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def log_plan(manifest: ModelManifest, plan: RuntimePlan) -> None:
    logger.info(
        "plan %s/%s: %s %s %s, %d+%d threads, batch %d, delay %d us, %d instance(s)",
        manifest.name,
        manifest.version,
        plan.backend,
        plan.precision,
        ",".join(plan.providers),
        plan.intra_op_threads,
        plan.inter_op_threads,
        plan.max_batch_size,
        plan.max_queue_delay_us,
        plan.instance_count,
    )
    for key, reason in plan.reasons.items():
        pinned = " [pinned]" if key in plan.pinned else ""
        logger.info("plan %s/%s %s%s: %s", manifest.name, manifest.version, key, pinned, reason)
