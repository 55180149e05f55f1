"""The store contract, run against both stores: SQLite (the embedded default) and PostgreSQL (a
real server started by the test session, see tests/fleet/services.py). Then what only
PostgreSQL has: versioned migrations from an empty database and from the previous version, and
a store that survives its server restarting."""

from __future__ import annotations

import math
import os
import subprocess
import threading
from pathlib import Path

import psycopg
import pytest

from fleet.controller.store.pg_migrations import LATEST, MIGRATIONS, SchemaTooNew, migrate
from fleet.controller.store.postgres import PostgresStore, redacted
from fleet.controller.store.protocol import Store
from fleet.controller.store.records import (
    AuditRecord,
    BundleRecord,
    DesiredEntry,
    DeviceRecord,
    Measurement,
    RolloutRecord,
    RolloutSpec,
    Verdict,
)
from fleet.controller.store.sqlite import SqliteStore
from fleet.errors import PermissionDenied
from testkit.fleet_processes import start_controller
from testkit.processes import EDGEFLEET


# The PostgreSQL variant starts an external service: a system test.
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.system)])
def store(request, tmp_path: Path):
    if request.param == "sqlite":
        opened: Store = SqliteStore(tmp_path / "controller.db")
    else:
        postgres = request.getfixturevalue("postgres_server")
        opened = PostgresStore(
            postgres.dsn(postgres.create_database(), with_password=False),
            password=postgres.password,
        )
    yield opened
    opened.close()


def _device(device_id: str, **changes) -> DeviceRecord:
    return DeviceRecord(device_id=device_id, enrolled_at=1.0, labels={"site": "a"}, **changes)


def _bundle(sha: str, version: str, at: float) -> BundleRecord:
    return BundleRecord(sha256=sha, name="m", version=version, size=10, key_id="k", path=f"/{sha}",
                        uploaded_at=at)  # fmt: skip


def _rollout(rollout_id: str, created_at: float) -> RolloutRecord:
    spec = RolloutSpec(bundle_sha256="b" * 64, steps=[50, 100], bake_s=1)
    return RolloutRecord(rollout_id=rollout_id, model_name="m", version="2", bundle_size=10,
                         spec=spec, created_at=created_at, updated_at=created_at)  # fmt: skip


def test_tokens_are_consumed_once(store):
    store.add_token("h1", {"site": "a"}, expires_at=100.0)
    store.add_token("old", {}, expires_at=5.0)
    assert store.consume_token("h1", "cam-1", now=10.0) == {"site": "a"}
    with pytest.raises(PermissionDenied, match="already used"):
        store.consume_token("h1", "cam-2", now=11.0)
    with pytest.raises(PermissionDenied, match="expired"):
        store.consume_token("old", "cam-3", now=10.0)
    with pytest.raises(PermissionDenied, match="unknown"):
        store.consume_token("nope", "cam-4", now=10.0)


