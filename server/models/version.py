"""One loaded model version: its runtime, batcher, labels, plan and statistics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from server.concurrency import all_or_nothing
from server.errors import IncompatibleVersion, InvalidInput, ModelLoadError, first_line
from server.manifest import CtcOptions, ModelManifest, load_labels
from server.models.backends.base import Backend
from server.models.backends.factory import load_backend
from server.models.batcher import BatchOutcome, DynamicBatcher
from server.models.compat import photo_tensor
from server.models.dropin import onnx_metadata
from server.models.runtime_plan import RuntimePlan
from server.models.stats import ModelStats
from server.models.tensors import check_tensor
from server.models.types import Arrays
from server.observability.metrics import ModelInfoLabels, ServerMetrics
from server.settings import SandboxSettings
from server.vision.decoders.ctc_text import characters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferOutcome:
    outputs: Arrays
    version: str
    queue_s: float
    infer_s: float
    batch_rows: int
    # Requests that shared a run with this one (one group counted once), the most of any part.
    batch_requests: int = 1
    # (start, end) loop times of the runs that served this request: its model time.
    runs: tuple[tuple[float, float], ...] = ()


JobResult = TypeVar("JobResult")

# (name, version or "") -> the loaded member version; the registry's `resolve`.
MemberResolver = Callable[[str, str], "ModelVersion"]


class ModelVersion:
    """Created by `load()` off the event loop, then `start()`ed on it.

    A pipeline (manifest format `pipeline`) has no runtime or batcher of its own: `members`
    resolves the models its stages run, at each frame, so member hot swaps apply at once."""

    def __init__(
        self,
        version_dir: Path,
        manifest: ModelManifest,
        plan: RuntimePlan,
        metrics: ServerMetrics,
        *,
        sandbox: SandboxSettings,
        members: MemberResolver | None = None,
    ) -> None:
        self.version_dir = version_dir
        self.manifest = manifest
        self.plan = plan
        self.name = manifest.name
        self.version = manifest.version
        self.members = members
        self.stats = ModelStats(self.name, self.version)
        self._metrics = metrics
        # Metric children looked up once: a labels() lookup per frame costs ~5 us each.
        model_labels = (self.name, self.version)
        self._queue_latency = metrics.queue_latency.labels(*model_labels)
        self._batch_size = metrics.batch_size.labels(*model_labels)
        self._compute_latency = metrics.compute_latency.labels(*model_labels)
        self._successes = metrics.requests.labels(*model_labels, "success")
        self._request_latency = metrics.request_latency.labels(*model_labels)
        self._frames_dropped = metrics.frames_dropped.labels(*model_labels)
        self._output_names = [spec.name for spec in manifest.outputs]
        # What a client may send: the manifest's limit. The plan's batch is how the server groups
        # work on this device; a larger request is split into plan-sized runs (`infer`).
        self.max_batch_size = (
            max(plan.max_batch_size, manifest.batching.max_batch_size)
            if plan.max_batch_size > 0
            else 0
        )
        self._leases = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._backend: Backend | None = None
        self._batcher: DynamicBatcher | None = None
        if manifest.pipeline is not None:
            self.labels: list[str] = []
            return
        events = metrics.model_events
        self._backend = load_backend(
            version_dir,
            manifest,
            plan,
            sandbox,
            on_worker_restart=events.labels(self.name, self.version, "worker_died").inc,
            on_run_timeout=events.labels(self.name, self.version, "run_timeout").inc,
        )
        try:
            self.labels = _labels(version_dir, manifest)
            self._warm_up(self._backend)
        except BaseException:
            self._backend.close()  # a confined model's worker process must not outlive it
            raise
        self._batcher = DynamicBatcher(
            self._backend,
            name=f"{self.name}/{self.version}",
            output_names=self._output_names,
            max_batch_size=plan.max_batch_size,
            max_queue_delay_us=plan.max_queue_delay_us,
            max_queue_size=plan.max_queue_size,
            instance_count=plan.instance_count,
            on_execution=self.record_execution,
        )

    @property
    def backend_description(self) -> str:
        if self._backend is None:
            return f"pipeline ({self.plan.reasons.get('pipeline', '')})"
        return self._backend.description

    @property
    def provider(self) -> str:
        """The execution provider actually running the model ("" for a pipeline)."""
        return "" if self._backend is None else self._backend.provider

    @property
    def process_bytes(self) -> int:
        """Memory of the separate process running the model, if any (Backend.process_bytes)."""
        return 0 if self._backend is None else self._backend.process_bytes

    @property
    def info_labels(self) -> ModelInfoLabels:
        """How this version runs: the labels of its `edgefleet_model_info` series."""
        plan = self.plan
        return ModelInfoLabels(self.name, self.version, plan.backend, self.provider, plan.precision)

    @property
    def in_flight(self) -> int:
        return self._leases

    def _warm_up(self, backend: Backend) -> None:
        """Run once on zeros so the first real request does not pay for lazy initialisation."""
        try:
            backend.run(self._zeros(), [spec.name for spec in self.manifest.outputs])
        except Exception as exc:  # a model that cannot run on its own declared shapes is broken
            reason = first_line(exc, self.version_dir)
            raise ModelLoadError(
                f"{self.name}/{self.version}: warm-up run failed: {reason}"
            ) from exc

    def smoke_test(self) -> None:
        """Blocking: run an image model once on a real photo, through the camera path's
        preprocess. Zeros (the warm-up) pass a model that fails on every real frame; this runs
        before a new version replaces the serving one. Models without a preprocess section have
        no real input known here: their warm-up is their smoke test."""
        pre = self.manifest.preprocess
        if self._backend is None or pre is None:
            return
        inputs = self._zeros()
        try:
            inputs[pre.input] = photo_tensor(pre)
            self._backend.run(inputs, [spec.name for spec in self.manifest.outputs])
        except Exception as exc:
            reason = first_line(exc, self.version_dir)
            raise IncompatibleVersion(
                f"{self.name}/{self.version}: smoke test on a real photo failed: {reason}"
            ) from exc

    def _zeros(self) -> dict[str, np.ndarray]:
        """Zeros of every input, at its declared shape (1 for the batch, the preprocess size
        for an image's free height and width, 64 for any other free dimension)."""
        pre = self.manifest.preprocess

        def warm_dim(spec_name: str, axis: int, dim: int | str) -> int:
            if isinstance(dim, int) and dim > 0:
                return dim
            if axis == 0:
                return 1
            if pre is not None and pre.input == spec_name:
                height_axis, width_axis = (2, 3) if pre.layout == "nchw" else (1, 2)
                if axis == height_axis:
                    return pre.height
                if axis == width_axis:
                    return pre.width
            return 64

        return {
            spec.name: np.zeros(
                [warm_dim(spec.name, axis, dim) for axis, dim in enumerate(spec.shape)],
                dtype=spec.dtype,
            )
            for spec in self.manifest.inputs
        }

    def start(self) -> None:
        self._idle = asyncio.Event()
        self._idle.set()
        if self._batcher is not None:
            self._batcher.start()

    @contextlib.contextmanager
    def lease(self) -> Iterator[ModelVersion]:
        """Hold the version while a request uses it; retiring waits for every lease to end."""
        self._leases += 1
        self._idle.clear()
        try:
            yield self
        finally:
            self._leases -= 1
            if self._leases == 0:
                self._idle.set()

    def validate(self, inputs: Arrays) -> None:
        declared = {spec.name for spec in self.manifest.inputs}
        missing = declared - inputs.keys()
        unknown = inputs.keys() - declared
        if unknown:
            raise InvalidInput(
                f"model {self.name}: unknown input {sorted(unknown)[0]!r} "
                f"(inputs: {sorted(declared)})"
            )
        if missing:
            raise InvalidInput(f"model {self.name}: missing input {sorted(missing)[0]!r}")
        rows = set()
        for spec in self.manifest.inputs:
            check_tensor(inputs[spec.name], spec, max_batch_size=self.max_batch_size)
            rows.add(inputs[spec.name].shape[0] if self.max_batch_size > 0 else 1)
        if len(rows) > 1:
            raise InvalidInput(f"model {self.name}: inputs disagree on batch size {sorted(rows)}")

    async def infer(self, inputs: Arrays, group: Hashable | None = None) -> InferOutcome:
        """Validate, queue for a batch, and await this request's rows. Requests of one `group`
        (a camera frame's) count as one request in the batches they share."""
        if self._batcher is None:
            raise InvalidInput(
                f"model {self.name} is a pipeline: it takes camera frames over FrameStream"
            )
        self.validate(inputs)
        step = self.plan.max_batch_size
        rows = next(iter(inputs.values())).shape[0] if step > 0 else 0
        group = group if group is not None else object()  # split parts are one request
        if rows <= step:
            outcome: BatchOutcome = await self._batcher.submit(inputs, group)
            self._queue_latency.observe(outcome.queue_s)
            return InferOutcome(
                outputs=outcome.outputs,
                version=self.version,
                queue_s=outcome.queue_s,
                infer_s=outcome.infer_s,
                batch_rows=outcome.batch_rows,
                batch_requests=outcome.batch_requests,
                runs=((outcome.run_start, outcome.run_end),),
            )
        parts = await all_or_nothing(
            *(
                self._batcher.submit(
                    {name: array[start : start + step] for name, array in inputs.items()}, group
                )
                for start in range(0, rows, step)
            )
        )
        for part in parts:
            self._queue_latency.observe(part.queue_s)
        return InferOutcome(
            outputs={
                name: np.concatenate([part.outputs[name] for part in parts])
                for name in parts[0].outputs
            },
            version=self.version,
            queue_s=max(part.queue_s for part in parts),
            infer_s=sum(part.infer_s for part in parts),
            batch_rows=max(part.batch_rows for part in parts),
            batch_requests=max(part.batch_requests for part in parts),
            runs=tuple((part.run_start, part.run_end) for part in parts),
        )

    async def run_job(self, job: Callable[[Backend], JobResult]) -> JobResult:
        """Run `job` with the runtime on one of the model's runners, between batches of
        the batcher (the freshness scheduler's decode-and-run of camera frames). The job's
        runs are the caller's to record with `record_execution`."""
        if self._batcher is None:
            raise InvalidInput(
                f"model {self.name} is a pipeline: it takes camera frames over FrameStream"
            )
        return await self._batcher.run_job(job)

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch or a runner (0 for a pipeline, which has no batcher)."""
        return self._batcher.queue_depth if self._batcher is not None else 0

    @property
    def output_names(self) -> list[str]:
        return self._output_names

    def record_queue_wait(self, seconds: float) -> None:
        """A request's wait for a runner (the batcher's queue, or a frame job's)."""
        self._queue_latency.observe(seconds)

    def record_execution(self, rows: int, infer_s: float) -> None:
        self.stats.record_execution(rows, infer_s)
        self._batch_size.observe(rows)
        self._compute_latency.observe(infer_s)

    def interrupt(self) -> None:
        """Stop the run in progress now where the runtime can (a confined worker is killed):
        the server is stopping past its grace and nobody waits for the answer."""
        if self._backend is not None:
            self._backend.interrupt()

    async def retire(self) -> None:
        """Wait for in-flight requests, then drain the batcher and free the runtime."""
        await self._idle.wait()
        if self._batcher is not None:
            await self._batcher.close()
        log.info("model %s version %s unloaded", self.name, self.version)

    def record_success(
        self, *, total_s: float, queue_s: float, input_s: float, infer_s: float, output_s: float
    ) -> None:
        self.stats.record_success(
            total_s=total_s, queue_s=queue_s, input_s=input_s, infer_s=infer_s, output_s=output_s
        )
        self._successes.inc()
        self._request_latency.observe(total_s)

    def record_failure(self, total_s: float, outcome: str) -> None:
        """`outcome`: one of `server.observability.metrics.OUTCOMES` (see `outcome_of`)."""
        self.stats.record_failure(total_s)
        self._metrics.requests.labels(self.name, self.version, outcome).inc()

    def record_drops(self, count: int) -> None:
        self.stats.record_drops(count)
        self._frames_dropped.inc(count)


def _labels(version_dir: Path, manifest: ModelManifest) -> list[str]:
    """Class names; for a CTC recogniser its decoding table, from the ONNX metadata where the
    exporter stored it (PaddleOCR does, under `character`), else from `labels_file`."""
    post = manifest.postprocess
    if post.kind != "ctc_text":
        return load_labels(version_dir, manifest)
    options = post.ctc or CtcOptions()
    listed: list[str] | None = None
    if manifest.format == "onnx":
        metadata = onnx_metadata(version_dir / manifest.model_file)
        if options.characters_metadata_key in metadata:
            listed = metadata[options.characters_metadata_key].splitlines()
    if listed is None and post.labels_file:
        text = (version_dir / post.labels_file).read_text(encoding="utf-8")
        listed = text.splitlines()
    if not listed:
        raise ModelLoadError(
            f"{manifest.name}/{manifest.version}: ctc_text needs a character list: ONNX metadata "
            f"{options.characters_metadata_key!r} or a labels_file"
        )
    return characters(listed, append_space=options.append_space)
