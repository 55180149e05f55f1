"""The camera example in each language (client/examples/), built by `make stubs`' script."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.repositories import ROOT


@dataclass(frozen=True)
class BuiltClients:
    """Each language's camera example, run as `command + [--json] HOST:PORT MODEL FILE...`."""

    commands: dict[str, list[str]]
    # Language -> why `make stubs` could not build it (its toolchain is not installable here).
    skipped: dict[str, str]

    def command(self, language: str) -> list[str]:
        if language in self.skipped:
            pytest.skip(f"{language} camera not built: {self.skipped[language]}")
        return self.commands[language]


def build_camera_examples() -> BuiltClients:
    """Run `make stubs`' script: it installs the toolchains it needs from Debian, regenerates
    every language's code from protos/ and rebuilds only what changed (the first run on a fresh
    machine compiles everything; later ones take seconds). C++ and Node are required: a
    toolchain that will not install there is a failure, not a skip. Go and Java are skipped,
    with the script's reason, only where Debian cannot provide them."""
    completed = subprocess.run(
        ["bash", str(ROOT / "scripts/gen_stubs.sh")],
        env={**os.environ, "STUBS_QUICK": "1"},  # buf has tests of its own
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-6000:]
    skipped = {}
    for line in completed.stdout.splitlines():
        language, _, reason = line.removeprefix("skipped: ").partition(": ")
        if line.startswith("skipped: ") and language in ("go", "java"):
            skipped[language] = reason
    commands = {
        "python": [sys.executable, str(ROOT / "client/examples/python/camera.py")],
        "node": ["node", str(ROOT / "client/examples/node/camera.js")],
        "cpp": [str(ROOT / "build/examples/cpp/edgefleet_camera")],
        "go": [str(ROOT / "build/examples/go/edgefleet_camera")],
        "java": [str(ROOT / "build/examples/java/edgefleet_camera")],
    }
    for language in ("cpp", "go", "java"):
        if language not in skipped:
            assert Path(commands[language][0]).is_file(), f"no {language} camera:\n{output}"
    return BuiltClients(commands, skipped)
