"""The one writer every generated test model goes through (testkit/fleet_models.py,
tiny_models.py, slow_model.py): a real model version with hashes the server verifies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from server.manifest import ModelManifest, hash_directory, write_manifest


def write_onnx_version(
    version_dir: Path, model: onnx.ModelProto, *, labels: int = 0, **manifest: Any
) -> Path:
    """Write a generated model as a real version: model.onnx, `labels` lines of labels.txt
    ("class N") when asked, and a manifest of the `manifest` fields with the files' hashes."""
    version_dir.mkdir(parents=True)
    onnx.save(model, str(version_dir / "model.onnx"))
    if labels:
        (version_dir / "labels.txt").write_text(
            "\n".join(f"class {index}" for index in range(labels)) + "\n"
        )
    fields = {"format": "onnx", "model_file": "model.onnx", **manifest}
    write_manifest(version_dir, ModelManifest(**fields, files=hash_directory(version_dir)))
    return version_dir
