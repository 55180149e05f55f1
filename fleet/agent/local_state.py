"""What a device remembers about its models without the controller: the desired version, the
versions that loaded and served (last good first), the bundle digest of every version it
installed, and the versions it quarantined.

The file lives in the agent's state directory and is replaced atomically on every change, so a
device killed at any point boots into its desired or last good version, never into a version
that failed or was rolled back. Quarantined versions are moved out of the model repository (the
server never sees them) into `<state>/quarantine/<model>/<version>-<digest or time>/`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger(__name__)
STATE_FILE = "models.json"
QUARANTINE_DIR = "quarantine"
# Good versions remembered per model, newest first: the last good and the previous good.
GOOD_KEPT = 2


class ModelState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    desired: str = ""
    desired_sha256: str = ""
    # Versions that loaded, warmed up and served, most recent first.
    good: list[str] = Field(default_factory=list)
    # Bundle sha256 of each version installed from a bundle; a version built on the device
    # has none.
    installed: dict[str, str] = Field(default_factory=dict)
    # version -> why it was quarantined (failed to load, rolled back, replaced).
    quarantined: dict[str, str] = Field(default_factory=dict)


class LocalState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelState] = Field(default_factory=dict)

    def model(self, name: str) -> ModelState:
        return self.models.setdefault(name, ModelState())

    def boot_order(self, name: str, on_disk: list[str]) -> list[str]:
        """Versions to try at boot, best first: desired, last good, previous good, then the
        rest newest first. Quarantined versions are never tried."""
        state = self.models.get(name)
        if state is None:
            return list(reversed(on_disk))
        preferred = [state.desired, *state.good]
        ordered = [v for v in dict.fromkeys(preferred) if v and v in on_disk]
        rest = [v for v in reversed(on_disk) if v not in ordered]
        return [v for v in ordered + rest if v not in state.quarantined]

    def keep(self, name: str) -> set[str]:
        """Versions cleanup must keep: the desired, the last good and the previous good."""
        state = self.models.get(name)
        if state is None:
            return set()
        return {v for v in [state.desired, *state.good[:GOOD_KEPT]] if v}

    def mark_good(self, name: str, version: str) -> None:
        state = self.model(name)
        state.good = [version, *(v for v in state.good if v != version)][: GOOD_KEPT + 1]
        state.quarantined.pop(version, None)


class BootPlan:
    """The boot order `edgefleet serve` hands the server, built from the local state before the
    server starts; it remembers what it offered, so the agent can tell which versions failed."""

    def __init__(self, state: LocalState) -> None:
        self.state = state
        self.tried: dict[str, list[str]] = {}

    @classmethod
    def load(cls, state_dir: Path) -> BootPlan:
        return cls(load_state(state_dir))

    def order(self, name: str, on_disk: list[str]) -> list[str]:
        order = self.state.boot_order(name, on_disk)
        self.tried[name] = order
        if order[:1] != on_disk[-1:]:
            logger.info("%s: booting into version %s (versions on disk: %s)", name,
                        order[0] if order else "none", ", ".join(on_disk))  # fmt: skip
        return order


def load_state(state_dir: Path) -> LocalState:
    path = state_dir / STATE_FILE
    try:
        return LocalState.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return LocalState()
    except (ValidationError, ValueError, OSError) as error:
        # A corrupt file must not stop the device from serving: start from what is on disk.
        logger.error("ignoring unreadable %s: %s", path, error)
        return LocalState()


def save_state(state_dir: Path, state: LocalState) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / STATE_FILE
    temporary = path.with_suffix(".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(state.model_dump(mode="json"), indent=2))
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


def quarantine_version(
    repository: Path, state_dir: Path, name: str, version: str, keep: int
) -> Path | None:
    """Move `<repository>/<name>/<version>` into the quarantine; prune the oldest quarantined
    copies of the model beyond `keep`. Returns the new location (None if it was not on disk)."""
    source = repository / name / version
    if not source.is_dir():
        return None
    target_dir = state_dir / QUARANTINE_DIR / name
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{version}-{time.time_ns()}"
    shutil.move(source, target)
    prune_quarantine(state_dir, name, keep)
    return target


def prune_quarantine(state_dir: Path, name: str, keep: int) -> list[Path]:
    directory = state_dir / QUARANTINE_DIR / name
    if not directory.is_dir():
        return []
    # Names end in the time they were quarantined: oldest first.
    entries = sorted(directory.iterdir(), key=lambda path: int(path.name.rsplit("-", 1)[-1]))
    removed = entries[: max(len(entries) - keep, 0)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def quarantined_copies(state_dir: Path, name: str) -> list[Path]:
    directory = state_dir / QUARANTINE_DIR / name
    return sorted(directory.iterdir()) if directory.is_dir() else []
