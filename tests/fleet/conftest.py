"""Fleet fixtures: a real controller on loopback with its own CA and SQLite or PostgreSQL store,
three edge nodes with traffic, and real nginx and PostgreSQL servers for the tests that need
them. Helpers live in testkit/; this file holds fixtures only."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleet.controller.app import ControllerApp
from fleet.ctl.client import AdminClient, AdminCredential
from fleet.keys import generate_keypair
from testkit.fleet import controller_settings, start_nodes
from testkit.load import cpu_hog as hog_every_core
from testkit.services import Nginx, Postgres, start_nginx, start_postgres


@pytest.fixture
def cpu_hog() -> Iterator[None]:
    """The machine loaded (issue 24, item 3): a test using this passes beside one busy process
    per core, so it cannot depend on a quiet machine."""
    with hog_every_core():
        yield


@pytest.fixture
def signing_keys(tmp_path: Path) -> tuple[Path, Path]:
    """(private key, public key) of the release signing key."""
    return generate_keypair(tmp_path / "keys", "release")


# The PostgreSQL variant starts an external service: a system test.
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.system)])
async def controller(
    request: pytest.FixtureRequest, tmp_path: Path, signing_keys: tuple[Path, Path]
):
    """A controller on each store: SQLite, and a fresh database on the session's PostgreSQL."""
    store: dict[str, object] = {}
    if request.param == "postgresql":
        postgres = request.getfixturevalue("postgres_server")
        database = postgres.create_database()
        store = {"store": postgres.dsn(database, with_password=False),
                 "store_password": postgres.password}  # fmt: skip
    app = ControllerApp(
        controller_settings(tmp_path / "controller", signing_keys[1].parent, **store)
    )
    await app.start()
    yield app
    await app.stop(0.2)


@pytest.fixture
async def admin(controller: ControllerApp):
    credential = AdminCredential.load(controller.admin_credential_path)
    async with AdminClient.connect(credential, f"127.0.0.1:{controller.port}") as client:
        yield client


@pytest.fixture
async def nodes(tmp_path, controller, admin, signing_keys):
    started = await start_nodes(tmp_path, 3, controller, admin, (signing_keys[1],))
    yield started
    for node in started:
        await node.stop()


@pytest.fixture
def nginx_factory(tmp_path: Path) -> Iterator[Callable[[dict[str, Path]], Nginx]]:
    """`start(roots)` starts an nginx for this test; all are stopped afterwards."""
    started: list[Nginx] = []

    def start(roots: dict[str, Path]) -> Nginx:
        server = start_nginx(tmp_path / f"nginx{len(started)}", roots)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """One PostgreSQL server for the session (initdb takes seconds); tests take a database each."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.remove("immediate")


@pytest.fixture
def postgres_dsn(postgres_server: Postgres) -> str:
    """The DSN of a fresh database on the session's PostgreSQL server (password included)."""
    return postgres_server.dsn(postgres_server.create_database())
