"""Thin gRPC servicers over the controller's services: identify the peer, translate, delegate.
Each servicer is given only the services it uses."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from fleet.controller.api import convert
from fleet.controller.audit import AuditLog
from fleet.controller.bundles import BundleService
from fleet.controller.desired import DesiredState
from fleet.controller.devices import DeviceRegistry
from fleet.controller.live import LiveFleet, TelemetrySample
from fleet.controller.rollouts.queries import RolloutQueries
from fleet.controller.rollouts.verbs import RolloutVerbs
from fleet.controller.telemetry import TelemetryService
from fleet.errors import InvalidRequest
from fleet.grpc_status import peer, peer_common_name, streaming, unary
from fleet.telemetry_pb import telemetry_from_pb
from protos.edgefleet.fleet.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc

logger = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]


def _admin(context: Context) -> str:
    """The operator's name for the audit log. Authorization happened before the servicer ran
    (`fleet.controller.api.authz`, wired in `app.py`)."""
    return peer_common_name(context)


class EnrollmentServicer(agent_pb2_grpc.EnrollmentServiceServicer):
    def __init__(self, devices: DeviceRegistry) -> None:
        self._devices = devices

    @unary
    async def Enroll(
        self, request: agent_pb2.EnrollRequest, context: Context
    ) -> agent_pb2.EnrollResponse:
        device_id, certificate, labels = await self._devices.enroll(
            request.token, request.device_id, request.csr_pem
        )
        return agent_pb2.EnrollResponse(
            device_id=device_id,
            certificate_pem=certificate,
            ca_certificate_pem=self._devices.ca_certificate_pem,
            labels=labels,
        )


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(
        self,
        devices: DeviceRegistry,
        desired: DesiredState,
        telemetry: TelemetryService,
        bundles: BundleService,
        live: LiveFleet,
        *,
        telemetry_interval_s: float,
        download_chunk_bytes: int,
    ) -> None:
        self._devices = devices
        self._desired = desired
        self._telemetry = telemetry
        self._bundles = bundles
        self._live = live
        self._telemetry_interval_s = telemetry_interval_s
        self._download_chunk_bytes = download_chunk_bytes
        self._generations = itertools.count(1)

    def _device(self, context: Context) -> str:
        return self._devices.device_for(peer(context))

    @unary
    async def Connect(
        self, request_iterator: AsyncIterator[agent_pb2.ConnectRequest], context: Context
    ) -> None:
        caller = peer(context)
        self._devices.device_for(caller)
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("hello"):
            raise InvalidRequest("the first message on Connect must be hello")
        hello = first.hello
        active = {model.name: model.version for model in hello.installed if model.active}
        device_id = await self._devices.hello(
            caller, dict(hello.labels), hello.hardware_json, active, hello.agent_version
        )
        session = self._live.attach(device_id)
        reader = asyncio.create_task(self._read(device_id, request_iterator))
        logger.info("device %s connected", device_id)
        try:
            while not reader.done() and not session.closed.is_set():
                session.desired_changed.clear()
                entries = await self._desired.for_device(device_id)
                await context.write(
                    convert.desired_state_to_pb(
                        next(self._generations), entries, self._telemetry_interval_s
                    )
                )
                waiters = [
                    asyncio.create_task(session.desired_changed.wait()),
                    asyncio.create_task(session.closed.wait()),
                ]
                try:
                    await asyncio.wait([reader, *waiters], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
            if reader.done() and (error := reader.exception()) is not None:
                raise error
        finally:
            reader.cancel()
            # gather: a cancellation of this handler meanwhile (server stop) is not swallowed.
            await asyncio.gather(reader, return_exceptions=True)
            self._live.detach(session)
            logger.info("device %s disconnected", device_id)

    async def _read(
        self, device_id: str, request_iterator: AsyncIterator[agent_pb2.ConnectRequest]
    ) -> None:
        loop = asyncio.get_running_loop()
        telemetry = self._telemetry
        async for message in request_iterator:
            kind = message.WhichOneof("payload")
            if kind == "telemetry":
                started = time.perf_counter()
                record = telemetry_from_pb(message.telemetry, time.time())
                telemetry.record(device_id, TelemetrySample(loop.time(), record))
                telemetry.handling_seconds.observe(time.perf_counter() - started)
            elif kind == "heartbeat":
                self._live.touch(device_id, time.time())
            elif kind == "install_progress":
                progress = message.install_progress
                self._live.install_progress(
                    device_id,
                    progress.model_name,
                    progress.version,
                    convert.install_phase_from_pb(progress.phase),
                )
            elif kind == "install_result":
                result = message.install_result
                failed = result.outcome != agent_pb2.INSTALL_OUTCOME_INSTALLED
                await self._desired.install_result(
                    device_id,
                    result.model_name,
                    result.version,
                    (result.reason or "install failed") if failed else "",
                    result.active_version,
                    result.bundle_sha256,
                )

    @streaming
    async def Download(
        self, request: agent_pb2.DownloadRequest, context: Context
    ) -> AsyncIterator[agent_pb2.DownloadResponse]:
        self._device(context)
        path, size = await self._bundles.file(request.bundle_sha256)
        if request.offset > size:
            raise InvalidRequest(f"offset {request.offset} is past the end ({size} bytes)")
        limit = self._download_chunk_bytes
        chunk = min(request.chunk_size or limit, limit)
        handle = await asyncio.to_thread(path.open, "rb")
        try:
            offset = request.offset
            await asyncio.to_thread(handle.seek, offset)
            first = True
            while offset < size or first:
                data = await asyncio.to_thread(handle.read, chunk)
                yield agent_pb2.DownloadResponse(
                    offset=offset,
                    data=data,
                    total_size=size if first else 0,
                    bundle_sha256=request.bundle_sha256 if first else "",
                )
                first = False
                offset += len(data)
                if not data:
                    break
        finally:
            await asyncio.to_thread(handle.close)


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        devices: DeviceRegistry,
        desired: DesiredState,
        bundles: BundleService,
        rollouts: RolloutVerbs,
        queries: RolloutQueries,
        telemetry: TelemetryService,
        audit: AuditLog,
    ) -> None:
        self._devices = devices
        self._desired = desired
        self._bundles = bundles
        self._rollouts = rollouts
        self._queries = queries
        self._telemetry = telemetry
        self._audit = audit

    @unary
    async def CreateEnrollmentToken(
        self, request: admin_pb2.CreateEnrollmentTokenRequest, context: Context
    ) -> admin_pb2.CreateEnrollmentTokenResponse:
        token, expires_at = await self._devices.create_token(
            _admin(context), dict(request.labels), request.ttl_s
        )
        return admin_pb2.CreateEnrollmentTokenResponse(
            token=token, expires_at=convert.timestamp(expires_at)
        )

    @unary
    async def ListDevices(
        self, request: admin_pb2.ListDevicesRequest, context: Context
    ) -> admin_pb2.ListDevicesResponse:
        views = await self._devices.views(dict(request.selector))
        return admin_pb2.ListDevicesResponse(devices=[convert.device_to_pb(v) for v in views])

    @unary
    async def UploadBundle(
        self, request_iterator: AsyncIterator[admin_pb2.UploadBundleRequest], context: Context
    ) -> admin_pb2.UploadBundleResponse:
        chunks = (chunk.data async for chunk in request_iterator)
        record = await self._bundles.receive(_admin(context), chunks)
        return admin_pb2.UploadBundleResponse(
            bundle_sha256=record.sha256,
            model_name=record.name,
            version=record.version,
            size=record.size,
            key_id=record.key_id,
        )

    @unary
    async def CreateRollout(
        self, request: admin_pb2.CreateRolloutRequest, context: Context
    ) -> admin_pb2.CreateRolloutResponse:
        actor = _admin(context)
        try:
            spec = convert.spec_from_pb(request)
        except ValueError as exc:
            raise InvalidRequest(f"bad rollout request: {exc}") from None
        rollout = await self._rollouts.create(actor, spec)
        return admin_pb2.CreateRolloutResponse(rollout=convert.rollout_to_pb(rollout))

    @unary
    async def GetRollout(
        self, request: admin_pb2.GetRolloutRequest, context: Context
    ) -> admin_pb2.GetRolloutResponse:
        rollout = self._queries.get(request.rollout_id)
        return admin_pb2.GetRolloutResponse(rollout=convert.rollout_to_pb(rollout))

    @unary
    async def ListRollouts(
        self, request: admin_pb2.ListRolloutsRequest, context: Context
    ) -> admin_pb2.ListRolloutsResponse:
        rollouts = self._queries.list_rollouts()
        return admin_pb2.ListRolloutsResponse(rollouts=[convert.rollout_to_pb(r) for r in rollouts])

    @unary
    async def PromoteRollout(
        self, request: admin_pb2.PromoteRolloutRequest, context: Context
    ) -> admin_pb2.PromoteRolloutResponse:
        rollout = await self._rollouts.promote(_admin(context), request.rollout_id)
        return admin_pb2.PromoteRolloutResponse(rollout=convert.rollout_to_pb(rollout))

    @unary
    async def PauseRollout(
        self, request: admin_pb2.PauseRolloutRequest, context: Context
    ) -> admin_pb2.PauseRolloutResponse:
        rollout = await self._rollouts.pause(_admin(context), request.rollout_id)
        return admin_pb2.PauseRolloutResponse(rollout=convert.rollout_to_pb(rollout))

    @unary
    async def AbortRollout(
        self, request: admin_pb2.AbortRolloutRequest, context: Context
    ) -> admin_pb2.AbortRolloutResponse:
        rollout = await self._rollouts.abort(_admin(context), request.rollout_id, request.reason)
        return admin_pb2.AbortRolloutResponse(rollout=convert.rollout_to_pb(rollout))

    @unary
    async def RollbackRollout(
        self, request: admin_pb2.RollbackRolloutRequest, context: Context
    ) -> admin_pb2.RollbackRolloutResponse:
        rollout = await self._rollouts.rollback(_admin(context), request.rollout_id)
        return admin_pb2.RollbackRolloutResponse(rollout=convert.rollout_to_pb(rollout))

    @unary
    async def ExplainRollout(
        self, request: admin_pb2.ExplainRolloutRequest, context: Context
    ) -> admin_pb2.ExplainRolloutResponse:
        rollout, measurements = await self._queries.explain(request.rollout_id)
        return admin_pb2.ExplainRolloutResponse(
            rollout=convert.rollout_to_pb(rollout),
            measurements=[convert.measurement_to_pb(m) for m in measurements],
        )

    @unary
    async def PinDevice(
        self, request: admin_pb2.PinDeviceRequest, context: Context
    ) -> admin_pb2.PinDeviceResponse:
        view = await self._desired.pin(
            _admin(context), request.device_id, request.model_name, request.version
        )
        return admin_pb2.PinDeviceResponse(device=convert.device_to_pb(view))

    @unary
    async def GetTelemetry(
        self, request: admin_pb2.GetTelemetryRequest, context: Context
    ) -> admin_pb2.GetTelemetryResponse:
        rows = await self._telemetry.history(request.device_id, request.since_s, request.limit)
        return admin_pb2.GetTelemetryResponse(
            samples=[
                admin_pb2.TelemetrySample(
                    received_at=convert.timestamp(at),
                    device_id=request.device_id,
                    telemetry_json=document,
                )
                for at, document in rows
            ]
        )

    @unary
    async def RemoveDevice(
        self, request: admin_pb2.RemoveDeviceRequest, context: Context
    ) -> admin_pb2.RemoveDeviceResponse:
        revocation = await self._devices.remove(_admin(context), request.device_id)
        return admin_pb2.RemoveDeviceResponse(
            revoked_key_sha256=revocation.public_key_sha256 if revocation else ""
        )

    @unary
    async def ListAuditEntries(
        self, request: admin_pb2.ListAuditEntriesRequest, context: Context
    ) -> admin_pb2.ListAuditEntriesResponse:
        entries = await self._audit.entries(request.limit)
        return admin_pb2.ListAuditEntriesResponse(
            entries=[convert.audit_to_pb(entry) for entry in entries]
        )
