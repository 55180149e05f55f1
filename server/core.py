"""InferenceCore: the one domain core every transport (KServe, FrameStream, fleet agent) uses.

It never imports grpc or generated protobuf code.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.telemetry import ModelTelemetry
from server.analytics.config import check_config
from server.errors import (
    DeadlineExceeded,
    EdgeError,
    InvalidInput,
    MissingExtra,
    ModelNotReady,
    RepositoryMissing,
    RequiredModelFailed,
    ShuttingDown,
)
from server.frames.memory import FrameMemory, default_budget
from server.frames.scheduler import FrameScheduler
from server.frames.session import FrameSession
from server.frames.types import (
    EncodedFrame,
    StreamEvent,
    StreamOpenedEvent,
    StreamOptions,
)
from server.hardware.probe import probe_hardware
from server.manifest import ModelManifest
from server.models.registry import ModelIndexEntry, ModelRegistry
from server.models.runtime_plan import ManifestPlanner, Planner, RuntimePlan
from server.models.stats import ModelStats
from server.models.types import InferRequest, InferResponse, OutputTensor, RequestedOutput
from server.models.version import InferOutcome, ModelVersion
from server.observability.metrics import ServerMetrics, StreamMetrics, outcome_of
from server.settings import ServerSettings
from server.vision.postprocess import classification_strings, classification_width

log = logging.getLogger(__name__)
# (model name, versions on disk oldest first) -> the versions to try at boot, best first. The
# fleet agent passes one that prefers the desired and last known good versions.
BootOrder = Callable[[str, list[str]], list[str]]

# Classification strings formatted on the event loop; larger requests format in a thread.
CLASSIFICATION_ON_LOOP = 64


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    active_version: str
    version_dir: Path
    manifest: ModelManifest
    plan: RuntimePlan
    backend: str
    versions_on_disk: list[str]
    loaded_versions: list[str]
    # The largest batch a client may send (the plan's batch is the server's own grouping).
    max_batch_size: int = 0


class InferenceCore:
    # What `load_model` raises when a version cannot serve: the registry wraps every failure of
    # a load (files, runtime, warm-up) in a `ModelLoadError`; a missing version is ModelNotFound.
    load_error: type[Exception] = EdgeError

    def __init__(
        self,
        settings: ServerSettings,
        *,
        planner: Planner | None = None,
        metrics: ServerMetrics | None = None,
        boot_order: BootOrder | None = None,
    ) -> None:
        self.settings = settings
        self._boot_order = boot_order
        self.metrics = metrics if metrics is not None else ServerMetrics()
        self._preprocess_pool = ThreadPoolExecutor(
            max_workers=settings.preprocess_threads, thread_name_prefix="preprocess"
        )
        # Loads are serialised per model by the registry; two threads let models load side by side.
        self._load_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="model-load")
        self.registry = ModelRegistry(
            settings.repository,
            planner if planner is not None else ManifestPlanner(),
            self.metrics,
            self._load_pool,
            versions_kept=settings.versions_kept,
            camera_streams=lambda name: self._camera_streams.get(name, 0),
            sandbox=settings.sandbox,
        )
        self.metrics.watch_models(lambda: [model.info_labels for model in self.registry.loaded()])
        self._started = False
        self._draining = False
        self._refusing = False
        self._stopping = False
        # Models the server is meant to serve (readiness "models"): the operator's --model
        # list, what loaded at boot, and what a load request asked for since; an unload of the
        # whole model removes it.
        self._wanted: set[str] = set(settings.models or ())
        # Called whenever readiness may have changed (the gRPC health service follows it).
        self.on_readiness_change: Callable[[bool], None] | None = None
        self._streams = 0
        # Open camera streams per model name: a hot swap must keep taking their frames.
        self._camera_streams: dict[str, int] = {}
        self._stream_ids = itertools.count(1)
        # One frame scheduler per (model, requested version) that streams have opened; bounded by
        # the models and versions on disk. A scheduler without streams waits, doing nothing.
        self._schedulers: dict[tuple[str, str], FrameScheduler] = {}
        # Open camera streams, told at once when the server stops taking work.
        self._frame_sessions: set[FrameSession] = set()
        # One byte budget for the frames of all streams; by default a share of the memory the
        # probe finds (memory only: no GPU or runtime probing on the way to serving).
        budget = settings.frame_memory_budget_bytes or default_budget(
            probe_hardware(nvml=None, onnx_providers=lambda: ()).memory.usable_bytes
        )
        self.frame_memory = FrameMemory(
            budget, settings.max_message_bytes, self.metrics.frame_memory_overcommits.inc
        )
        self.metrics.frame_memory_read_ahead.set_function(
            lambda: self.frame_memory.read_ahead_bytes
        )
        self.metrics.frame_memory_budget.set(budget)
        self.metrics.frame_memory.set_function(lambda: self.frame_memory.held_bytes)

    # ---- lifecycle ----

    @property
    def ready(self) -> bool:
        """Started, not draining, and (readiness "models", Triton's strict readiness) every
        wanted model has a version that serves: not while one loads for the first time, after
        its load failed, or after it was unloaded unasked. A hot swap keeps the old version
        serving, so it keeps the server ready."""
        if not self._started or self._draining or self._stopping:
            return False
        if self.settings.readiness == "server":
            return True
        return all(self.registry.active(name) is not None for name in self._wanted)

    def unready_models(self) -> list[str]:
        """Wanted models with no serving version (why readiness "models" says not ready)."""
        return sorted(name for name in self._wanted if self.registry.active(name) is None)

    def _readiness_may_have_changed(self) -> None:
        if self.on_readiness_change is not None:
            self.on_readiness_change(self.ready)

    def begin_drain(self) -> None:
        """Shutdown has begun: not ready from now on (probes see it while work still runs)."""
        self._draining = True
        self._readiness_may_have_changed()

    def refuse_new_work(self) -> None:
        """Shutdown, past its drain delay (the transports refuse new requests): no new camera
        stream, and every open one stops reading frames, answers those it accepted and ends
        (UNAVAILABLE)."""
        self._refusing = True
        for session in list(self._frame_sessions):
            session.shut_down()

    @property
    def live(self) -> bool:
        return not self._stopping

    async def start(self) -> None:
        repository = self.settings.repository
        if not repository.is_dir():
            raise RepositoryMissing(
                f"model repository {repository} does not exist or is not a directory"
            )
        for name, reason in self.registry.skipped_on_disk():
            log.warning("repository entry %s skipped: %s", name, reason)
        names = (
            list(self.settings.models)
            if self.settings.models is not None
            else (self.registry.names_on_disk())
        )
        for name in names:
            if self.registry.loaded_versions(name):
                continue  # already loaded as a member of a pipeline loaded before it
            try:
                await self._load_at_boot(name)
                self._wanted.add(name)
            except EdgeError as exc:
                if self.settings.models is not None:
                    # A model the operator named must load, or the server must not start.
                    raise RequiredModelFailed(f"model {name}: {exc}") from exc
                # A model this install cannot run (an extra is missing) is expected on a
                # device: a warning that names the extra, not an error.
                level = logging.WARNING if isinstance(exc, MissingExtra) else logging.ERROR
                log.log(level, "skipping model %s: %s", name, exc)
        loaded = self.registry.loaded()
        if not loaded:
            log.warning(
                "no models loaded from %s: the server is up but can answer no inference "
                "until a model is added and loaded (RepositoryModelLoad or the fleet agent)",
                repository,
            )
        else:
            log.info(
                "%d model(s) loaded: %s",
                len(loaded), ", ".join(f"{model.name}/{model.version}" for model in loaded),
            )  # fmt: skip
        # Pipeline members loaded with their pipeline are wanted too.
        self._wanted.update(model.name for model in loaded)
        self._started = True
        self._readiness_may_have_changed()

    async def _load_at_boot(self, name: str) -> None:
        """Load the first version of `boot_order` (newest first by default) that loads: one bad
        version on disk never keeps a server from starting on a good one."""
        on_disk = self.registry.versions_on_disk(name)
        order = self._boot_order(name, on_disk) if self._boot_order else on_disk[::-1]
        if not order:
            if on_disk:
                raise ModelNotReady(f"model {name!r}: no version on disk may boot")
            await self.registry.load(name)  # raises the precise "not found" error
            return
        for position, version in enumerate(order):
            try:
                await self.registry.load(name, version)
                return
            except EdgeError as exc:
                if position == len(order) - 1:
                    raise
                log.error("model %s version %s skipped at boot: %s", name, version, exc)

    async def stop(self) -> None:
        """Refuse new work, let in-flight requests finish, free every runtime. Called after
        the transports' grace: model runs still going then are stopped where they can be."""
        self._stopping = True
        self._readiness_may_have_changed()
        for scheduler in self._schedulers.values():
            await scheduler.close()
        await self.registry.close()
        self._preprocess_pool.shutdown(wait=True)
        self._load_pool.shutdown(wait=True)

    # ---- models ----

    async def load_model(self, name: str, version: str | None = None) -> str:
        if name in self.registry.names_on_disk():
            # Wanted from the request on: a first load makes the server unready until it is
            # done, a failed one until the model loads or is unloaded.
            self._wanted.add(name)
        self._readiness_may_have_changed()
        try:
            loaded = await self.registry.load(name, version)
        finally:
            self._readiness_may_have_changed()
        return loaded.version

    async def unload_model(self, name: str, version: str | None = None) -> None:
        if version is None and name in self._wanted and not self.registry.loaded_versions(name):
            # A wanted model whose load failed: unloading it means "stop wanting it".
            self._wanted.discard(name)
            self._readiness_may_have_changed()
            return
        try:
            await self.registry.unload(name, version)
        finally:
            if version is None:
                self._wanted.discard(name)
            self._readiness_may_have_changed()

    def repository_index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        return self.registry.index(ready_only)

    def active_version(self, name: str) -> str | None:
        active = self.registry.active(name)
        return active.version if active else None

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.registry.resolve(name, version)
        except EdgeError:
            return False
        return True

    def model_info(self, name: str, version: str = "") -> ModelInfo:
        model = self.registry.resolve(name, version)
        return ModelInfo(
            name=model.name,
            version=model.version,
            active_version=self.active_version(name) or "",
            version_dir=model.version_dir,
            manifest=model.manifest,
            plan=model.plan,
            backend=model.backend_description,
            versions_on_disk=self.registry.versions_on_disk(name),
            loaded_versions=self.registry.loaded_versions(name),
            max_batch_size=model.max_batch_size,
        )

    def statistics(self, name: str = "", version: str = "") -> list[ModelStats]:
        if name:
            return [self.registry.resolve(name, version).stats]
        return [model.stats for model in self.registry.loaded()]

    def model_telemetry(self) -> list[ModelTelemetry]:
        telemetry = []
        for model in self.registry.loaded():
            stats = model.stats
            fps, p50, p95 = stats.window()
            telemetry.append(
                ModelTelemetry(
                    name=model.name,
                    version=model.version,
                    requests=stats.success.count + stats.fail.count,
                    errors=stats.fail.count,
                    drops=stats.frames_dropped,
                    fps=fps,
                    latency_p50_ms=p50,
                    latency_p95_ms=p95,
                )
            )
        return telemetry

    # ---- inference ----

    def _check_serving(self) -> None:
        if self._stopping:
            raise ShuttingDown("server is shutting down")

    async def infer(
        self, request: InferRequest, *, timeout_s: float | None = None
    ) -> InferResponse:
        """Run one request; `timeout_s` bounds its queueing and computing (DeadlineExceeded)."""
        self._check_serving()
        loop = asyncio.get_running_loop()
        arrival = loop.time()
        model = self.registry.resolve(request.model_name, request.model_version)
        with model.lease():
            try:
                requested = self._requested_outputs(model, request.outputs)
                try:
                    async with asyncio.timeout(timeout_s):
                        outcome = await model.infer(request.inputs)
                except TimeoutError:
                    raise DeadlineExceeded(
                        f"request timeout of {(timeout_s or 0) * 1e6:.0f} us expired before "
                        f"model {model.name} answered"
                    ) from None
                post_start = loop.time()
                outputs = [await self._output(model, outcome, wanted) for wanted in requested]
            except Exception as exc:  # every failure counts: a runtime error is a failed inference
                model.record_failure(loop.time() - arrival, outcome_of(exc))
                raise
            done = loop.time()
            model.record_success(
                total_s=done - arrival, queue_s=outcome.queue_s, input_s=0.0,
                infer_s=outcome.infer_s, output_s=done - post_start,
            )  # fmt: skip
        return InferResponse(model.name, outcome.version, request.id, outputs)

    @staticmethod
    def _requested_outputs(
        model: ModelVersion, requested: tuple[RequestedOutput, ...]
    ) -> tuple[RequestedOutput, ...]:
        if not requested:
            return tuple(RequestedOutput(spec.name) for spec in model.manifest.outputs)
        declared = {spec.name for spec in model.manifest.outputs}
        for wanted in requested:
            if wanted.name not in declared:
                raise InvalidInput(
                    f"model {model.name}: unknown output {wanted.name!r} "
                    f"(outputs: {sorted(declared)})"
                )
            if wanted.classification < 0:
                raise InvalidInput(f"output {wanted.name!r}: classification count must be >= 0")
        return requested

    async def _output(
        self, model: ModelVersion, outcome: InferOutcome, wanted: RequestedOutput
    ) -> OutputTensor:
        value = outcome.outputs[wanted.name]
        if not wanted.classification:
            return OutputTensor(wanted.name, np.ascontiguousarray(value))
        if model.max_batch_size == 0:
            value = value[None]
        k = min(wanted.classification, classification_width(value))
        raw = self.settings.classification_scores == "raw"
        if k * value.shape[0] <= CLASSIFICATION_ON_LOOP:
            strings = _classify(value, k, model, raw)
        else:  # thousands of formatted strings: keep the event loop free meanwhile
            loop = asyncio.get_running_loop()
            strings = await loop.run_in_executor(
                self._preprocess_pool, _classify, value, k, model, raw
            )
        return OutputTensor(wanted.name, strings if model.max_batch_size else strings[0])

    async def stream(
        self, options: StreamOptions, frames: AsyncIterator[EncodedFrame]
    ) -> AsyncGenerator[StreamEvent, None]:
        """Run one camera stream. Errors in the options raise before anything is yielded."""
        self._check_serving()
        if self._refusing:  # requests already accepted by a transport still finish; streams end
            raise ShuttingDown("server is shutting down")
        model = self.registry.resolve(options.model_name, options.model_version)
        if model.manifest.preprocess is None and model.manifest.pipeline is None:
            raise InvalidInput(
                f"model {model.name} has no preprocess section, so it cannot take camera frames"
            )
        if options.analytics is not None:
            check_config(options.analytics)
        requested = options.max_in_flight or self.settings.stream_max_in_flight
        if requested > self.settings.stream_max_in_flight_limit:
            raise InvalidInput(
                f"max_in_flight {requested} exceeds the server's limit "
                f"{self.settings.stream_max_in_flight_limit}"
            )
        name, version = options.model_name, options.model_version

        def resolve() -> ModelVersion:
            return self.registry.resolve(name, version)

        scheduler = self._schedulers.get((name, version))
        if scheduler is None:
            scheduler = FrameScheduler(resolve, self._preprocess_pool, f"{name}/{version or '*'}")
            self._schedulers[(name, version)] = scheduler
        stream_id = options.stream_id or f"stream-{next(self._stream_ids)}"
        metrics = StreamMetrics(self.metrics, model.name, stream_id)
        options = dataclasses.replace(
            options, max_pixels=self.settings.max_frame_pixels, stream_id=stream_id
        )
        session = FrameSession(
            options=options,
            window=requested,
            scheduler=scheduler,
            resolve_model=resolve,
            metrics=metrics,
            memory=self.frame_memory,
        )
        self._streams += 1
        self._camera_streams[name] = self._camera_streams.get(name, 0) + 1
        self._frame_sessions.add(session)
        self.metrics.active_streams.inc()
        try:
            yield StreamOpenedEvent(
                stream_id, model.name, model.version, requested, options.policy, session.credits
            )
            async with contextlib.aclosing(session.run(frames)) as events:
                async for event in events:
                    yield event
        finally:
            metrics.close()
            self._frame_sessions.discard(session)
            self._streams -= 1
            self._camera_streams[name] -= 1
            self.metrics.active_streams.dec()

    @property
    def active_streams(self) -> int:
        return self._streams


def _classify(scores: np.ndarray, k: int, model: ModelVersion, raw: bool) -> np.ndarray:
    """Top-k strings; scores are the manifest's (softmax probabilities when it asks for them)
    or, with classification_scores "raw", the output values themselves, as Triton gives."""
    softmax = model.manifest.postprocess.softmax and not raw
    return classification_strings(scores, k, model.labels, apply_softmax=softmax)
