"""Standard gRPC health and reflection, and the Prometheus endpoint, on a real server."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from server.app import EdgeServer
from testkit.edge import server_settings
from testkit.kserve import infer_request
from testkit.repositories import ONNX_MODEL


async def test_health_reports_serving_per_service(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService", "edgefleet.v1.FrameStreamService"):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    try:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        raise AssertionError("unknown service reported healthy")
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_every_service(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for response in stub.ServerReflectionInfo(ask()):
        names = {service.name for service in response.list_services_response.service}
        break
    assert {
        "inference.GRPCInferenceService",
        "edgefleet.v1.FrameStreamService",
        "edgefleet.v1.ServerInfoService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


async def test_prometheus_endpoint_counts_requests_batches_and_models(repository):
    server = EdgeServer(server_settings(repository, metrics_port=0))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = kserve_grpc.GRPCInferenceServiceStub(channel)
            image = np.zeros((1, 3, 224, 224), np.float32)
            await asyncio.gather(
                *(stub.ModelInfer(infer_request(ONNX_MODEL, image)) for _ in range(5))
            )
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=10).read().decode()
        )
    finally:
        await server.stop(grace_s=1.0)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    model = (("model", ONNX_MODEL), ("version", "1"))

    def value(name: str, *extra: tuple[str, str]) -> float:
        return samples[(name, tuple(sorted(model + extra)))]

    assert value("edgefleet_requests_total", ("outcome", "success")) == 5
    assert value("edgefleet_queue_latency_seconds_count") == 5
    assert value("edgefleet_batch_size_sum") == 5  # five rows, however they were batched
    assert value("edgefleet_compute_latency_seconds_count") >= 1
    assert value("edgefleet_model_events_total", ("event", "load")) == 1
    assert samples[("edgefleet_active_streams", ())] == 0
