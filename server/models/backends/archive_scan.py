"""Refuse TorchScript archives whose pickles name anything but what TorchScript itself needs.

`torch.jit.load` unpickles the archive's `*.pkl` members; a pickle names the callables it
rebuilds objects with as GLOBAL / STACK_GLOBAL opcodes. A real TorchScript file names only its
own scripted classes (`__torch__.*`, whose code runs confined in the worker) and the tensor and
storage rebuilders below (checked against every TorchScript model of the default repository:
EfficientNet-Lite0 and the three MTCNN networks). Anything else (`os.system`, `builtins.eval`)
is refused before any byte of the archive is unpickled. No torch import: the server scans."""

from __future__ import annotations

import pickletools
import re
import zipfile
from pathlib import Path

from server.errors import ModelLoadError

ALLOWED_GLOBALS = frozenset(
    {
        "torch._utils._rebuild_tensor_v2",
        "collections.OrderedDict",
        # TorchScript tags the element types of its typed lists and dicts with it.
        "torch.jit._pickle.restore_type_tag",
    }
)
# torch.FloatStorage, torch.HalfStorage, ... (storage type of each tensor's bytes).
_STORAGE = re.compile(r"torch\.[A-Z][A-Za-z]*Storage")
_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})


def _allowed(qualified: str) -> bool:
    return (
        qualified in ALLOWED_GLOBALS
        or _STORAGE.fullmatch(qualified) is not None
        or qualified.startswith("__torch__.")
    )


def pickle_globals(data: bytes) -> list[str]:
    """Every `module.name` a pickle's GLOBAL and STACK_GLOBAL opcodes name, in order.

    STACK_GLOBAL takes its two strings from the stack; they are pushed as string opcodes or
    fetched from the memo, which is followed here for strings (anything else is unknown)."""
    names: list[str] = []
    recent: list[str | None] = []
    memo: dict[int, str | None] = {}
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            module, _, name = str(arg).partition(" ")
            names.append(f"{module}.{name}")
            recent.append(None)
        elif opcode.name in _STRING_OPS:
            recent.append(str(arg))
        elif opcode.name in _PUT_OPS:
            memo[int(arg) if arg is not None else len(memo)] = recent[-1] if recent else None
        elif opcode.name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif opcode.name in _GET_OPS:
            recent.append(memo.get(int(arg)) if isinstance(arg, int) else None)
        elif opcode.name == "STACK_GLOBAL":
            pushed_module = recent[-2] if len(recent) >= 2 else None
            pushed_name = recent[-1] if recent else None
            # Names not pushed as plain strings are refused: they cannot be checked.
            names.append(
                f"{pushed_module}.{pushed_name}"
                if pushed_module and pushed_name
                else "<computed>.<computed>"
            )
            recent.append(None)
        else:
            recent.append(None)
        del recent[:-2]
    return names


def check_torchscript_archive(model_path: Path, model: str) -> None:
    """Raise ModelLoadError naming the first global outside the allow-list, or a member that
    is not a readable pickle."""
    try:
        with zipfile.ZipFile(model_path) as archive:
            members = [info for info in archive.infolist() if info.filename.endswith(".pkl")]
            if not members:
                raise ModelLoadError(
                    f"{model}: {model_path.name} holds no pickles: not TorchScript"
                )
            for info in members:
                data = archive.read(info)
                try:
                    named = pickle_globals(data)
                except Exception as exc:  # pickletools raises ValueError and others
                    raise ModelLoadError(
                        f"{model}: {model_path.name} member {info.filename} is not a valid "
                        f"pickle ({type(exc).__name__})"
                    ) from None
                for qualified in named:
                    if not _allowed(qualified):
                        raise ModelLoadError(
                            f"{model}: refused {model_path.name}: its pickle "
                            f"{info.filename} names {qualified}, which TorchScript never "
                            "needs (only tensors, storages and scripted classes are allowed)"
                        )
    except zipfile.BadZipFile:
        raise ModelLoadError(
            f"{model}: {model_path.name} is not a TorchScript zip archive"
        ) from None
