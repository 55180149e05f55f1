"""Write repository entries all-or-nothing: stage beside the repository, then rename into place.

The staging directory lives inside the repository (a rename is atomic only within one file
system) under a dot-name that no model may have, and is removed whatever happens.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from edgefleet.export.errors import VersionExists

STAGING_PREFIX = ".edgefleet-export-"


def next_version(repository: Path, names: Iterable[str]) -> str:
    """One above the highest version any of `names` has; "1" for new models."""
    versions = [
        int(child.name)
        for name in names
        if (repository / name).is_dir()
        for child in (repository / name).iterdir()
        if child.is_dir() and child.name.isdigit()
    ]
    return str(max(versions, default=0) + 1)


def ensure_free(repository: Path, names: Iterable[str], version: str, overwrite: bool) -> None:
    taken = [f"{name}/{version}" for name in names if (repository / name / version).exists()]
    if taken and not overwrite:
        raise VersionExists(
            f"{', '.join(taken)} already exist in {repository}; pick another --version or "
            "pass --overwrite"
        )


class Staging:
    """Version directories built under one temporary directory, committed together."""

    def __init__(self, repository: Path, root: Path) -> None:
        self._repository = repository
        self._root = root
        self._entries: list[tuple[str, str]] = []

    @property
    def root(self) -> Path:
        return self._root

    def version_dir(self, name: str, version: str) -> Path:
        path = self._root / name / version
        path.mkdir(parents=True)
        self._entries.append((name, version))
        return path

    def discard(self, name: str, version: str) -> None:
        shutil.rmtree(self._root / name / version)
        self._entries.remove((name, version))

    def commit(self, overwrite: bool) -> list[Path]:
        """Rename every staged version into the repository; replaced versions are removed.

        Versions that appeared since `ensure_free` (another export) are refused before any
        rename, so either all entries land or none does."""
        if not overwrite:
            for name, version in self._entries:
                ensure_free(self._repository, [name], version, overwrite=False)
        placed = []
        for name, version in self._entries:
            target = self._repository / name / version
            target.parent.mkdir(parents=True, exist_ok=True)
            replaced = self._root / f"replaced-{name}-{version}"
            if target.exists():
                # Move the old version aside first; it is deleted with the staging directory.
                target.rename(replaced)
            try:
                (self._root / name / version).rename(target)
            except OSError:
                if replaced.exists():
                    replaced.rename(target)
                raise
            placed.append(target)
        return placed


@contextmanager
def staging(repository: Path) -> Iterator[Staging]:
    created = not repository.exists()
    repository.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=repository))
    try:
        yield Staging(repository, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        # A repository this export created and left empty is removed too.
        if created and not any(repository.iterdir()):
            repository.rmdir()
