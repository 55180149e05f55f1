"""Build the researcher's module: import `MODULE:FACTORY`, call it, load the weights."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from edgefleet.export.errors import FactoryFailed, ModuleImportFailed, WeightsMismatch

if TYPE_CHECKING:
    import torch

# How many mismatched keys a message names before it says "and N more".
_NAMED_KEYS = 5


def resolve_factory(target: str) -> Any:
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ModuleImportFailed(
            f"{target!r}: expected MODULE:FACTORY, e.g. mypkg.models:build or models.py:build"
        )
    try:
        module = _import(module_name)
    except ModuleImportFailed:
        raise
    except Exception as exc:  # any import-time failure in user code is the user's to see
        hint = ""
        if isinstance(exc, ModuleNotFoundError) and exc.name and module_name.startswith(exc.name):
            hint = " (is the directory holding it on PYTHONPATH?)"
        raise ModuleImportFailed(
            f"module {module_name!r} does not import: {type(exc).__name__}: {exc}{hint}"
        ) from exc
    factory: Any = module
    for part in attribute.split("."):
        try:
            factory = getattr(factory, part)
        except AttributeError:
            raise ModuleImportFailed(
                f"module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not callable(factory):
        raise ModuleImportFailed(f"{target!r} is a {type(factory).__name__}, not a callable")
    return factory


def _import(module_name: str) -> ModuleType:
    """A dotted module name, or a path to a `.py` file (what a researcher often hands over)."""
    if not module_name.endswith(".py"):
        return importlib.import_module(module_name)
    path = Path(module_name).resolve()
    if not path.is_file():
        raise ModuleImportFailed(f"module file {module_name} does not exist")
    # A stable, unique name: TorchScript and pickling look classes up through sys.modules.
    name = f"_edgefleet_export_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModuleImportFailed(f"module file {module_name} cannot be loaded as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def build_module(target: str, weights: Path | None) -> torch.nn.Module:
    """The eval-mode module from `MODULE:FACTORY`, with `weights` loaded strictly if given."""
    import torch

    factory = resolve_factory(target)
    try:
        model = factory()
    except Exception as exc:
        raise FactoryFailed(f"factory {target!r} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, torch.nn.Module):
        raise FactoryFailed(
            f"factory {target!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def read_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        loaded = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsMismatch(f"weights file {weights} does not exist") from None
    except Exception as exc:
        raise WeightsMismatch(f"weights file {weights} is not a torch state dict: {exc}") from exc
    # Training checkpoints often wrap the state dict.
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in loaded.values()
    ):
        raise WeightsMismatch(f"weights file {weights} holds no state dict of tensors")
    state = {str(key): value for key, value in loaded.items()}
    # nn.DataParallel saves every key with a "module." prefix.
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def _named(keys: list[str]) -> str:
    shown = ", ".join(keys[:_NAMED_KEYS])
    more = len(keys) - _NAMED_KEYS
    return f"{shown} and {more} more" if more > 0 else shown


def load_weights(model: torch.nn.Module, weights: Path) -> None:
    """Load strictly; a mismatch names the first missing, unexpected and reshaped keys."""
    state = read_state_dict(weights)
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [
        f"{key} (file {list(state[key].shape)}, model {list(value.shape)})"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_named(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_named(unexpected)}")
    if reshaped:
        problems.append(f"shape mismatch: {_named(reshaped)}")
    if problems:
        raise WeightsMismatch(
            f"weights {weights.name} do not match {type(model).__name__}: " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=True)
