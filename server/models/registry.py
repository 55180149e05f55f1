"""Which model versions exist on disk, which are loaded, and which one serves each name.

Hot swap: a new version loads and warms up off the event loop beside the old one; then one
assignment makes it active. Requests hold a lease on the version they resolved, so the old
version retires only after its last in-flight request finishes. A failed load leaves the
active version untouched.

A plan may leave work for later ("fp32 now, int8 pending"): the registry runs the planner's
upgrade job in a child process while the version serves, then swaps the upgraded plan in the
same way (or records on the serving version why it stays as it is).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path

from server.errors import (
    EdgeError,
    IncompatibleVersion,
    MissingExtra,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
)
from server.manifest import (
    MANIFEST_FILENAME,
    ModelManifest,
    read_manifest,
    verify_files,
)
from server.models.compat import signature_problems
from server.models.dropin import DROPIN_FILENAME, manifest_from_onnx
from server.models.extras import check_extras
from server.models.memory import release_free_memory, trim_periodically
from server.models.pipeline_members import stage_problem
from server.models.runtime_plan import Planner, RuntimePlan, UpgradeJob
from server.models.version import ModelVersion
from server.observability.metrics import ServerMetrics
from server.settings import SandboxSettings

log = logging.getLogger(__name__)

# Often enough that a refused big request's pages are back with the OS within 10 s (a trim
# takes about a millisecond).
TRIM_INTERVAL_S = 4.0
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ModelIndexEntry:
    name: str
    version: str
    state: str  # READY, LOADING, UNAVAILABLE
    reason: str = ""


@dataclass
class _ModelSlot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The version unversioned requests get; always one of `loaded`.
    active: ModelVersion | None = None
    # Loaded versions in load order (oldest first), so the oldest is retired first.
    loaded: dict[str, ModelVersion] = field(default_factory=dict)
    loading: str | None = None
    # Last outcome per version that is not loaded: why it is unavailable.
    reasons: dict[str, str] = field(default_factory=dict)


class ModelRegistry:
    def __init__(
        self,
        repository: Path,
        planner: Planner,
        metrics: ServerMetrics,
        load_executor: Executor,
        *,
        versions_kept: int = 1,
        camera_streams: Callable[[str], int] = lambda name: 0,
        sandbox: SandboxSettings,
    ) -> None:
        self._repository = repository
        self._sandbox = sandbox
        # How many camera streams are open on a model: a new version must take their frames.
        self._camera_streams = camera_streams
        self._planner = planner
        self._metrics = metrics
        self._load_executor = load_executor
        self._versions_kept = versions_kept
        self._slots: dict[str, _ModelSlot] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        # Background plan upgrades (conversion children), one per loaded version at most.
        self._upgrades: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._one_upgrade = asyncio.Semaphore(1)
        # Returns freed heap pages to the OS while models serve (see server/models/memory.py).
        self._trimmer: asyncio.Task[None] | None = None

    # ---- disk ----

    def model_dir(self, name: str) -> Path:
        if not _MODEL_NAME.match(name):
            raise ModelNotFound(f"model name {name!r} is invalid")
        return self._repository / name

    def versions_on_disk(self, name: str) -> list[str]:
        directory = self.model_dir(name)
        if not directory.is_dir():
            return []
        versions = [
            child.name
            for child in directory.iterdir()
            if child.is_dir() and child.name.isdigit() and _has_model(child)
        ]
        return sorted(versions, key=int)

    def names_on_disk(self) -> list[str]:
        if not self._repository.is_dir():
            return []
        return sorted(
            child.name
            for child in self._repository.iterdir()
            if child.is_dir()
            and _MODEL_NAME.match(child.name)
            and self.versions_on_disk(child.name)
        )

    def skipped_on_disk(self) -> list[tuple[str, str]]:
        """Entries of the repository that hold no servable model, each with the reason."""
        if not self._repository.is_dir():
            return []
        skipped: list[tuple[str, str]] = []
        for child in sorted(self._repository.iterdir()):
            if child.name.startswith("."):
                continue
            if not child.is_dir():
                skipped.append((child.name, "a file, not a model directory"))
            elif not _MODEL_NAME.match(child.name):
                skipped.append((child.name, "not a valid model name"))
            elif not self.versions_on_disk(child.name):
                numbered = [
                    item for item in child.iterdir() if item.is_dir() and item.name.isdigit()
                ]
                skipped.append(
                    (
                        child.name,
                        f"no numbered version directory with a {MANIFEST_FILENAME} or a "
                        f"{DROPIN_FILENAME}"
                        if not numbered
                        else f"version directories {sorted(item.name for item in numbered)} "
                        f"have no {MANIFEST_FILENAME} or {DROPIN_FILENAME}",
                    )
                )
        return skipped

    # ---- lookup ----

    def resolve(self, name: str, version: str = "") -> ModelVersion:
        """The version that should serve a request; NOT_FOUND vs UNAVAILABLE is decided here."""
        slot = self._slots.get(name)
        if slot is not None:
            if not version and slot.active is not None:
                return slot.active
            if version and version in slot.loaded:
                return slot.loaded[version]
        active = slot.active if slot else None
        on_disk = self.versions_on_disk(name)
        if not on_disk and active is None:
            raise ModelNotFound(f"model {name!r} is not in the repository")
        if version and version not in on_disk:
            known = ", ".join(on_disk) or "none"
            raise ModelNotFound(f"model {name!r} has no version {version!r} (versions: {known})")
        if version:
            raise ModelNotReady(
                f"model {name!r} version {version} is not loaded"
                + (f" (serving version {active.version})" if active else "")
            )
        reason = slot.reasons.get(on_disk[-1], "") if slot else ""
        raise ModelNotReady(f"model {name!r} is not loaded" + (f": {reason}" if reason else ""))

    def active(self, name: str) -> ModelVersion | None:
        slot = self._slots.get(name)
        return slot.active if slot else None

    def loaded_versions(self, name: str) -> list[str]:
        slot = self._slots.get(name)
        return sorted(slot.loaded, key=int) if slot else []

    def loaded(self) -> list[ModelVersion]:
        return [model for slot in self._slots.values() for model in slot.loaded.values()]

    def index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        entries: list[ModelIndexEntry] = []
        for name in sorted(set(self.names_on_disk()) | set(self._slots)):
            slot = self._slots.get(name)
            loaded = slot.loaded if slot else {}
            for version in sorted(set(self.versions_on_disk(name)) | set(loaded), key=int):
                if version in loaded:
                    entries.append(ModelIndexEntry(name, version, "READY"))
                elif slot and slot.loading == version:
                    entries.append(ModelIndexEntry(name, version, "LOADING"))
                else:
                    reason = slot.reasons.get(version, "") if slot else ""
                    entries.append(ModelIndexEntry(name, version, "UNAVAILABLE", reason))
        return [entry for entry in entries if entry.state == "READY" or not ready_only]

    # ---- lifecycle ----

    async def load(self, name: str, version: str | None = None) -> ModelVersion:
        """Load `version` (newest on disk if None), warm it, and make it active atomically.

        Versions loaded earlier stay loaded (newest first) up to `versions_kept`, so requests
        that name them keep working; older ones retire once their requests finish."""
        on_disk = self.versions_on_disk(name)
        if not on_disk:
            raise ModelNotFound(f"model {name!r} is not in the repository")
        chosen = version or on_disk[-1]
        if chosen not in on_disk:
            raise ModelNotFound(
                f"model {name!r} has no version {chosen!r} (versions: {', '.join(on_disk)})"
            )
        slot = self._slots.setdefault(name, _ModelSlot())
        async with slot.lock:
            slot.loading = chosen
            version_dir = self.model_dir(name) / chosen
            loop = asyncio.get_running_loop()
            try:
                manifest = await loop.run_in_executor(
                    self._load_executor, read_version_manifest, version_dir
                )
                check_extras(manifest)
                if manifest.pipeline is not None:
                    await self._load_members(manifest)
                fresh = await loop.run_in_executor(
                    self._load_executor, self._build, version_dir, manifest
                )
                serving = slot.active if slot.active and slot.active.version != chosen else None
                if serving is not None:
                    # Before it serves anyone: the clients of the serving version must still be
                    # served, and on real input (the warm-up's zeros pass too much).
                    try:
                        self._check_replaces(serving, manifest)
                        await loop.run_in_executor(self._load_executor, fresh.smoke_test)
                    except EdgeError:
                        await fresh.retire()
                        raise
            except EdgeError as exc:
                slot.reasons[chosen] = str(exc)
                self._metrics.model_events.labels(name, chosen, "load_failed").inc()
                # A missing extra is the install, not a fault: the caller says it once.
                log.log(
                    logging.DEBUG if isinstance(exc, MissingExtra) else logging.ERROR,
                    "model %s version %s failed to load: %s", name, chosen, exc,
                )  # fmt: skip
                raise
            except Exception as exc:
                slot.reasons[chosen] = "load failed"
                self._metrics.model_events.labels(name, chosen, "load_failed").inc()
                log.exception("model %s version %s failed to load", name, chosen)
                raise ModelLoadError(f"model {name!r} version {chosen} failed to load") from exc
            finally:
                slot.loading = None
            fresh.start()
            reloaded = slot.loaded.pop(chosen, None)
            previous = slot.active
            slot.loaded[chosen] = fresh
            slot.active = fresh  # the switch: one assignment, between two awaits
            slot.reasons.pop(chosen, None)
            event = "swap" if previous is not None else "load"
            self._metrics.model_events.labels(name, chosen, event).inc()
            log.info(
                "model %s version %s %s (%s; plan: %s)",
                name, chosen, "swapped in" if previous else "loaded",
                fresh.backend_description, dict(fresh.plan.reasons),
            )  # fmt: skip
            if reloaded is not None:
                self._retire(reloaded)
            self._start_upgrade(fresh)
            if self._trimmer is None:
                self._trimmer = asyncio.create_task(trim_periodically(TRIM_INTERVAL_S))
            while len(slot.loaded) > self._versions_kept:
                oldest = next(iter(slot.loaded))
                slot.reasons[oldest] = f"replaced by version {chosen}"
                # Retired by the swap: an unload like any other in edgefleet_model_events.
                self._metrics.model_events.labels(name, oldest, "unload").inc()
                self._retire(slot.loaded.pop(oldest))
            return fresh

    def _check_replaces(self, serving: ModelVersion, manifest: ModelManifest) -> None:
        """IncompatibleVersion unless `manifest` may replace the serving version (compat.py)."""
        streams = self._camera_streams(serving.name)
        problems = signature_problems(serving.manifest, manifest, camera_streams=streams)
        if problems:
            raise IncompatibleVersion(
                f"model {serving.name!r} version {manifest.version} cannot replace version "
                f"{serving.version} (which keeps serving): {'; '.join(problems)}"
            )

    def _build(self, version_dir: Path, manifest: ModelManifest) -> ModelVersion:
        """Blocking: plan, load the runtime and warm it up (a pipeline has no runtime)."""
        if manifest.pipeline is not None:
            return ModelVersion(
                version_dir, manifest, pipeline_plan(manifest), self._metrics,
                sandbox=self._sandbox, members=self.resolve,
            )  # fmt: skip
        plan = self._planner.plan(version_dir, manifest)
        return self._new_version(version_dir, manifest, plan)

    def _new_version(
        self, version_dir: Path, manifest: ModelManifest, plan: RuntimePlan
    ) -> ModelVersion:
        model = ModelVersion(version_dir, manifest, plan, self._metrics, sandbox=self._sandbox)
        if model.process_bytes:
            self._planner.observe_process(plan.backend, model.process_bytes)
        release_free_memory()  # what the load parsed and optimized and then freed
        return model

    # ---- background upgrades ----

    def _start_upgrade(self, model: ModelVersion) -> None:
        job = self._planner.upgrade_job(model.version_dir, model.manifest, model.plan)
        key = (model.name, model.version)
        previous = self._upgrades.pop(key, None)
        if previous is not None:
            previous.cancel()
        if job is None:
            return
        task = asyncio.create_task(self._upgrade(model, job), name=f"upgrade-{key[0]}/{key[1]}")
        self._upgrades[key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._upgrades.get(key) is done:
                del self._upgrades[key]
            if not done.cancelled() and done.exception() is not None:
                log.error("model %s/%s upgrade failed", *key, exc_info=done.exception())

        task.add_done_callback(forget)

    async def _upgrade(self, model: ModelVersion, job: UpgradeJob) -> None:
        """Run the job's child at its own pace; swap the upgraded plan in if it changes what
        is loaded, else record its outcome on the serving version."""
        loop = asyncio.get_running_loop()
        # One child at a time, in load order: a small board has neither the cores nor the memory
        # for six conversions at once (the default repository started six on two cores).
        async with self._one_upgrade:
            process = await asyncio.create_subprocess_exec(
                *job.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            log.info("model %s/%s: %s pending (child pid %d)",
                     model.name, model.version, model.plan.pending, process.pid)  # fmt: skip
            try:
                stdout, stderr = await process.communicate(job.stdin)
            except asyncio.CancelledError:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                raise
        returncode = process.returncode if process.returncode is not None else -1
        try:
            plan: RuntimePlan = await loop.run_in_executor(
                self._load_executor, job.finish, returncode, stdout, stderr
            )
        except EdgeError as exc:  # the upgrade does not fit (memory): stay as we are
            reasons = dict(model.plan.reasons)
            reasons["precision"] = f"fp32 now, {model.plan.pending} not served: {exc}"
            plan = replace(model.plan, pending="", reasons=reasons)
        slot = self._slots.get(model.name)
        if slot is None or slot.loaded.get(model.version) is not model:
            return  # unloaded or replaced meanwhile
        if (plan.model_file, plan.precision) == (model.plan.model_file, model.plan.precision):
            # Rejected or failed: serving continues as it is; the reason is recorded.
            model.plan = replace(model.plan, pending="", reasons=plan.reasons)
            self._metrics.model_events.labels(model.name, model.version, "upgrade_rejected").inc()
            return
        fresh = await loop.run_in_executor(
            self._load_executor, self._new_version, model.version_dir, model.manifest, plan
        )
        async with slot.lock:
            fresh.start()
            if slot.loaded.get(model.version) is not model:
                self._retire(fresh)
                return
            slot.loaded[model.version] = fresh
            if slot.active is model:
                slot.active = fresh  # the switch, as in a hot swap: leases keep the old one
            self._retire(model)
            self._metrics.model_events.labels(model.name, model.version, "upgrade").inc()
            why = plan.reasons.get("precision", "")
            log.info("model %s version %s upgraded to %s (%s)",
                     model.name, model.version, plan.precision, why)  # fmt: skip

    async def _load_members(self, manifest: ModelManifest) -> None:
        """Load every member a pipeline needs that is not loaded yet; name what is missing."""
        assert manifest.pipeline is not None
        where = f"pipeline {manifest.name}/{manifest.version}"
        for stage in manifest.pipeline.stages:
            member = f"member {stage.model!r}" + (
                f" version {stage.version}" if stage.version else ""
            )
            if stage.model == manifest.name:
                raise ModelLoadError(f"{where}: {member} is the pipeline itself")
            loaded = self.loaded_versions(stage.model) if stage.model in self._slots else []
            if (stage.version and stage.version not in loaded) or (
                not stage.version and not loaded
            ):
                try:
                    await self.load(stage.model, stage.version or None)
                except EdgeError as exc:
                    error = MissingExtra if isinstance(exc, MissingExtra) else ModelLoadError
                    raise error(f"{where}: {member} cannot be loaded: {exc}") from None
            model = self.resolve(stage.model, stage.version)
            problem = stage_problem(stage.kind, model.manifest, stage)
            if problem:
                raise ModelLoadError(f"{where}: {member}: {problem}")

    async def unload(self, name: str, version: str | None = None) -> None:
        """Unload one version, or every loaded version of the model when `version` is None."""
        slot = self._slots.get(name)
        if slot is None or not slot.loaded:
            if not self.versions_on_disk(name):
                raise ModelNotFound(f"model {name!r} is not in the repository")
            raise ModelNotReady(f"model {name!r} is not loaded")
        async with slot.lock:
            if version and version not in slot.loaded:
                raise ModelNotReady(f"model {name!r} version {version} is not loaded")
            leaving = [version] if version else list(slot.loaded)
            retired = [slot.loaded.pop(item) for item in leaving]
            for item in leaving:
                slot.reasons[item] = "unloaded"
                self._metrics.model_events.labels(name, item, "unload").inc()
            if slot.active is not None and slot.active.version in leaving:
                # The newest version still loaded, if any, takes over unversioned requests.
                slot.active = list(slot.loaded.values())[-1] if slot.loaded else None
        await asyncio.gather(*(model.retire() for model in retired))

    def _retire(self, version: ModelVersion) -> None:
        label = f"retire-{version.name}/{version.version}"
        task = asyncio.create_task(self._retire_and_release(version), name=label)
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _retire_and_release(version: ModelVersion) -> None:
        await version.retire()
        await asyncio.to_thread(release_free_memory)

    async def close(self) -> None:
        """Stop upgrades (their children are killed); retire everything. Called when the
        transports have finished or cancelled their requests: runs still going are orphans,
        stopped where the runtime can be (a confined model's worker is killed)."""
        upgrades = list(self._upgrades.values())
        if self._trimmer is not None:
            upgrades.append(self._trimmer)
            self._trimmer = None
        for task in upgrades:
            task.cancel()
        await asyncio.gather(*upgrades, return_exceptions=True)
        for slot in self._slots.values():
            for model in slot.loaded.values():
                # Past the grace: a run still going (a model that loops) must not hold the stop.
                model.interrupt()
                self._retire(model)
            slot.loaded.clear()
            slot.active = None
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)


