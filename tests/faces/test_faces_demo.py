"""`edgefleet demo --model faces`: the default repository's face pipeline, end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from testkit.repositories import ROOT

# Runs the faces demo as a child process: a system test.
pytestmark = pytest.mark.system


def test_demo_prints_each_frames_faces_with_landmarks(built_models):
    # Frames: astronaut (1 face), 640x480 with 1, 3 and 5 faces, coffee (none).
    done = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "demo", "--repository", str(built_models),
         "--model", "faces", "--frames", "5", "--fps", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=240, env={**os.environ, "COLUMNS": "400"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = {
        int(match.group(1)): line
        for line in done.stdout.splitlines()
        if (match := re.match(r"frame\s+(\d+)", line))
    }
    faces = {sequence: line.count("'face'") for sequence, line in lines.items()}
    landmarks = {sequence: line.count("5 landmarks") for sequence, line in lines.items()}
    # The stream may drop frames it cannot keep up with; the ones answered must be right.
    expected = {1: 1, 2: 1, 3: 3, 4: 5, 5: 0}
    assert faces and all(faces[sequence] == expected[sequence] for sequence in faces), lines
    assert landmarks == faces
    assert all("no face" in lines[sequence] for sequence in faces if expected[sequence] == 0)
