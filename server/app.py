"""EdgeServer: the whole edge server in-process — core, gRPC services, health, reflection,
Prometheus. The CLI, the tests and the fleet agent all build it through this one factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.prometheus_http import start_metrics_http
from protos.edgefleet.v1 import (
    frame_stream_pb2,
    server_info_pb2,
    server_info_pb2_grpc,
)
from protos.inference import grpc_service_pb2, grpc_service_pb2_grpc
from server.core import BootOrder, InferenceCore
from server.errors import PortInUse
from server.grpc_api.auth import auth_interceptors
from server.grpc_api.frame_stream import FrameStreamServicer, add_frame_stream_service
from server.grpc_api.kserve import KServeServicer
from server.grpc_api.malformed import MalformedRequestInterceptor
from server.grpc_api.raw_payload import RawPayloadInterceptor
from server.grpc_api.server_info import DeviceFacts, ServerInfoServicer
from server.models.memory import bound_big_buffers
from server.models.runtime_plan import Planner
from server.observability.metrics import ServerMetrics
from server.security import token_check
from server.settings import ServerSettings
from server.tls import TlsConfigError, http_ssl_context
from server.tls import server_credentials as tls_credentials

if TYPE_CHECKING:
    from server.http_api.kserve_http import HttpServer

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    frame_stream_pb2.DESCRIPTOR.services_by_name["FrameStreamService"].full_name,
    server_info_pb2.DESCRIPTOR.services_by_name["ServerInfoService"].full_name,
)


def grpc_options(settings: ServerSettings) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Cameras sit behind NAT and flaky links: notice dead peers instead of holding streams.
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.so_reuseport", 0),
        # A stream's reader that waits holds gRPC to one message ahead (settings.py).
        ("grpc.http2.bdp_probe", int(settings.grpc_bdp_probe)),
    ]


class EdgeServer:
    def __init__(
        self,
        settings: ServerSettings,
        planner: Planner | None = None,
        *,
        device_facts: DeviceFacts | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        server_credentials: grpc.ServerCredentials | None = None,
        boot_order: BootOrder | None = None,
    ) -> None:
        self.settings = settings
        bound_big_buffers()  # a refused 30 MB request must not leave its pages behind
        self.metrics = ServerMetrics()
        self.core = InferenceCore(
            settings, planner=planner, metrics=self.metrics, boot_order=boot_order
        )
        self._device_facts = device_facts
        # The settings' auth token and TLS files apply unless the caller passes its own; the token
        # check runs first so an unauthenticated call reaches nothing else.
        self._interceptors = [
            *auth_interceptors(settings),
            MalformedRequestInterceptor(),
            RawPayloadInterceptor(),
            *interceptors,
        ]
        self._credentials = (
            server_credentials if server_credentials is not None else tls_credentials(settings)
        )
        self._grpc: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._metrics_http: Any = None
        self._http: HttpServer | None = None
        self._health_ready = False
        self._health_updates: set[asyncio.Task[None]] = set()
        self.port = 0
        self.http_port = 0
        self.metrics_port = 0

    async def start(self) -> int:
        """Bind the ports, load the models, then serve. Returns the gRPC port.

        The ports are bound first, so a busy port is reported at once (PortInUse), not after
        minutes of loading; connections made meanwhile wait until the models are loaded."""
        # TLS mistakes are settings mistakes: refused before anything binds or loads. The HTTP
        # and metrics ports share one TLS context.
        serves_web = self.settings.http_port >= 0 or self.settings.metrics_port >= 0
        http_tls = self._http_tls() if serves_web else None
        server = grpc.aio.server(
            interceptors=self._interceptors,
            options=grpc_options(self.settings),
            maximum_concurrent_rpcs=self.settings.max_concurrent_rpcs,
        )
        http: HttpServer | None = None
        grpc_bound = grpc_started = False
        try:
            self._add_services(server)
            # gRPC last: its port, once bound, is released only by a started server's stop.
            http = self._bind_http(http_tls) if self.settings.http_port >= 0 else None
            self._start_metrics(http_tls)
            self.port = self._bind_grpc(server)
            grpc_bound = True
            await self.core.start()
            await server.start()
            grpc_started = True
            if http is not None:
                await http.start()
        except BaseException:
            # Whatever failed (a taken port, a model), nothing made here outlives the call.
            await self._release_grpc(server, grpc_bound and not grpc_started)
            if http is not None:
                await http.stop()
            await self.core.stop()
            self._stop_metrics()
            raise
        self._grpc = server
        self._http = http
        # grpc.health follows readiness from now on (NOT_SERVING while a wanted model is
        # missing, and from the first moment of a shutdown).
        self.core.on_readiness_change = self._readiness_changed
        self._health_ready = self.core.ready
        await self._set_health(self._health_ready)
        if self.settings.port_file is not None:
            self.settings.port_file.write_text(f"{self.port}\n", encoding="utf-8")
        log.info(
            "edgefleet serving on %s:%d (HTTP on %s, metrics on %s)",
            self.settings.host, self.port,
            self.http_port if self._http is not None else "off",
            self.metrics_port if self.settings.metrics_port >= 0 else "off",
        )  # fmt: skip
        return self.port

    def _add_services(self, server: grpc.aio.Server) -> None:
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            KServeServicer(self.core), server
        )
        add_frame_stream_service(FrameStreamServicer(self.core), server)
        server_info_pb2_grpc.add_ServerInfoServiceServicer_to_server(
            ServerInfoServicer(self.core, self._device_facts), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )

    @staticmethod
    async def _release_grpc(server: grpc.aio.Server, bound_not_started: bool) -> None:
        """Stop a gRPC server that will not serve. grpc (1.81) keeps the port of a server that
        never started bound until the process exits, whatever stop() or the collector do; only
        a started server's stop releases it, so such a server starts and stops at once (a call
        made in that instant is cancelled)."""
        if bound_not_started:
            with contextlib.suppress(Exception):
                await server.start()
        await server.stop(None)

    def _bind_grpc(self, server: grpc.aio.Server) -> int:
        address = f"{self.settings.host}:{self.settings.port}"
        try:
            if self._credentials is not None:
                return server.add_secure_port(address, self._credentials)
            return server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc says "Failed to bind to address ..."
            raise PortInUse(
                f"cannot listen on {address}: the port is in use or the address is not local"
            ) from exc

    async def _set_health(self, ready: bool) -> None:
        status = health_pb2.HealthCheckResponse
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, status.SERVING if ready else status.NOT_SERVING)

    def _readiness_changed(self, ready: bool) -> None:
        if ready == self._health_ready:
            return
        self._health_ready = ready
        task = asyncio.get_running_loop().create_task(self._set_health(ready))
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    def _http_tls(self) -> ssl.SSLContext | None:
        """The HTTP and metrics ports' TLS: the settings' files, as for gRPC. HTTP in plaintext
        beside a TLS gRPC port would hand out, unencrypted, what gRPC protects: only on
        explicit request."""
        if self.settings.http_plaintext:
            if self._credentials is not None:
                log.warning("HTTP serves plaintext beside TLS gRPC (http_plaintext is set)")
            return None
        context = http_ssl_context(self.settings)
        if context is None and self._credentials is not None:
            raise TlsConfigError(
                "gRPC is served over TLS but the HTTP port has no TLS files: set tls_cert and "
                "tls_key, disable HTTP (http_port -1), or set http_plaintext to serve HTTP "
                "unencrypted on purpose"
            )
        return context

    def _bind_http(self, tls: ssl.SSLContext | None) -> HttpServer:
        # Imported here: aiohttp is 10 MB of RSS that a server with HTTP off never uses.
        from server.http_api.kserve_http import HttpServer

        http = HttpServer(
            self.core, self.settings, ssl_context=tls, token=token_check(self.settings)
        )
        try:
            self.http_port = http.bind()
        except OSError as exc:
            raise PortInUse(
                f"cannot serve HTTP on {self.settings.host}:{self.settings.http_port}: "
                f"{exc.strerror}"
            ) from exc
        return http

    def _start_metrics(self, tls: ssl.SSLContext | None) -> None:
        if self.settings.metrics_port < 0:
            return
        try:
            # The metrics port is a door like the others: the same token and TLS as HTTP.
            token = token_check(self.settings)
            self._metrics_http = start_metrics_http(
                self.settings.metrics_port,
                self.settings.host,
                self.metrics.registry,
                authorize=token.refusal if token is not None else None,
                ssl_context=tls,
            )
        except OSError as exc:
            raise PortInUse(
                f"cannot serve metrics on {self.settings.host}:{self.settings.metrics_port}: "
                f"{exc.strerror}"
            ) from exc
        self.metrics_port = self._metrics_http.server_port

    def _stop_metrics(self) -> None:
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            self._metrics_http = None

    async def wait_for_termination(self) -> None:
        if self._grpc is not None:
            await self._grpc.wait_for_termination()

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: say not ready (HTTP 503, grpc.health NOT_SERVING) at once, keep serving for
        `drain_delay_s` while load balancers notice, then refuse new work (camera streams take
        no further frame, answer those they accepted and end UNAVAILABLE) and let in-flight
        requests finish within the grace, returning as soon as they have; close the
        listeners; free the models."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        self.core.begin_drain()
        await self._health.enter_graceful_shutdown()
        if self.settings.drain_delay_s > 0 and (self._grpc is not None or self._http):
            await asyncio.sleep(self.settings.drain_delay_s)
        self.core.refuse_new_work()
        if self._http is not None:
            self._http.refuse_new()
        await asyncio.gather(
            self._grpc.stop(grace) if self._grpc is not None else asyncio.sleep(0),
            self._http.wait_idle(grace) if self._http is not None else asyncio.sleep(0),
        )
        self._grpc = None
        if self._http is not None:
            await self._http.stop()
            self._http = None
        await self.core.stop()
        self._stop_metrics()
        log.info("edgefleet stopped")