def _has_model(version_dir: Path) -> bool:
    return (version_dir / MANIFEST_FILENAME).is_file() or (version_dir / DROPIN_FILENAME).is_file()


def read_version_manifest(version_dir: Path) -> ModelManifest:
    """Blocking: the version's manifest with its files verified, or, for a drop-in ONNX model
    without one, the manifest completed from the model itself (files hashed now)."""
    if (
        not (version_dir / MANIFEST_FILENAME).is_file()
        and (version_dir / DROPIN_FILENAME).is_file()
    ):
        manifest = manifest_from_onnx(version_dir)
        post = manifest.postprocess
        served = (
            f"YOLO detector from its metadata: letterbox, {len(post.labels or [])} named classes"
            if post.kind == "yolo"
            else "raw outputs"
        )
        log.info(
            "model %s version %s has no %s: serving %s with a manifest completed from the model "
            "(%s; `edgefleet model init %s` writes it for editing)",
            manifest.name, manifest.version, MANIFEST_FILENAME, DROPIN_FILENAME, served,
            version_dir,
        )  # fmt: skip
        return manifest
    manifest = read_manifest(version_dir)
    if manifest.name != version_dir.parent.name:
        raise ModelLoadError(
            f"{version_dir.parent.name}/{version_dir.name}: manifest names model "
            f"{manifest.name!r}, directory is {version_dir.parent.name!r}"
        )
    verify_files(version_dir, manifest)
    return manifest


