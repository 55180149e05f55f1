"""The process a TorchScript model runs in: `python -m server.models.backends.torchscript_worker
FD`, started by ConfinedTorchScriptBackend (confined_torchscript.py) with one end of a socket
pair as FD. It imports torch, opens the archive and a private temporary directory as the
server's user, then confines itself (confine.py: uid `nobody`, no_new_privs, Landlock: read its
version directory and the Python installation, write only its temporary directory; seccomp: no
sockets) before torch unpickles a byte of the model, then serves runs until the socket closes."""

from __future__ import annotations

import io
import os
import socket
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch  # noqa: F401  (imported before confinement: after it, /root may be out of reach)

import server
from server.errors import EdgeError, first_line
from server.models.backends import worker_wire
from server.models.backends.confine import confine, die_with_parent
from server.models.backends.torchscript import TorchScriptBackend

# What the interpreter, torch and numpy read after start-up (lazy imports, shared libraries).
_SYSTEM_READ = (
    "/usr/lib",
    "/usr/lib64",
    "/lib",
    "/lib64",
    "/usr/local/lib",
    "/etc/ld.so.cache",
    # cpuinfo (torch's CPU feature probe, first used by the first convolution).
    "/proc/cpuinfo",
    "/sys/devices/system/cpu",
)


def _readable(version_dir: Path) -> list[Path]:
    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(server.__file__).parent, version_dir}
    paths.update(Path(value) for value in sysconfig.get_paths().values())
    paths.update(Path(module.__file__).parent for module in (np, torch) if module.__file__)
    return sorted(paths) + [Path(path) for path in _SYSTEM_READ]


def _use_tmp(tmp: Path) -> Path:
    """The private directory the server made for this worker (and removes after it)."""
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = str(tmp)
    return tmp


def _resident_bytes() -> int:
    """This process's resident set (read before confinement: /proc is not in its allow-list)."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _load(sock: socket.socket, request: dict[str, Any]) -> TorchScriptBackend:
    # What the worker costs before its model: Python, numpy and libtorch, imported above.
    # The server's hardware planner counts it for the next TorchScript version it plans.
    process_bytes = _resident_bytes()
    model_path = Path(request["model_path"])
    version_dir = Path(request["version_dir"])
    source = io.BytesIO(model_path.read_bytes())
    tmp = _use_tmp(Path(request["tmp"]))
    confinement = confine(
        _readable(version_dir),
        [tmp, Path("/dev/null")],
        require_landlock=not request["allow_unconfined"],
    )
    die_with_parent(request["server_pid"])
    backend = TorchScriptBackend(
        model_path,
        model=request["model"],
        input_names=request["input_names"],
        output_names=request["output_names"],
        threads=request["threads"],
        source=source,
    )
    worker_wire.send(
        sock,
        {
            "ok": True,
            "description": f"{backend.description}, {confinement.summary}",
            "process_bytes": process_bytes,
        },
    )
    return backend


def serve(sock: socket.socket) -> None:
    request, _ = worker_wire.receive(sock)
    try:
        backend = _load(sock, request)
    except EdgeError as exc:
        worker_wire.send(sock, {"ok": False, "error": str(exc)})
        return
    except Exception as exc:
        worker_wire.send(sock, {"ok": False, "error": f"{type(exc).__name__}: {first_line(exc)}"})
        return
    while True:
        try:
            header, arrays = worker_wire.receive(sock)
        except worker_wire.PeerGone:
            return
        names: list[str] = header["inputs"]
        wanted: list[str] = header["outputs"]
        try:
            outputs = backend.run(dict(zip(names, arrays, strict=True)), wanted)
        except Exception as exc:  # the model's own error: answered, the worker lives on
            # For the server's log, never the client: the last line of torch's trace says why.
            lines = [line for line in str(exc).splitlines() if line.strip()] or [""]
            error = f"{type(exc).__name__}: {lines[-1].strip()[:300]}"
            worker_wire.send(sock, {"ok": False, "error": error})
            continue
        worker_wire.send(sock, {"ok": True, "outputs": wanted}, [outputs[n] for n in wanted])


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    try:
        serve(sock)
    finally:
        sock.close()


if __name__ == "__main__":
    main()
