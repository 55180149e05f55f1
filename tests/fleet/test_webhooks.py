"""What the controller decides on its own reaches operators (issue 11, item 13): the controller
log, the audit log, its metrics and outgoing webhooks, POSTed to real local HTTP receivers.
A real controller, a real `edgefleet serve --controller` process, signed bundles."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from prometheus_client import CollectorRegistry

from fleet.controller.app import ControllerApp
from fleet.controller.store.records import RolloutRecord, RolloutSpec, RolloutState
from fleet.controller.webhooks import WebhookSender, rollout_event
from fleet.ctl.client import AdminClient, AdminCredential
from protos.edgefleet.fleet.v1 import admin_pb2
from testkit.fleet import MODEL, STATE, controller_settings, rollout_state, signed_bundle, wait_for
from testkit.fleet_models import build_model_dir
from testkit.fleet_processes import ServeProcess
from testkit.webhooks import Receiver


def _metric(app: ControllerApp, name: str, labels: dict[str, str] | None = None) -> float:
    return app.registry.get_sample_value(name, labels or {}) or 0.0


# edgefleet serve --controller as a child process.
@pytest.mark.system
async def test_decisions_reach_log_audit_metrics_and_webhooks(tmp_path, signing_keys, caplog):
    caplog.set_level(logging.INFO, logger="fleet.controller.rollouts")
    # The global receiver fails twice before it answers: the first event is retried.
    everything = await Receiver(answers=[500, 503], secret=b"s3cret").start()
    first_only = await Receiver().start()
    broken = await Receiver(always=503).start()
    settings = controller_settings(
        tmp_path / "controller", signing_keys[1].parent,
        webhook_urls=(everything.url,), webhook_backoff_s=0.05, webhook_attempts=4,
        webhook_allow=("127.0.0.1:*",),
        webhook_secret="s3cret",
    )  # fmt: skip
    app = ControllerApp(settings)
    await app.start()
    admin = AdminClient.connect(
        AdminCredential.load(app.admin_credential_path), f"127.0.0.1:{app.port}"
    )
    token = await admin.stub.CreateEnrollmentToken(
        admin_pb2.CreateEnrollmentTokenRequest(labels={"site": "lobby"})
    )
    build_model_dir(tmp_path / "node" / "repo", MODEL, "1")
    node = ServeProcess.for_controller(
        tmp_path / "node", app, signing_keys[1], "cam-w", token.token
    )
    try:
        await node.start()

        async def online() -> bool:
            listed = await admin.stub.ListDevices(admin_pb2.ListDevicesRequest())
            return any(device.online for device in listed.devices)

        await wait_for(online, 60, "cam-w online", describe=node.log)

        # 1. No traffic: the wave cannot be judged, the rollout pauses; the operator promotes.
        v2 = await admin.upload_bundle(signed_bundle(tmp_path, signing_keys[0], "2", seed="2"))
        created = await admin.stub.CreateRollout(
            admin_pb2.CreateRolloutRequest(
                bundle_sha256=v2.bundle_sha256, steps=[100], bake_s=0.3, min_devices=1,
                install_timeout_s=30, webhook_url=first_only.url,
            )
        )  # fmt: skip
        first = created.rollout.rollout_id

        async def state(rollout_id: str, wanted: int) -> bool:
            return bool((await rollout_state(admin, rollout_id)).state == wanted)

        await wait_for(
            lambda: state(first, STATE.ROLLOUT_STATE_PAUSED), 60, "pause", describe=node.log
        )
        await admin.stub.PromoteRollout(admin_pb2.PromoteRolloutRequest(rollout_id=first))

        # 2. A version that installs but cannot load: the controller rolls back on its own.
        v3 = await admin.upload_bundle(signed_bundle(tmp_path, signing_keys[0], "3", broken=True))
        created = await admin.stub.CreateRollout(
            admin_pb2.CreateRolloutRequest(
                bundle_sha256=v3.bundle_sha256, steps=[100], bake_s=0.3, min_devices=1,
                install_timeout_s=30, max_install_failure_rate=0.0, webhook_url=broken.url,
            )
        )  # fmt: skip
        second = created.rollout.rollout_id
        await wait_for(
            lambda: state(second, STATE.ROLLOUT_STATE_ROLLED_BACK),
            60,
            "rollback",
            describe=node.log,
        )

        expected = [
            "rollout.wave-started", "rollout.verdict", "rollout.paused", "rollout.succeeded",
            "rollout.wave-started", "rollout.verdict", "rollout.rolled-back",
        ]  # fmt: skip
        await wait_for(
            lambda: everything.names() == expected, 20, "events", describe=everything.names
        )
        await wait_for(
            lambda: len(broken.attempts) == 4 * 3, 20, "attempts", describe=lambda: broken.attempts
        )
        events = "edgefleet_controller_webhook_events_total"
        await wait_for(
            lambda: _metric(app, events, {"outcome": "failed"}) == 3, 10, "counted failures"
        )

        assert first_only.names() == expected[:4]
        started = "rollout.wave-started"
        assert everything.attempts[:3] == [(started, 500), (started, 503), (started, 200)]
        # One documented JSON shape: numbers as numbers, the detail as an object.
        verdict = everything.events[1]
        assert verdict["rollout_id"] == first and verdict["model"] == MODEL
        assert verdict["version"] == "2" and verdict["wave"] == 0 and verdict["waves"] == 1
        assert verdict["detail"]["verdict"] == "INCONCLUSIVE" and verdict["detail"]["wave"] == 0
        rolled_back = everything.events[-1]
        assert rolled_back["rollout_id"] == second and rolled_back["state"] == "ROLLED_BACK"
        assert rolled_back["detail"]["automatic"] is True and rolled_back["detail"]["devices"] == 1
        assert "failed to install" in rolled_back["detail"]["reason"]
        assert everything.events[5]["detail"]["verdict"] == "FAIL"
        ids = [headers["X-Edgefleet-Delivery"] for headers in everything.headers]
        assert ids == [event["id"] for event in everything.events] and len(set(ids)) == 7
        assert everything.headers[0]["X-Edgefleet-Event"] == "rollout.wave-started"

        # Metrics: deliveries, retries, failures and the decisions themselves.
        assert _metric(app, events, {"outcome": "delivered"}) == 7 + 4
        assert _metric(app, events, {"outcome": "dropped"}) == 0
        assert _metric(app, "edgefleet_controller_webhook_retries_total") == 2 + 3 * 3
        decisions = "edgefleet_controller_rollout_decisions_total"
        for decision in ("rollout.paused", "rollout.succeeded", "rollout.rolled-back",
                         "rollout.verdict:INCONCLUSIVE", "rollout.verdict:FAIL"):  # fmt: skip
            assert _metric(app, decisions, {"decision": decision}) == 1, decision
        assert _metric(app, decisions, {"decision": "rollout.wave-started"}) == 2

        # The audit log and the controller log say the same.
        audit = await admin.stub.ListAuditEntries(admin_pb2.ListAuditEntriesRequest(limit=100))
        by_controller = [e.action for e in audit.entries if e.actor == "controller"]
        assert by_controller == expected
        rollback = next(e for e in audit.entries if e.action == "rollout.rolled-back")
        assert json.loads(rollback.detail_json)["rollout"] == second
        logged = [r for r in caplog.records if r.name == "fleet.controller.rollouts"]
        assert any(
            "rollout.paused" in r.getMessage() and r.levelno == logging.WARNING for r in logged
        )
        assert any(
            "rollout.rolled-back" in r.getMessage() and r.levelno == logging.WARNING for r in logged
        )
    finally:
        await node.stop()
        await admin.__aexit__(None, None, None)
        await app.stop(0.1)
        for receiver in (everything, first_only, broken):
            await receiver.stop()


async def test_a_slow_receiver_never_holds_up_the_controller_and_its_queue_is_bounded():
    """The sender alone (no gRPC): a receiver that does not answer fills its bounded queue;
    further events are dropped and counted, publish never waits."""
    hold = asyncio.Event()
    slow = await Receiver(hold=hold).start()
    registry = CollectorRegistry()
    sender = WebhookSender(
        [slow.url], registry, queue_size=2, attempts=1, backoff_s=0.01, timeout_s=30
    )
    rollout = RolloutRecord(
        rollout_id="r1", model_name=MODEL, version="2", bundle_size=1, created_at=0.0,
        updated_at=0.0, state=RolloutState.BAKING,
        spec=RolloutSpec(bundle_sha256="a" * 64, steps=[100], bake_s=1),
    )  # fmt: skip
    try:
        for index in range(6):
            sender.publish(rollout_event(rollout, "rollout.verdict", {"n": index}))
            await asyncio.sleep(0.05)  # the first one is taken by the sender and held
        dropped = registry.get_sample_value(
            "edgefleet_controller_webhook_events_total", {"outcome": "dropped"}
        )
        assert dropped == 3  # one in flight, two queued, three dropped
        assert registry.get_sample_value("edgefleet_controller_webhook_queued") == 2
        hold.set()
        await wait_for(lambda: len(slow.events) == 3, 10, "the held events")
        assert [event["detail"]["n"] for event in slow.events] == [0, 1, 2]
    finally:
        hold.set()
        await sender.stop()
        await slow.stop()


@pytest.mark.parametrize("url", ["ftp://example.org/hook", "not a url"])
async def test_a_webhook_must_be_an_http_url(tmp_path, controller, admin, signing_keys, url):
    import grpc

    v2 = await admin.upload_bundle(signed_bundle(tmp_path, signing_keys[0], "2", seed="2"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await admin.stub.CreateRollout(
            admin_pb2.CreateRolloutRequest(
                bundle_sha256=v2.bundle_sha256, steps=[100], bake_s=1, webhook_url=url
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
