"""Model repositories for tests and benchmarks: where this checkout and its built default models
are, and copies of them. Standard library only: every process may import it cheaply."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Built once by `make models` (the pretrained EfficientNet-Lite0 and friends).
BUILT_MODELS = ROOT / "models"
ONNX_MODEL = "efficientnet_lite0"
TORCHSCRIPT_MODEL = "efficientnet_lite0_torchscript"


def built_models_missing() -> str | None:
    """Why the default models cannot be used, or None when they are built."""
    if not (BUILT_MODELS / ONNX_MODEL / "1" / "manifest.json").is_file():
        return "the default models are missing: run `make models` (make test does it)"
    return None


def copy_model(source_repo: Path, name: str, target_repo: Path, version: str = "1") -> Path:
    """Copy version 1 of one model as `version`; big files are hard-linked (tests and
    benchmarks never modify them in place, only manifests, which are copied)."""
    target = target_repo / name / version
    shutil.copytree(source_repo / name / "1", target, copy_function=_link_or_copy)
    if version != "1":
        manifest = target / "manifest.json"
        text = manifest.read_text().replace('"version": "1"', f'"version": "{version}"')
        manifest.write_text(text)
    return target


def _link_or_copy(source: str, target: str) -> None:
    if source.endswith(".onnx") or source.endswith(".pt"):
        try:
            Path(target).hardlink_to(source)
            return
        except OSError:
            pass
    shutil.copy2(source, target)
