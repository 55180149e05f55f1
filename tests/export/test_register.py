"""`register` stays cheap: listing commands must not import torch, onnx or onnxruntime."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Runs the edgefleet CLI as a child process: a system test.
pytestmark = pytest.mark.system

PROBE = """
import sys, click

from edgefleet.export.cli import register
register(click.Group())
heavy = [name for name in ("torch", "onnx", "onnxruntime", "numpy") if name in sys.modules]
print(",".join(heavy))
"""


def test_register_imports_no_heavy_library() -> None:
    # A fresh interpreter: this test process has long imported torch.
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
