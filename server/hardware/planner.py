"""The hardware planner: facts + manifest + policy -> a RuntimePlan that says why.

`draft_plan` decides from facts; this class makes the draft real. A reduced precision is only
served once the accuracy guard admitted it on this device. With `background=True` (the server)
a model whose conversion is not cached yet is served at once in fp32 ("fp32 now, int8
pending"), and `upgrade_job` hands the registry the conversion to run in a child process; the
registry hot-swaps the accepted plan in. Otherwise (probe, benchmarks, a pinned precision) the
same child runs before `plan` returns. Autotune runs in `plan`, which the server calls off the
event loop. The serving process never imports onnx or the quantization tooling.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from server.errors import PlanRefused
from server.hardware import convert_job, trust
from server.hardware.autotune import autotune, candidate_batches, candidate_threads
from server.hardware.decide import GPU_PROVIDERS, draft_plan, fit_memory
from server.hardware.facts import HardwareFacts
from server.hardware.footprint import (
    Footprint,
    cached_footprint,
    estimate_footprint,
    stored_footprint,
)
from server.hardware.policy import PlannerSettings
from server.hardware.precision import Conversion, GuardVerdict, cached_conversion
from server.hardware.probe import probe_hardware
from server.manifest import ModelManifest, sha256_file
from server.models.runtime_plan import RuntimePlan, UpgradeJob

logger = logging.getLogger(__name__)


class HardwarePlanner:
    def __init__(
        self,
        settings: PlannerSettings,
        facts: HardwareFacts | None = None,
        probe: Callable[[], HardwareFacts] = probe_hardware,
        *,
        background: bool = False,
    ) -> None:
        """With `facts`, every plan uses them (recorded profiles, tests). Without, the device is
        probed again for each plan, so free memory counts the models loaded before it.
        `background`: convert in the background (serve fp32 meanwhile) and never import onnx
        in this process; otherwise convert before `plan` returns."""
        self._settings = settings
        self._fixed = facts is not None
        self._facts = facts
        self._probe = probe
        self._background = background
        self._lock = threading.Lock()
        self._cache_dir = trust.owned_dir(settings.cache_dir or trust.default_cache_dir())
        self._key: bytes | None = None
        self._drafts: dict[tuple[str, str], RuntimePlan] = {}
        self._told_no_tooling = False
        # A confined TorchScript worker's own memory, once one has measured it.
        self._torch_worker_bytes: int | None = None
        self._converting = threading.Lock()
        # The accuracy guard's last verdict (for `edgefleet probe`'s table).
        self.last_verdict: GuardVerdict | None = None

    @property
    def settings(self) -> PlannerSettings:
        return self._settings

    @property
    def cache_dir(self) -> Path:
        return self._cache_dir

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
            if self._torch_worker_bytes is None:
                return self._facts
            return self._facts.model_copy(update={"torch_worker_bytes": self._torch_worker_bytes})

    def observe_process(self, backend: str, process_bytes: int) -> None:
        if backend == "torchscript" and process_bytes > 0:
            with self._lock:
                self._torch_worker_bytes = process_bytes

    def _probe_now(self) -> HardwareFacts:
        facts = self._probe()
        for line in facts.skipped:
            logger.debug("hardware probe skipped %s", line)
        return facts

    def _device_key(self) -> bytes:
        with self._lock:
            if self._key is None:
                self._key = trust.device_key(self._settings.device_key_file)
            return self._key

    def _footprint(self, version_dir: Path, manifest: ModelManifest, model_file: str) -> Footprint:
        path = version_dir / model_file
        sha = manifest.files.get(model_file) or sha256_file(path)
        if self._background:
            # Measuring reads the graph with onnx: the conversion child does it and caches it.
            return stored_footprint(sha, self._cache_dir) or estimate_footprint(path, manifest)
        return cached_footprint(path, manifest, sha, self._cache_dir)

    def plan(self, version_dir: Path, manifest: ModelManifest) -> RuntimePlan:
        facts = self._current_facts()
        footprints: dict[str, Footprint] = {}

        def footprint_of(model_file: str) -> Footprint:
            if model_file not in footprints:
                footprints[model_file] = self._footprint(version_dir, manifest, model_file)
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

    # ---- precision: the guard's verdict, cached or computed in a child process ----

    def _request(
        self, plan: RuntimePlan, version_dir: Path, manifest: ModelManifest
    ) -> tuple[list[str], convert_job.ConvertRequest]:
        settings = self._settings
        source = version_dir / plan.model_file
        argv, nice = convert_job.command(settings.conversion_nice)
        return argv, convert_job.ConvertRequest(
            version_dir=str(version_dir.resolve()),
            model_file=plan.model_file,
            model_sha256=manifest.files.get(plan.model_file) or sha256_file(source),
            precision=plan.precision,
            recipe=settings.int8_recipe,
            providers=list(plan.providers),
            # Absolute: the child works in a scratch directory of its own.
            cache_dir=str(self._cache_dir.resolve()),
            key_file=str(settings.device_key_file.resolve()) if settings.device_key_file else None,
            calibration_dir=(
                str(settings.calibration_dir.resolve()) if settings.calibration_dir else None
            ),
            thresholds=asdict(settings.thresholds()),
            fingerprint=self.facts().fingerprint,
            nice=nice,
            manifest=manifest.model_dump(mode="json"),
        )

    def _cached(self, request: convert_job.ConvertRequest) -> Conversion | None:
        return cached_conversion(
            model_sha256=request.model_sha256,
            precision=request.precision,
            recipe=request.recipe,
            cache_dir=self._cache_dir,
            key=self._device_key(),
            thresholds=self._settings.thresholds(),
            fingerprint=request.fingerprint,
        )

    def _apply_precision(
        self, draft: RuntimePlan, version_dir: Path, manifest: ModelManifest
    ) -> RuntimePlan:
        argv, request = self._request(draft, version_dir, manifest)
        found = self._cached(request)
        if found is not None:
            return self._decide(draft, version_dir, manifest, found, None)
        missing = convert_job.missing_tooling()
        if missing is not None:
            return self._without_tooling(draft, manifest, missing)
        if self._background and "precision" not in draft.pinned:
            reasons = dict(draft.reasons)
            why = reasons.get("precision", draft.precision).removesuffix(
                "; pending the accuracy guard"
            )
            reasons["precision"] = (
                f"fp32 now, {draft.precision} pending: converting and running the accuracy "
                f"guard in the background ({why})"
            )
            with self._lock:
                self._drafts[(str(version_dir), request.model_sha256)] = draft
            return replace(draft, precision="fp32", reasons=reasons, pending=draft.precision)
        with self._converting:  # one child at a time, whichever load thread asks
            completed = subprocess.run(
                argv, input=request.to_json(), capture_output=True, check=False
            )
        return self._finish(
            draft,
            version_dir,
            manifest,
            request,
            completed.returncode,
            completed.stdout,
            completed.stderr,
        )

    def _without_tooling(
        self, draft: RuntimePlan, manifest: ModelManifest, missing: str
    ) -> RuntimePlan:
        """fp32, because the conversion tooling is not installed here (the device install)."""
        why = (
            f"{draft.precision} conversion needs the {missing} package, which this install "
            f"does not have: pip install 'edgefleet[{convert_job.TOOLING_EXTRA}]'"
        )
        if "precision" in draft.pinned:
            raise PlanRefused(f"{manifest.name}/{manifest.version}: precision is pinned but {why}")
        with self._lock:
            first = not self._told_no_tooling
            self._told_no_tooling = True
        if first:  # once per process: every model would say the same
            logger.info("serving fp32: %s", why)
        reasons = dict(draft.reasons)
        reasons["precision"] = f"fp32: {why}"
        return replace(draft, precision="fp32", reasons=reasons)

    def upgrade_job(
        self, version_dir: Path, manifest: ModelManifest, plan: RuntimePlan
    ) -> UpgradeJob | None:
        if not plan.pending:
            return None
        draft = replace(plan, precision=plan.pending, pending="")
        argv, request = self._request(draft, version_dir, manifest)
        with self._lock:
            # The draft's own reasons (why this precision), not the "pending" wording.
            original = self._drafts.pop((str(version_dir), request.model_sha256), None)
        if original is not None:
            draft = replace(draft, reasons=original.reasons)

        def finish(returncode: int, stdout: bytes, stderr: bytes) -> RuntimePlan:
            upgraded = self._finish(
                draft, version_dir, manifest, request, returncode, stdout, stderr
            )
            facts = self._current_facts()
            footprint = self._footprint(version_dir, manifest, manifest_file(upgraded, manifest))
            upgraded = fit_memory(upgraded, manifest, facts, self._settings, footprint)
            log_plan(manifest, upgraded)
            return upgraded

        return UpgradeJob(argv=argv, stdin=request.to_json(), finish=finish)

    def _finish(
        self,
        draft: RuntimePlan,
        version_dir: Path,
        manifest: ModelManifest,
        request: convert_job.ConvertRequest,
        returncode: int,
        stdout: bytes,
        stderr: bytes,
    ) -> RuntimePlan:
        found = self._cached(request) if returncode == 0 else None
        if found is not None:
            # Read back from the cache, but converted just now unless the child said otherwise.
            fresh = b'"cached": true' not in stdout
            found = replace(found, cached=found.cached and not fresh)
            return self._decide(draft, version_dir, manifest, found, None)
        if returncode < 0:
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = str(-returncode)
            failure = f"{draft.precision} conversion process killed by {name}"
        else:
            lines = stderr.decode(errors="replace").strip().splitlines()
            cause = lines[-1] if lines else f"exit code {returncode}"
            if returncode == 0:
                cause = "no verdict signed by this device was stored"
            # The reason reaches clients: name the model, not where it lives.
            for where, shown in ((str(version_dir.resolve()), manifest.name),
                                 (str(self._cache_dir), "<cache>")):  # fmt: skip
                cause = cause.replace(where, shown)
            failure = f"{draft.precision} conversion failed ({cause})"
        logger.warning("%s/%s: %s", manifest.name, manifest.version, failure)
        return self._decide(draft, version_dir, manifest, None, failure)

    def _decide(
        self,
        draft: RuntimePlan,
        version_dir: Path,
        manifest: ModelManifest,
        conversion: Conversion | None,
        failure: str | None,
    ) -> RuntimePlan:
        settings = self._settings
        reasons = dict(draft.reasons)
        pinned = "precision" in draft.pinned
        precision = draft.precision
        why = reasons.get("precision", precision).removesuffix("; pending the accuracy guard")
        why = why.removeprefix(f"{precision}: ")
        self.last_verdict = conversion.verdict if conversion is not None else None
        if conversion is None:
            failing = failure or f"{precision} conversion failed"
        elif conversion.accepted and conversion.path is not None:
            verdict = conversion.verdict.describe(settings.thresholds())
            cached = " (cached)" if conversion.cached else ""
            reasons["precision"] = f"{precision} accepted{cached}: {why}; accuracy guard: {verdict}"
            reasons["model_file"] = (
                f"{precision} copy of {draft.model_file}, converted and signed on this device"
            )
            return replace(
                draft, model_file=relative_if_inside(conversion.path, version_dir), reasons=reasons
            )
        else:
            failing = (
                f"{precision} rejected by the accuracy guard: "
                f"{conversion.verdict.describe(settings.thresholds())}"
            )
            logger.info("%s/%s: %s", manifest.name, manifest.version, failing)
        if pinned:
            raise PlanRefused(
                f"{manifest.name}/{manifest.version}: precision {precision} is pinned but "
                f"{failing}; it is never served"
            )
        reasons["precision"] = f"fp32 now, {failing}"
        return replace(draft, precision="fp32", reasons=reasons)

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
            cache_dir=self._cache_dir,
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
