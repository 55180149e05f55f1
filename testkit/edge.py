"""Edge servers for tests and benchmarks: the real EdgeServer in this process on port 0, and
`edgefleet serve` as a child process that reports its port in a port file.

The server package is imported only by the in-process helpers: a benchmark that only starts
`edgefleet serve` children keeps its own process free of onnxruntime and the server.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from testkit.processes import EDGEFLEET, Spawned, spawn
from testkit.repositories import ROOT

if TYPE_CHECKING:
    from server.app import EdgeServer
    from server.settings import ServerSettings


def server_settings(repository: Path, **overrides: object) -> ServerSettings:
    """Loopback, port 0, metrics and HTTP off, a short shutdown grace; `overrides` win."""
    from server.settings import ServerSettings

    values: dict[str, object] = {
        "repository": repository,
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": -1,
        "http_port": -1,
        "shutdown_grace_s": 2.0,
    }
    values.update(overrides)
    return ServerSettings(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running_server(repository: Path, **overrides: object) -> AsyncIterator[EdgeServer]:
    """The real server on `repository` (settings as `server_settings`), stopped afterwards."""
    from server.app import EdgeServer

    server = EdgeServer(server_settings(repository, **overrides))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace_s=1.0)


def serve_command(*args: str) -> list[str]:
    """`edgefleet serve ARGS` as this checkout's Python runs it."""
    return [*EDGEFLEET, "serve", *args]


def start_serve(
    workdir: Path,
    *args: str,
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
    poll_s: float = 0.05,
    stdout_to_log: bool = True,
) -> Spawned:
    """`edgefleet serve --port-file WORKDIR/port ARGS`, its log in WORKDIR/serve-N.log; returns
    once it listens (`.port`). Give it `--repository`, ports and planner in `args`."""
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / "port"
    port_file.unlink(missing_ok=True)
    log = workdir / f"serve-{len(list(workdir.glob('serve-*.log')))}.log"
    command = serve_command("--port-file", str(port_file), *args)
    child = spawn(command, log, cwd=cwd, env=env, stdout_to_log=stdout_to_log)
    try:
        child.wait_for_port_file(port_file, timeout_s, poll_s)
    except BaseException:
        child.kill()
        raise
    return child
