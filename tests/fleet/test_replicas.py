"""Controller replicas on one PostgreSQL sharing one fleet.

The failover test is the issue's reliability test: two `edgefleet controller` processes on one
PostgreSQL, three real `edgefleet serve --controller A,B` processes, a rollout, and the replica
driving it killed with SIGKILL in the middle of a wave. The other replica takes the rollout
over within the lease time and finishes it; no wave is judged twice; every device ends with a
desired version. The in-process test checks the cross-replica paths one at a time: a device
enrolled on one replica is known to the other, fleetctl sees every device online from either
replica, and a pin made on one replica reaches a device connected to the other within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import grpc
import numpy as np
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleet.controller.app import ControllerApp
from fleet.ctl.client import AdminClient, AdminCredential
from protos.edgefleet.fleet.v1 import admin_pb2
from protos.inference import grpc_service_pb2 as kserve
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from testkit.fleet import (
    MODEL,
    STATE,
    controller_settings,
    finished,
    rollout_request,
    rollout_state,
    scrape_controller,
    start_node,
    upload,
    wait_for,
    within,
)
from testkit.fleet_models import FEATURES, build_model_dir
from testkit.fleet_processes import ServeProcess, start_replica

# Controller replicas and edge servers as child processes on a real PostgreSQL: system tests.
pytestmark = pytest.mark.system

LEASE_TTL_S = 3.0


async def _traffic(port: int, stop: asyncio.Event) -> None:
    """Inference requests to one edge server, so the gates judge measured telemetry."""
    request = kserve.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="FP32", shape=[1, FEATURES])
    request.raw_input_contents.append(np.ones((1, FEATURES), np.float32).tobytes())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        while not stop.is_set():
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.ModelInfer(request, timeout=5)
            await asyncio.sleep(0.02)


def _lease(dsn: str, rollout_id: str) -> tuple[str, int] | None:
    with psycopg.connect(dsn) as connection:
        row = connection.execute(
            "SELECT holder, fencing_token FROM leases WHERE name = %s AND expires_at > now()",
            (f"rollout:{rollout_id}",),
        ).fetchone()
    return (str(row[0]), int(row[1])) if row else None


@pytest.mark.usefixtures("cpu_hog")  # the takeover must not depend on a quiet machine
async def test_killing_the_driving_replica_mid_wave_hands_the_rollout_over(
    tmp_path, signing_keys, postgres_server, nginx_factory
):
    database = postgres_server.create_database()
    dsn = postgres_server.dsn(database)
    origin = tmp_path / "origin"
    origin.mkdir()
    web = nginx_factory({"origin": origin})
    ca_dir = tmp_path / "shared-ca"
    common = ("--publish-dir", str(origin))
    replicas = {}
    nodes: list[ServeProcess] = []
    stop_traffic = asyncio.Event()
    traffic: list[asyncio.Task[None]] = []
    try:
        for name in ("a", "b"):  # one at a time: the first creates the shared CA
            replicas[name] = await start_replica(
                name, tmp_path, postgres_server, database, ca_dir, signing_keys[1].parent,
                *common, lease_ttl_s=LEASE_TTL_S,
            )  # fmt: skip
        a, b = replicas["a"], replicas["b"]
        # The admin credential replica a wrote works on replica b: one CA.
        credential = AdminCredential.load(a.credential)
        # Agents list both replicas, in different orders: the fleet is split over them.
        orders = [(a, b), (b, a), (a, b)]
        async with AdminClient.connect(credential, b.address) as admin_b:
            for index in range(3):
                token = await admin_b.stub.CreateEnrollmentToken(
                    admin_pb2.CreateEnrollmentTokenRequest(labels={"site": "lobby"})
                )
                root = tmp_path / f"node{index}"
                build_model_dir(root / "repo", MODEL, "1")
                node = ServeProcess(
                    root=root, controller_port=0, enroll_port=0, ca=ca_dir / "ca.pem",
                    trusted_key=signing_keys[1], device_id=f"cam-{index}", token=token.token,
                    controllers=",".join(r.address for r in orders[index]),
                    enroll_addresses=",".join(r.enroll_address for r in orders[index]),
                    extra=["--bundle-source", web.url("origin")],
                )  # fmt: skip
                await node.start()
                nodes.append(node)
                traffic.append(asyncio.create_task(_traffic(node.port, stop_traffic)))

            async def all_online(admin: AdminClient) -> bool:
                listed = await admin.stub.ListDevices(admin_pb2.ListDevicesRequest())
                return len(listed.devices) == 3 and all(d.online for d in listed.devices)

            # Devices are split over both replicas, and each replica sees all of them online.
            await wait_for(lambda: all_online(admin_b), 60, "three devices online on b")
            async with AdminClient.connect(credential, a.address) as admin_a:
                await wait_for(lambda: all_online(admin_a), 30, "three devices online on a")
                bundle = await upload(admin_a, tmp_path, signing_keys, "2")
            assert (origin / f"{bundle.bundle_sha256}.efb").exists()

            created = await admin_b.stub.CreateRollout(
                rollout_request(
                    bundle, steps=[34, 67, 100], bake_s=3.0, gates=["error_rate < 0.5"],
                    min_requests=3, install_timeout_s=60,
                )
            )  # fmt: skip
            rollout_id = created.rollout.rollout_id
            leader = await wait_for(lambda: _lease(dsn, rollout_id), 30, "a replica to lead")
            survivor = b if leader[0] == "a" else a

            async def in_wave_one():
                rollout = await rollout_state(admin_b, rollout_id)
                assert rollout.state != STATE.ROLLOUT_STATE_ROLLED_BACK, rollout.reason
                return rollout if rollout.current_wave == 1 else None

            await wait_for(in_wave_one, 90, "wave 0 to pass")
            # Mid-wave 1: the driving replica dies without a word.
            replicas[leader[0]].kill()
            killed_at = time.monotonic()
            taken = await wait_for(
                lambda: (lease := _lease(dsn, rollout_id)) and lease[0] == survivor.name and lease,
                LEASE_TTL_S * 4, "the survivor to take the lease",
            )  # fmt: skip
            takeover_s = time.monotonic() - killed_at
            print(f"leader {leader} killed; {survivor.name} took over in {takeover_s:.2f}s")
            # Within the lease time, plus a renewal round (a third of it) and this poll.
            assert takeover_s <= LEASE_TTL_S + LEASE_TTL_S / 3 + 1.0, takeover_s
            assert taken[1] == leader[1] + 1, "the survivor's writes carry a newer fencing token"

        async with AdminClient.connect(credential, survivor.address) as admin:
            done = await wait_for(lambda: finished(admin, rollout_id), 120, "the rollout to end")
            assert done.state == STATE.ROLLOUT_STATE_SUCCEEDED, done.reason
            assert [wave.verdict for wave in done.waves] == [admin_pb2.VERDICT_PASS] * 3
            # No wave judged twice: one verdict per wave in the audit log and one measurement
            # per gate and wave.

            async def audited():
                request = admin_pb2.ListAuditEntriesRequest(limit=500)
                audit = await admin.stub.ListAuditEntries(request)
                actions = [entry.action for entry in audit.entries]
                return audit if "rollout.succeeded" in actions else None

            # The decision is audited just after the write that committed it.
            audit = await wait_for(audited, 10, "the audit entry of the success")
            judged = [
                json.loads(entry.detail_json)["wave"]
                for entry in audit.entries
                if entry.action == "rollout.verdict"
                and json.loads(entry.detail_json)["rollout"] == rollout_id
            ]
            assert sorted(judged) == [0, 1, 2], judged
            # The takeover is in the audit log (the dashboard shows it), by the survivor.
            takeovers = [
                (entry.actor, json.loads(entry.detail_json)["fencing_token"])
                for entry in audit.entries
                if entry.action == "rollout.takeover"
                and json.loads(entry.detail_json)["rollout"] == rollout_id
            ]
            assert (f"controller:{survivor.name}", taken[1]) in takeovers, takeovers
            explained = await admin.stub.ExplainRollout(
                admin_pb2.ExplainRolloutRequest(rollout_id=rollout_id)
            )
            waves = [m.wave for m in explained.measurements]
            assert sorted(waves) == [0, 1, 2], waves
            # Every device has a desired version, the new one, and the agents that were on the
            # killed replica moved to the survivor.
            await wait_for(lambda: all_online(admin), 30, "every device on the survivor")
            listed = await admin.stub.ListDevices(admin_pb2.ListDevicesRequest())
            assert sorted(d.device_id for d in listed.devices) == ["cam-0", "cam-1", "cam-2"]
            assert all(d.models[0].desired_version == "2" for d in listed.devices), listed
            for node in nodes:
                await wait_for(lambda n=node: _serves(n, "2"), 60, f"{node.device_id} on 2")
        # The survivor's metrics tell the same story (fleet-wide figures and its own).
        text = await asyncio.to_thread(_scrape, survivor.credential, survivor.metrics_port)
        assert text[("edgefleet_controller_rollouts", (("state", "succeeded"),))] == 1
        assert text[("edgefleet_controller_rollouts", (("state", "baking"),))] == 0
        assert text[("edgefleet_controller_devices", (("state", "online"),))] == 3
        by_version = (("model", MODEL), ("version", "2"))
        assert text[("edgefleet_controller_devices_by_version", by_version)] == 3
        assert text[("edgefleet_controller_rollout_takeovers_total", ())] >= 1
        # It judged at least the wave it took over; none failed.
        assert text[("edgefleet_controller_wave_verdicts_total", (("verdict", "pass"),))] >= 1
        assert text[("edgefleet_controller_wave_verdicts_total", (("verdict", "fail"),))] == 0
        assert text[("edgefleet_controller_rollouts_driven", ())] == 0  # finished: released
        survivor_log = survivor.log()
        assert "driving it here" in survivor_log and "Traceback" not in survivor_log
    finally:
        stop_traffic.set()
        await asyncio.gather(*traffic, return_exceptions=True)
        for node in nodes:
            await node.stop()
        for replica in replicas.values():
            await asyncio.to_thread(replica.stop)


def _scrape(credential: Path, port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = scrape_controller(credential, port=port)
    assert status == 200, (status, text)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def _serves(node: ServeProcess, version: str) -> bool:
    return await node.serving_version() == version


async def test_replicas_share_devices_presence_and_commands(
    tmp_path, signing_keys, postgres_server
):
    database = postgres_server.create_database()
    store = {"store": postgres_server.dsn(database, with_password=False),
             "store_password": postgres_server.password, "ca_dir": tmp_path / "ca"}  # fmt: skip
    apps = []
    nodes = []
    try:
        for name in ("a", "b"):
            app = ControllerApp(
                controller_settings(
                    tmp_path / name, signing_keys[1].parent, replica_name=name, **store
                )
            )
            async with within(60, f"replica {name} starts"):
                await app.start()
            apps.append(app)
        a, b = apps
        credential = AdminCredential.load(a.admin_credential_path)
        async with (
            AdminClient.connect(credential, f"127.0.0.1:{a.port}") as admin_a,
            AdminClient.connect(credential, f"127.0.0.1:{b.port}") as admin_b,
        ):
            # Enrolled through a, connected to b: b learns of the device from a's note.
            async with within(60, "the node starts and enrolls"):
                node = await start_node(
                    "cam-0", tmp_path / "n0", a, admin_a, (signing_keys[1],),
                    controller_addresses=f"127.0.0.1:{b.port},127.0.0.1:{a.port}",
                )  # fmt: skip
            nodes.append(node)
            await wait_for(lambda: node.online(), 30, "the agent connected")
            assert node.agent is not None and node.agent.controller_address.endswith(f":{b.port}")

            async def online_on(admin: AdminClient) -> bool:
                listed = await admin.stub.ListDevices(admin_pb2.ListDevicesRequest(), timeout=5)
                return [d.online for d in listed.devices] == [True]

            async with within(60, "both replicas list the device online"):
                await wait_for(lambda: online_on(admin_b), 10, "b to see the device online")
                await wait_for(lambda: online_on(admin_a), 10, "a to see the device online on b")
            # A command made on replica a for a device connected to replica b: the pin of a
            # version the device serves changes its desired state, which only b can send.
            await admin_a.stub.PinDevice(
                admin_pb2.PinDeviceRequest(device_id="cam-0", model_name=MODEL, version="1"),
                timeout=30,
            )
            assert node.agent is not None

            def pinned() -> bool:
                assert node.agent is not None
                return node.agent.desired_versions().get(MODEL) == "1"

            started = time.monotonic()
            await wait_for(pinned, 5, "the pin to reach the device through replica b")
            assert time.monotonic() - started < 5
    finally:
        async with within(60, "the node and both replicas stop"):
            for node in nodes:
                await node.stop()
            for app in apps:
                await app.stop(0.2)
