"""Which model versions exist on disk, which are loaded, and which one serves each name.

Hot swap: a new version loads and warms up off the event loop beside the old one; then one
assignment makes it active. Requests hold a lease on the version they resolved, so the old
version retires only after its last in-flight request finishes. A failed load leaves the
active version untouched.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from server.errors import EdgeError, ModelLoadError, ModelNotFound, ModelNotReady
from server.manifest import MANIFEST_FILENAME, read_manifest, verify_files
from server.metrics import ServerMetrics
from server.model_version import ModelVersion
from server.runtime_plan import Planner

log = logging.getLogger(__name__)

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
    active: ModelVersion | None = None
    loading: str | None = None
    # Last outcome per version that is not active: why it is unavailable.
    reasons: dict[str, str] = field(default_factory=dict)


class ModelRegistry:
    def __init__(
        self,
        repository: Path,
        planner: Planner,
        metrics: ServerMetrics,
        load_executor: Executor,
        on_active_change: Callable[[ModelVersion | None, ModelVersion | None], None] | None = None,
    ) -> None:
        self._repository = repository
        self._planner = planner
        self._metrics = metrics
        self._load_executor = load_executor
        self._slots: dict[str, _ModelSlot] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._on_active_change = on_active_change

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
            if child.is_dir() and child.name.isdigit() and (child / MANIFEST_FILENAME).is_file()
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

    # ---- lookup ----

    def resolve(self, name: str, version: str = "") -> ModelVersion:
        """The version that should serve a request; NOT_FOUND vs UNAVAILABLE is decided here."""
        slot = self._slots.get(name)
        active = slot.active if slot else None
        if active is not None and (not version or version == active.version):
            return active
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

    def loaded(self) -> list[ModelVersion]:
        return [slot.active for slot in self._slots.values() if slot.active is not None]

    def index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        entries: list[ModelIndexEntry] = []
        names = sorted(set(self.names_on_disk()) | set(self._slots))
        for name in names:
            slot = self._slots.get(name)
            for version in self.versions_on_disk(name) or (
                [slot.active.version] if slot and slot.active else []
            ):
                if slot and slot.active and slot.active.version == version:
                    entries.append(ModelIndexEntry(name, version, "READY"))
                elif slot and slot.loading == version:
                    entries.append(ModelIndexEntry(name, version, "LOADING"))
                else:
                    reason = slot.reasons.get(version, "") if slot else ""
                    entries.append(ModelIndexEntry(name, version, "UNAVAILABLE", reason))
        return [entry for entry in entries if entry.state == "READY" or not ready_only]

    # ---- lifecycle ----

    async def load(self, name: str, version: str | None = None) -> ModelVersion:
        """Load `version` (newest on disk if None), warm it, and make it active atomically."""
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
                fresh = await loop.run_in_executor(self._load_executor, self._build, version_dir)
            except EdgeError as exc:
                slot.reasons[chosen] = str(exc)
                self._metrics.model_events.labels(name, chosen, "load_failed").inc()
                log.error("model %s version %s failed to load: %s", name, chosen, exc)
                raise
            except Exception as exc:
                slot.reasons[chosen] = "load failed"
                self._metrics.model_events.labels(name, chosen, "load_failed").inc()
                log.exception("model %s version %s failed to load", name, chosen)
                raise ModelLoadError(f"model {name!r} version {chosen} failed to load") from exc
            finally:
                slot.loading = None
            fresh.start()
            previous, slot.active = slot.active, fresh
            slot.reasons.pop(chosen, None)
            event = "swap" if previous is not None else "load"
            self._metrics.model_events.labels(name, chosen, event).inc()
            log.info(
                "model %s version %s %s (%s; plan: %s)",
                name, chosen, "swapped in" if previous else "loaded",
                fresh.backend_description, dict(fresh.plan.reasons),
            )  # fmt: skip
            if self._on_active_change is not None:
                self._on_active_change(previous, fresh)
            if previous is not None:
                if previous.version != chosen:
                    slot.reasons[previous.version] = f"replaced by version {chosen}"
                self._retire(previous)
            return fresh

    def _build(self, version_dir: Path) -> ModelVersion:
        """Blocking: read and verify the manifest, plan, load the runtime and warm it up."""
        manifest = read_manifest(version_dir)
        if manifest.name != version_dir.parent.name:
            raise ModelLoadError(
                f"{version_dir}: manifest names model {manifest.name!r}, "
                f"directory is {version_dir.parent.name!r}"
            )
        verify_files(version_dir, manifest)
        plan = self._planner.plan(version_dir, manifest)
        return ModelVersion(version_dir, manifest, plan, self._metrics)

    async def unload(self, name: str, version: str | None = None) -> None:
        slot = self._slots.get(name)
        if slot is None or slot.active is None:
            if not self.versions_on_disk(name):
                raise ModelNotFound(f"model {name!r} is not in the repository")
            raise ModelNotReady(f"model {name!r} is not loaded")
        async with slot.lock:
            current = slot.active
            if current is None:
                return
            if version and version != current.version:
                raise ModelNotReady(f"model {name!r} version {version} is not loaded")
            slot.active = None
            slot.reasons[current.version] = "unloaded"
            self._metrics.model_events.labels(name, current.version, "unload").inc()
            if self._on_active_change is not None:
                self._on_active_change(current, None)
        await current.retire()

    def _retire(self, version: ModelVersion) -> None:
        label = f"retire-{version.name}/{version.version}"
        task = asyncio.create_task(version.retire(), name=label)
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        """Retire everything; in-flight requests finish first."""
        for slot in self._slots.values():
            if slot.active is not None:
                self._retire(slot.active)
                slot.active = None
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
