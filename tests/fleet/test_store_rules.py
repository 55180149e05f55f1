"""The business rules both stores share (fleet/controller/store/rules.py), run against SQLite and
a real PostgreSQL: leases and their fencing tokens, fenced writes, revision compare-and-set,
pins over rollouts, claims, revocation. Each dialect supplies only its SQL; these pin down that
both give the same answers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fleet.controller.store.postgres import PostgresStore
from fleet.controller.store.protocol import Fence, LeaseLost, StaleRevision, Store
from fleet.controller.store.records import (
    DesiredEntry,
    DeviceRecord,
    Revocation,
    RolloutRecord,
    RolloutSpec,
)
from fleet.controller.store.sqlite import SqliteStore


@pytest.fixture(params=["sqlite", "postgresql"])
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


def _rollout(revision: int = 0, reason: str = "") -> RolloutRecord:
    spec = RolloutSpec(bundle_sha256="b" * 64, steps=[100], bake_s=1)
    return RolloutRecord(
        rollout_id="r1", model_name="m", version="2", bundle_size=1, spec=spec,
        created_at=1.0, updated_at=1.0, revision=revision, reason=reason,
    )  # fmt: skip


def test_a_lease_has_one_holder_and_a_new_token_after_it_expires(store):
    assert store.acquire_lease("rollout:r1", "a", 0.5) == 1
    assert store.acquire_lease("rollout:r1", "a", 0.5) == 1  # renewed: same token
    assert store.acquire_lease("rollout:r1", "b", 0.5) is None
    assert store.lease_holders("rollout:") == ["a"]
    time.sleep(0.7)
    assert store.lease_holders("rollout:") == []
    assert store.acquire_lease("rollout:r1", "a", 0.5) == 2  # expired, even for its holder
    store.release_lease("rollout:r1", "a")
    assert store.acquire_lease("rollout:r1", "b", 30) == 3


def test_a_fenced_write_commits_only_under_the_lease_it_names(store):
    assert store.acquire_lease("rollout:r1", "a", 30) == 1
    store.save_rollout(_rollout(revision=1), fence=Fence("rollout:r1", "a", 1))
    store.release_lease("rollout:r1", "a")
    assert store.acquire_lease("rollout:r1", "b", 30) == 2
    with pytest.raises(LeaseLost):
        store.save_rollout(
            _rollout(revision=2, reason="late"),
            [DesiredEntry(device_id="cam", model="m", version="2")],
            expected_revision=1,
            fence=Fence("rollout:r1", "a", 1),
        )
    assert store.get_rollout("r1").revision == 1 and store.desired_for("cam") == []


def test_a_write_from_a_stale_revision_is_refused_and_changes_nothing(store):
    store.save_rollout(_rollout(revision=1))
    store.save_rollout(_rollout(revision=2, reason="first"), expected_revision=1)
    with pytest.raises(StaleRevision):
        store.save_rollout(
            _rollout(revision=2, reason="second"),
            [DesiredEntry(device_id="cam", model="m", version="2")],
            expected_revision=1,
        )
    assert store.get_rollout("r1").reason == "first" and store.desired_for("cam") == []


def test_pins_always_win_over_a_rollout(store):
    pinned = DesiredEntry(device_id="cam-p", model="m", version="1", source="pin")
    store.set_desired([pinned, DesiredEntry(device_id="cam-q", model="m", version="1")])
    store.save_rollout(
        _rollout(),
        [DesiredEntry(device_id=d, model="m", version="2", source="rollout:r1")
         for d in ("cam-p", "cam-r")],
        undesired=[("cam-p", "m"), ("cam-q", "m")],
    )  # fmt: skip
    assert store.desired_for("cam-p") == [pinned]
    assert store.desired_for("cam-q") == [] and store.desired_for("cam-r")[0].version == "2"


def test_the_first_claim_wins(store):
    assert store.claim("ca_sha256", "first") == "first"
    assert store.claim("ca_sha256", "second") == "first"


def test_revoking_a_device_forgets_it_and_its_desired_state(store):
    store.upsert_device(DeviceRecord(device_id="cam", enrolled_at=1.0, public_key_sha256="k"))
    store.set_desired([DesiredEntry(device_id="cam", model="m", version="1")])
    revocation = Revocation(public_key_sha256="k", device_id="cam", revoked_at=2.0)
    store.revoke_device(revocation)
    assert store.get_device("cam") is None and store.desired_for("cam") == []
    assert store.revocations() == [revocation]