def test_a_token_raced_by_many_threads_enrolls_exactly_one_device(store):
    store.add_token("race", {}, expires_at=100.0)
    winners: list[str] = []
    refused: list[str] = []

    def enroll(device_id: str) -> None:
        try:
            store.consume_token("race", device_id, now=1.0)
            winners.append(device_id)
        except PermissionDenied:
            refused.append(device_id)

    threads = [threading.Thread(target=enroll, args=(f"cam-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1 and len(refused) == 7


def test_devices_and_their_desired_state(store):
    store.upsert_device(_device("cam-b"))
    store.upsert_device(_device("cam-a"))
    store.upsert_device(_device("cam-b", active_versions={"m": "2"}, last_seen=9.5))
    assert [device.device_id for device in store.list_devices()] == ["cam-a", "cam-b"]
    assert store.get_device("cam-b").active_versions == {"m": "2"}
    assert store.get_device("ghost") is None
    store.set_desired([
        DesiredEntry(device_id="cam-a", model="m", version="1", source="pin"),
        DesiredEntry(device_id="cam-b", model="m", version="1"),
        DesiredEntry(device_id="cam-b", model="n", version="4"),
    ])  # fmt: skip
    store.set_desired([DesiredEntry(device_id="cam-a", model="m", version="3", source="pin")])
    assert [entry.version for entry in store.desired_for("cam-a")] == ["3"]
    store.delete_desired("cam-b", "n")
    assert [(entry.device_id, entry.model) for entry in store.all_desired()] == [
        ("cam-a", "m"), ("cam-b", "m"),
    ]  # fmt: skip
    store.delete_device("cam-a")
    assert store.get_device("cam-a") is None and store.desired_for("cam-a") == []


def test_bundles_by_digest_and_by_version_newest_first(store):
    store.add_bundle(_bundle("a" * 64, "2", 1.0))
    store.add_bundle(_bundle("b" * 64, "2", 2.0))
    assert store.find_bundle("m", "2").sha256 == "b" * 64
    store.add_bundle(_bundle("a" * 64, "2", 3.0))  # uploaded again: now the newest
    assert store.find_bundle("m", "2").sha256 == "a" * 64
    assert store.get_bundle("b" * 64).uploaded_at == 2.0
    assert store.get_bundle("c" * 64) is None and store.find_bundle("m", "9") is None


def test_a_rollout_and_its_desired_state_change_together(store):
    store.set_desired([DesiredEntry(device_id="cam-x", model="m", version="1")])
    rollout = _rollout("r1", 5.0)
    store.save_rollout(
        rollout,
        desired=[DesiredEntry(device_id="cam-a", model="m", version="2", source="rollout:r1")],
        undesired=[("cam-x", "m")],
    )
    store.save_rollout(_rollout("r0", 1.0))
    assert [record.rollout_id for record in store.list_rollouts()] == ["r0", "r1"]
    assert store.desired_for("cam-x") == [] and store.desired_for("cam-a")[0].version == "2"
    changed = rollout.model_copy(update={"current_wave": 1, "reason": "wave 0 passed"})
    store.save_rollout(changed)
    assert store.get_rollout("r1") == changed and store.get_rollout("r9") is None
    nan = Measurement(wave=0, gate="fps >= 1", metric="fps", canary_value=math.nan,
                      baseline_value=2.0, threshold=1.0, verdict=Verdict.INCONCLUSIVE,
                      canary_devices=0, baseline_devices=1, evaluated_at=7.0)  # fmt: skip
    store.add_measurements("r1", [nan, nan.model_copy(update={"wave": 1})])
    store.add_measurements("r1", [])
    measured = store.measurements("r1")
    assert [m.wave for m in measured] == [0, 1] and math.isnan(measured[0].canary_value)


def test_telemetry_window_and_pruning(store):
    store.add_telemetry([("cam-a", float(t), f'{{"t": {t}}}') for t in range(10)])
    store.add_telemetry([("cam-b", 3.5, '{"x": "tab\\there, quote \\" and newline\\n"}')])
    store.add_telemetry([])
    assert store.telemetry("cam-a", since=4.0, limit=3) == [
        (7.0, '{"t": 7}'), (8.0, '{"t": 8}'), (9.0, '{"t": 9}'),
    ]  # fmt: skip
    assert store.telemetry("cam-b", 0, 10) == [
        (3.5, '{"x": "tab\\there, quote \\" and newline\\n"}')
    ]
    assert store.prune_telemetry(before=5.0) == 6
    assert [at for at, _ in store.telemetry("cam-a", 0, 100)] == [5.0, 6.0, 7.0, 8.0, 9.0]


def test_audit_keeps_the_latest_in_order(store):
    for index in range(5):
        store.add_audit(AuditRecord(at=float(index), actor="op", action=f"a{index}",
                                    detail={"n": index}))  # fmt: skip
    assert [entry.action for entry in store.audit_entries(3)] == ["a2", "a3", "a4"]
    assert store.audit_entries(3)[-1].detail == {"n": 4}


# PostgreSQL only


def _connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True)


# A real PostgreSQL.
@pytest.mark.system
def test_migrations_build_the_latest_schema_from_an_empty_database(postgres_dsn):
    store = PostgresStore(postgres_dsn)
    store.close()
    with _connect(postgres_dsn) as connection:
        versions = [row[0] for row in connection.execute("SELECT version FROM schema_migrations")]
        assert versions == [migration.version for migration in MIGRATIONS]
        indexes = {row[0] for row in connection.execute("SELECT indexname FROM pg_indexes")}
        assert {"telemetry_by_time", "telemetry_by_device", "bundles_by_version"} <= indexes
        # A second start applies nothing.
        assert migrate(connection) == []


# A real PostgreSQL.
@pytest.mark.system
def test_migrations_upgrade_a_database_of_the_previous_version_keeping_its_data(postgres_dsn):
    with _connect(postgres_dsn) as connection:
        assert migrate(connection, target=LATEST - 1) == list(range(1, LATEST))
        # Rows written by a controller of the previous version.
        device = _device("cam-old", last_seen=3.0)
        connection.execute(
            "INSERT INTO devices VALUES (%s, %s)", (device.device_id, device.model_dump_json())
        )
        connection.execute("INSERT INTO telemetry (device_id, received_at, doc) VALUES"
                           " ('cam-old', 1.0, '{}'), ('cam-old', 9.0, '{}')")  # fmt: skip
    store = PostgresStore(postgres_dsn)
    try:
        assert store.get_device("cam-old") == device
        assert store.prune_telemetry(before=5.0) == 1
        store.upsert_device(_device("cam-new"))
        assert [d.device_id for d in store.list_devices()] == ["cam-new", "cam-old"]
    finally:
        store.close()
    with _connect(postgres_dsn) as connection:
        row = connection.execute("SELECT max(version) FROM schema_migrations").fetchone()
        assert row is not None and row[0] == LATEST


# A real PostgreSQL.
@pytest.mark.system
def test_a_database_from_a_newer_controller_is_refused(postgres_dsn):
    with _connect(postgres_dsn) as connection:
        migrate(connection)
        connection.execute(
            "INSERT INTO schema_migrations VALUES (%s, 'from the future', 0)", (LATEST + 1,)
        )
    with pytest.raises(SchemaTooNew, match="upgrade the controller"):
        PostgresStore(postgres_dsn).close()


# A real PostgreSQL.
@pytest.mark.system
def test_a_wrong_password_is_refused_without_showing_it(postgres_server):
    database = postgres_server.create_database()
    dsn = postgres_server.dsn(database, with_password=False)
    with pytest.raises(ConnectionError) as refused:
        PostgresStore(dsn, password="not-the-password-xyz")
    assert "not-the-password-xyz" not in str(refused.value)
    assert "xyz" not in redacted(
        postgres_server.dsn(database).replace(postgres_server.password, "xyz")
    )


# A real PostgreSQL.
@pytest.mark.system
def test_the_store_reconnects_after_postgresql_restarts(postgres_server):
    database = postgres_server.create_database()
    store = PostgresStore(postgres_server.dsn(database))
    try:
        store.upsert_device(_device("cam-a"))
        postgres_server.stop("immediate")
        with pytest.raises(psycopg.OperationalError):
            store.list_devices()
        postgres_server.start()
        # The pool replaces the dead connection; nothing written before the restart is lost.
        assert [device.device_id for device in store.list_devices()] == ["cam-a"]
        store.upsert_device(_device("cam-b"))
        assert len(store.list_devices()) == 2
    finally:
        store.close()


# A real PostgreSQL.
@pytest.mark.system
def test_edgefleet_controller_runs_on_postgresql_and_never_logs_the_password(
    tmp_path, postgres_server
):
    database = postgres_server.create_database()
    address = postgres_server.dsn(database, with_password=False)
    environment = {**os.environ, "EDGEFLEET_CONTROLLER_STORE_PASSWORD": postgres_server.password}
    controller = start_controller(
        tmp_path / "data", "--store", address, "--port", "0", "--enroll-port", "0",
        "--metrics-port", "-1", "--log-level", "DEBUG", env=environment, stdout_to_log=True,
    )  # fmt: skip
    controller.stop(30)
    output = controller.log()
    assert f"store {address}" in output
    assert postgres_server.password not in output
    with _connect(postgres_server.dsn(database)) as connection:
        row = connection.execute("SELECT max(version) FROM schema_migrations").fetchone()
        assert row is not None and row[0] == LATEST
    # A password inside the address is refused, and the refusal does not repeat it.
    refused = subprocess.run(
        [*EDGEFLEET, "controller", "--data", str(tmp_path / "data"),
         "--store", "postgresql://edgefleet:hunter2-secret@127.0.0.1:1/x"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "store-password-file" in refused.stderr and "hunter2" not in refused.stderr
