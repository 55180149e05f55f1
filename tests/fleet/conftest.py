"""Fleet fixtures: a real controller on loopback with its own CA and SQLite store, and three
edge nodes with traffic."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.controller.app import ControllerApp
from fleet.controller.settings import ControllerSettings
from fleet.ctl.client import AdminClient, AdminCredential
from fleet.keys import generate_keypair
from tests.fleet.harness import start_node, wait_for

# Real nginx and PostgreSQL servers, for the tests that need them.
from tests.fleet.services import nginx_factory, postgres_dsn, postgres_server  # noqa: F401


@pytest.fixture
def signing_keys(tmp_path: Path) -> tuple[Path, Path]:
    """(private key, public key) of the release signing key."""
    return generate_keypair(tmp_path / "keys", "release")


def controller_settings(data_dir: Path, trusted: Path, **overrides: object) -> ControllerSettings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "port": 0,
        "enroll_port": 0,
        "metrics_port": -1,
        "trusted_keys": (trusted,),
        "telemetry_interval_s": 0.2,
        # Offline after 2 s of silence: a loaded test machine can delay a 0.2 s sample.
        "offline_after_intervals": 10,
        "rollout_tick_s": 0.1,
        "telemetry_flush_s": 0.2,
        "shutdown_grace_s": 0.2,
    }
    values.update(overrides)
    return ControllerSettings.model_validate(values)


@pytest.fixture(params=["sqlite", "postgresql"])
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
    started = []
    for index in range(3):
        node = await start_node(
            f"cam-{index}", tmp_path / f"node{index}", controller, admin, (signing_keys[1],)
        )
        node.start_traffic()
        started.append(node)
    await wait_for(lambda: all(node.online() for node in started), 20, "agents online")
    yield started
    for node in started:
        await node.stop()
