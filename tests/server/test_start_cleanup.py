"""A server that cannot start cleans up what it made: a taken port raises PortInUse with the
port in the message, and the gRPC server object it had bound is stopped at once (its port free
again, no 'AioServer.shutdown was never awaited' when it is collected)."""

from __future__ import annotations

import gc
import socket
import warnings
from pathlib import Path

import pytest

from server.app import EdgeServer
from server.errors import PortInUse, RequiredModelFailed
from testkit.edge import server_settings


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_taken_grpc_port_is_reported_and_leaves_no_server_behind(repository: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = EdgeServer(server_settings(repository, port=port))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(PortInUse, match=f"cannot listen on 127.0.0.1:{port}"):
                await server.start()
            del server
            gc.collect()
    leaked = [str(item.message) for item in caught if "never awaited" in str(item.message)]
    assert not leaked, leaked


async def test_a_failed_boot_releases_the_grpc_port_it_had_bound(repository: Path):
    grpc_port = _free_port()
    # The ports are bound first; then a model the operator named is missing.
    server = EdgeServer(server_settings(repository, port=grpc_port, models=("no_such_model",)))
    with pytest.raises(RequiredModelFailed, match="no_such_model"):
        await server.start()
    # The failed start's gRPC server is stopped, not left bound: its port is free again while
    # the server object and the failure's traceback are still at hand.
    assert _bindable(grpc_port)
    # And on it a new server starts.
    retry = EdgeServer(server_settings(repository, port=grpc_port))
    assert await retry.start() == grpc_port
    await retry.stop(grace_s=0)


async def test_taken_http_port_is_reported_before_the_grpc_port_is_bound(repository: Path):
    grpc_port = _free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        http_port = taken.getsockname()[1]
        server = EdgeServer(server_settings(repository, port=grpc_port, http_port=http_port))
        with pytest.raises(PortInUse, match=f"cannot serve HTTP on 127.0.0.1:{http_port}"):
            await server.start()
    assert _bindable(grpc_port)