def check_pipeline_members(repository: Path, manifest: ModelManifest) -> None:
    """Blocking, for `edgefleet model check`: every member is on disk and fits its stage."""
    assert manifest.pipeline is not None
    where = f"pipeline {manifest.name}/{manifest.version}"
    for stage in manifest.pipeline.stages:
        directory = repository / stage.model
        versions = (
            sorted(
                (
                    child.name
                    for child in directory.glob("*")
                    if child.name.isdigit() and _has_model(child)
                ),
                key=int,
            )
            if directory.is_dir()
            else []
        )
        if not versions:
            raise ModelLoadError(f"{where}: member model {stage.model!r} is not in {repository}")
        version = stage.version or versions[-1]
        if version not in versions:
            raise ModelLoadError(
                f"{where}: member {stage.model!r} has no version {version} "
                f"(versions: {', '.join(versions)})"
            )
        problem = stage_problem(stage.kind, read_version_manifest(directory / version), stage)
        if problem:
            raise ModelLoadError(f"{where}: member {stage.model!r}: {problem}")


def pipeline_plan(manifest: ModelManifest) -> RuntimePlan:
    """A pipeline runs nothing itself: its members have their own plans."""
    assert manifest.pipeline is not None
    graph = " -> ".join(
        f"{stage.kind} {stage.model}" + (f"/{stage.version}" if stage.version else "")
        for stage in manifest.pipeline.stages
    )
    return RuntimePlan(
        backend="pipeline", model_file="", providers=(), precision="", intra_op_threads=0,
        inter_op_threads=0, max_batch_size=0, max_queue_delay_us=0, max_queue_size=1,
        reasons={"pipeline": graph},
    )  # fmt: skip
