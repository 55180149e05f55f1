"""Generates the protobuf modules into the wheel, so `pip install .` works from a fresh clone.

The generated `*_pb2*.py` files are never committed (`make protos` writes them for an editable
checkout). A wheel built here gets them from the build requirement grpcio-tools (pyproject's
[build-system]), written into the build directory only: the checkout is left as it was, and the
installed package never needs the protobuf compiler.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        super().run()
        sources = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "protos").rglob("*.proto"))
        if not sources:
            return
        target = Path(self.build_lib)
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", "-I.", f"--python_out={target}",
             f"--pyi_out={target}", f"--grpc_python_out={target}", *sources],
            cwd=ROOT, check=True,
        )  # fmt: skip


setup(cmdclass={"build_py": BuildPyWithProtos})
