"""Shared by the export tests: run the real `edgefleet` CLI in-process, snapshot a repository,
and the sample model factories (testkit/export_samples/) they export."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from edgefleet.cli import build_app

# Model factories the export tests and bench/bench_export.py hand to `edgefleet export`.
SAMPLES = "testkit.export_samples"


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def report(self) -> dict[str, Any]:
        """The JSON report (the command ran with `--output json`)."""
        return json.loads(self.stdout)  # type: ignore[no-any-return]


def export_cli(*args: str | Path) -> CliResult:
    """`edgefleet export ARGS --output json` through the umbrella app, as a user would run it."""
    result = CliRunner().invoke(
        build_app(), ["export", *map(str, args), "--output", "json"], catch_exceptions=False
    )
    return CliResult(result.exit_code, result.stdout, result.stderr)


def snapshot(repository: Path) -> dict[str, str]:
    """Every path under the repository (directories too) with the sha256 of each file."""
    if not repository.exists():
        return {}
    return {
        path.relative_to(repository).as_posix(): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        )
        for path in sorted(repository.rglob("*"))
    }
