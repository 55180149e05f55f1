"""What a model needs beyond the device install (`pip install edgefleet`), and which extra
brings it. Checked before a model loads, without importing anything: a TorchScript model on a
device without torch is refused with the command that fixes it, and the other models serve."""

from __future__ import annotations

import importlib.util

from server.errors import MissingExtra
from server.manifest import ModelManifest

# (what needs it, the modules it imports, the extra that installs them)
_NEEDS = {
    "torchscript": ("TorchScript models run on torch", ("torch",), "torchscript"),
    "db_text": ("the db_text postprocess takes contours with OpenCV", ("cv2", "pyclipper"), "ocr"),
}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_extras(manifest: ModelManifest) -> None:
    """Raise MissingExtra if `manifest` needs a package this install lacks."""
    for key in (manifest.format, manifest.postprocess.kind):
        need = _NEEDS.get(key)
        if need is None:
            continue
        why, modules, extra = need
        missing = [module for module in modules if not installed(module)]
        if missing:
            raise MissingExtra(
                f"{manifest.name}/{manifest.version}: {why}, and this install has no "
                f"{' or '.join(missing)}: pip install 'edgefleet[{extra}]'"
            )
