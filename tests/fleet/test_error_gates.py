"""Gates see every failure (issue 11, item 5): a model that passes warm-up on zeros but fails
on every real input is counted in ModelStatistics, Prometheus and fleet telemetry, for unary,
stream and FrameStream requests, and a rollout of it rolls back on `error_rate`."""

from __future__ import annotations

import contextlib
import logging

import grpc
import numpy as np
import pytest

from fleet.bundle import build_bundle
from fleet.keys import load_private_key
from protos.edgefleet.fleet.v1 import admin_pb2
from protos.edgefleet.v1 import frame_stream_pb2 as fs
from protos.edgefleet.v1 import frame_stream_pb2_grpc as fs_grpc
from protos.inference import grpc_service_pb2 as kserve
from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from server.app import EdgeServer
from server.settings import ServerSettings
from testkit.camera import camera, collect
from testkit.fleet import MODEL, STATE, finished, rollout_request, wait_for
from testkit.fleet_models import FEATURES, build_poisoned_model_dir


def _request(model: str) -> kserve.ModelInferRequest:
    request = kserve.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=[1, FEATURES])
    request.raw_input_contents.append(np.ones((1, FEATURES), np.float32).tobytes())
    return request


def _prometheus_errors(server: EdgeServer, model: str) -> float | None:
    """The exported counter, read from the server's own registry as /metrics would."""
    labels = {"model": model, "version": "1", "outcome": "runtime_error"}
    return server.metrics.registry.get_sample_value("edgefleet_requests_total", labels)


async def test_runtime_failures_are_counted_for_unary_stream_and_framestream(tmp_path):
    repository = tmp_path / "repo"
    build_poisoned_model_dir(repository, "vec", "1")
    build_poisoned_model_dir(repository, "cam", "1", image=True)
    server = EdgeServer(
        ServerSettings(repository=repository, port=0, metrics_port=-1, http_port=-1)
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await stub.ModelInfer(_request("vec"))
                assert failed.value.code() == grpc.StatusCode.INTERNAL

            async def one_request():
                yield _request("vec")

            # How the stream answers a runtime failure is the transport's business (issue 10);
            # here it must not answer with a result, and it must be counted below.
            answers = []
            with contextlib.suppress(grpc.aio.AioRpcError):
                answers = [a async for a in stub.ModelStreamInfer(one_request())]
            assert not [a for a in answers if a.infer_response.outputs]

            frames = fs_grpc.FrameStreamServiceStub(channel)
            # BLOCK: every frame runs; a live (DROP_OLDEST) camera may have a frame replaced
            # by a newer one before it runs, which is a drop, not a failure.
            blocking = camera("cam", ["chelsea"], 4, policy=fs.OVERLOAD_POLICY_BLOCK)
            seen = await collect(frames.Stream(blocking))
            assert len(seen["error"]) == 4 and not seen["result"]

            statistics = await stub.ModelStatistics(kserve.ModelStatisticsRequest())
        by_name = {s.name: s.inference_stats for s in statistics.model_stats}
        assert by_name["vec"].fail.count == 4  # 3 unary + 1 stream
        assert by_name["cam"].fail.count == 4
        assert _prometheus_errors(server, "vec") == 4
        assert _prometheus_errors(server, "cam") == 4
        telemetry = {t.name: t for t in server.core.model_telemetry()}
        assert (telemetry["vec"].requests, telemetry["vec"].errors) == (4, 4)
        assert (telemetry["cam"].requests, telemetry["cam"].errors) == (4, 4)
    finally:
        await server.stop(grace_s=0.5)


async def test_model_failing_on_real_frames_rolls_back_on_error_rate(
    tmp_path, controller, admin, nodes, signing_keys, caplog
):
    caplog.set_level(logging.INFO, logger="fleet.controller.rollouts")
    source = build_poisoned_model_dir(tmp_path / "build", MODEL, "1")
    bundle = build_bundle(source, MODEL, "2", load_private_key(signing_keys[0]), tmp_path)
    uploaded = await admin.upload_bundle(bundle)
    created = await admin.stub.CreateRollout(
        rollout_request(uploaded, gates=["error_rate < 0.01"], bake_s=1.5)
    )
    rollout = await wait_for(lambda: finished(admin, created.rollout.rollout_id), 60, "rollout")
    assert rollout.state == STATE.ROLLOUT_STATE_ROLLED_BACK, rollout
    assert "error_rate" in rollout.reason
    assert rollout.waves[0].verdict == admin_pb2.VERDICT_FAIL
    assert rollout.waves[1].target_devices == 0
    await wait_for(lambda: [n.active() for n in nodes] == ["1", "1", "1"], 20, "rollback")
    # Issue 11, item 13: the verdict and the automatic rollback are in the controller's log,
    # its audit log and its metrics.
    rollout_id = rollout.rollout_id
    audit = await admin.stub.ListAuditEntries(admin_pb2.ListAuditEntriesRequest())
    decided = [(e.actor, e.action) for e in audit.entries if rollout_id in e.detail_json]
    assert ("controller", "rollout.verdict") in decided
    assert ("controller", "rollout.rolled-back") in decided
    logged = [r.getMessage() for r in caplog.records if rollout_id in r.getMessage()]
    assert any("rollout.verdict" in m and "FAIL" in m for m in logged), logged
    assert any("rollout.rolled-back" in m for m in logged), logged
    registry = controller.registry
    name = "edgefleet_controller_rollout_decisions_total"
    assert registry.get_sample_value(name, {"decision": "rollout.verdict:FAIL"}) >= 1
    assert registry.get_sample_value(name, {"decision": "rollout.rolled-back"}) >= 1
