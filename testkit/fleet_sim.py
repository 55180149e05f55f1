"""A simulated fleet: N lightweight agents in one process, for scale benchmarks and rollout
experiments. Each agent is a real mTLS client with its own certificate and Connect stream; what
it simulates is the device behind it: per-version latency, fps and error profiles, and a link
bandwidth that paces its bundle downloads. (Tests use real agents; see fleet.agent.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import aiohttp
import grpc

from common.telemetry import ModelTelemetry, TelemetryRecord
from fleet.agent.sources import bundle_url
from fleet.ctl.client import AdminClient
from fleet.pki import make_csr, new_private_key, private_key_pem
from fleet.telemetry_pb import telemetry_to_pb
from protos.edgefleet.fleet.v1 import admin_pb2, agent_pb2, agent_pb2_grpc

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionProfile:
    p50_ms: float
    p95_ms: float
    fps: float
    error_rate: float = 0.0


@dataclass(frozen=True)
class SimSettings:
    # HOST:PORT, or several comma-separated (replicas): a session that ends moves to the next.
    controller: str
    enroll_address: str
    ca_pem: bytes
    count: int
    model: str = "sim-model"
    initial_version: str = "1"
    # Version -> how the simulated device performs on it; unknown versions use "default".
    profiles: Mapping[str, VersionProfile] = field(
        default_factory=lambda: {"default": VersionProfile(p50_ms=8, p95_ms=12, fps=15)}
    )
    link_mbps: float = 50.0
    labels: Mapping[str, str] = field(default_factory=lambda: {"site": "sim"})
    telemetry_interval_s: float = 10.0
    # Spread the first connections so the controller is not hit by a thundering herd.
    connect_spread_s: float = 5.0
    # HTTP bundle origin (a web server over the controller's --publish-dir); empty: download
    # from the controller over gRPC.
    bundle_origin: str = ""


@dataclass
class SimStats:
    telemetry_sent: int = 0
    installs: int = 0
    install_seconds: list[float] = field(default_factory=list)
    bytes_downloaded: int = 0
    bytes_from_origin: int = 0
    connected: int = 0
    errors: int = 0


class SimulatedAgent:
    def __init__(
        self, settings: SimSettings, device_id: str, credentials: grpc.ChannelCredentials,
        stats: SimStats, http: aiohttp.ClientSession | None = None,
    ) -> None:  # fmt: skip
        self.device_id = device_id
        self.http = http
        self._settings = settings
        self._credentials = credentials
        self._stats = stats
        self.version = settings.initial_version
        self._requests = 0
        self._errors = 0
        self._outbox: asyncio.Queue[agent_pb2.ConnectRequest] = asyncio.Queue(maxsize=16)
        self._interval = settings.telemetry_interval_s
        self._held: set[str] = {settings.initial_version}
        self._addresses = [a.strip() for a in settings.controller.split(",") if a.strip()]
        self._attempt = random.randrange(len(self._addresses))

    def _profile(self) -> VersionProfile:
        profiles = self._settings.profiles
        return profiles.get(self.version) or profiles["default"]

    def _telemetry(self) -> agent_pb2.ConnectRequest:
        profile = self._profile()
        served = int(profile.fps * self._interval)
        self._requests += served
        self._errors += sum(random.random() < profile.error_rate for _ in range(served))
        jitter = random.uniform(0.9, 1.1)
        record = TelemetryRecord(
            sampled_at=time.time(),
            cpu_percent=random.uniform(20, 60),
            memory_used_bytes=1 << 30,
            memory_total_bytes=4 << 30,
            temperature_c=55.0,
            models=(
                ModelTelemetry(
                    name=self._settings.model,
                    version=self.version,
                    requests=self._requests,
                    errors=self._errors,
                    drops=0,
                    fps=profile.fps * jitter,
                    latency_p50_ms=profile.p50_ms * jitter,
                    latency_p95_ms=profile.p95_ms * jitter,
                ),
            ),
        )
        return agent_pb2.ConnectRequest(telemetry=telemetry_to_pb(record))

    async def run(self) -> None:
        await asyncio.sleep(random.uniform(0, self._settings.connect_spread_s))
        while True:
            try:
                await self._session()
            except grpc.aio.AioRpcError as error:
                self._stats.errors += 1
                logger.debug("%s: %s", self.device_id, error.code().name)
            self._attempt += 1  # the next replica, as the real agent does
            await asyncio.sleep(random.uniform(1, 3))

    async def _session(self) -> None:
        address = self._addresses[self._attempt % len(self._addresses)]
        async with grpc.aio.secure_channel(address, self._credentials) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            hello = agent_pb2.Hello(
                agent_version="sim",
                installed=[
                    agent_pb2.InstalledModel(
                        name=self._settings.model, version=self.version, state="READY", active=True
                    )
                ],
            )
            self._outbox = asyncio.Queue(maxsize=16)
            self._outbox.put_nowait(agent_pb2.ConnectRequest(hello=hello))
            call = stub.Connect(self._drain())
            ticker = asyncio.create_task(self._tick())
            self._stats.connected += 1
            try:
                async for response in call:
                    state = response.desired_state
                    if state.telemetry_interval_s:
                        self._interval = state.telemetry_interval_s
                    for model in state.models:
                        if model.name == self._settings.model and model.version != self.version:
                            await self._install(stub, model)
            finally:
                self._stats.connected -= 1
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker

    async def _drain(self) -> AsyncIterator[agent_pb2.ConnectRequest]:
        while True:
            yield await self._outbox.get()

    async def _tick(self) -> None:
        await asyncio.sleep(random.uniform(0, self._interval))
        while True:
            await self._outbox.put(self._telemetry())
            self._stats.telemetry_sent += 1
            await asyncio.sleep(self._interval)

    async def _install(
        self, stub: agent_pb2_grpc.AgentServiceStub, model: agent_pb2.DesiredModel
    ) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        if model.version not in self._held and model.bundle_sha256:
            bytes_per_s = self._settings.link_mbps * 1e6 / 8
            if self.http is not None and self._settings.bundle_origin:
                url = bundle_url(self._settings.bundle_origin, model.bundle_sha256)
                async with self.http.get(url) as response:
                    response.raise_for_status()
                    async for data in response.content.iter_chunked(256 * 1024):
                        self._stats.bytes_downloaded += len(data)
                        self._stats.bytes_from_origin += len(data)
                        await asyncio.sleep(len(data) / bytes_per_s)
            else:
                async for chunk in stub.Download(
                    agent_pb2.DownloadRequest(bundle_sha256=model.bundle_sha256)
                ):
                    self._stats.bytes_downloaded += len(chunk.data)
                    # The simulated link: a chunk takes as long as its bytes need at this
                    # bandwidth.
                    await asyncio.sleep(len(chunk.data) / bytes_per_s)
            self._held.add(model.version)
        self.version = model.version
        self._stats.installs += 1
        self._stats.install_seconds.append(loop.time() - started)
        await self._outbox.put(
            agent_pb2.ConnectRequest(
                install_result=agent_pb2.InstallResult(
                    model_name=model.name,
                    version=model.version,
                    outcome=agent_pb2.INSTALL_OUTCOME_INSTALLED,
                    active_version=model.version,
                )
            )
        )


class SimulatedFleet:
    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.stats = SimStats()
        self.agents: list[SimulatedAgent] = []
        self._tasks: list[asyncio.Task[None]] = []
        # One HTTP client (connection pool) for every simulated device's origin downloads,
        # created in start(): a session belongs to the running event loop.
        self._http: aiohttp.ClientSession | None = None

    async def enroll(self, admin: AdminClient, prefix: str = "sim", concurrency: int = 64) -> None:
        """Enroll `count` devices through the real token + CSR path (one shared key: simulation
        only; every device still gets its own certificate)."""
        key = new_private_key()
        key_pem = private_key_pem(key)
        tls = grpc.ssl_channel_credentials(root_certificates=self.settings.ca_pem)
        gate = asyncio.Semaphore(concurrency)
        async with grpc.aio.secure_channel(self.settings.enroll_address, tls) as channel:
            enrollment = agent_pb2_grpc.EnrollmentServiceStub(channel)

            async def one(index: int) -> SimulatedAgent:
                device_id = f"{prefix}-{index:05d}"
                async with gate:
                    token = await admin.stub.CreateEnrollmentToken(
                        admin_pb2.CreateEnrollmentTokenRequest(labels=dict(self.settings.labels))
                    )
                    response = await enrollment.Enroll(
                        agent_pb2.EnrollRequest(
                            token=token.token, device_id=device_id, csr_pem=make_csr(key, device_id)
                        )
                    )
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=self.settings.ca_pem,
                    private_key=key_pem,
                    certificate_chain=response.certificate_pem,
                )
                return SimulatedAgent(self.settings, device_id, credentials, self.stats, self._http)

            self.agents = list(
                await asyncio.gather(*(one(index) for index in range(self.settings.count)))
            )

    def start(self) -> None:
        if self.settings.bundle_origin:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_read=120),
            )
            for agent in self.agents:
                agent.http = self._http
        self._tasks = [asyncio.create_task(agent.run()) for agent in self.agents]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._http is not None:
            await self._http.close()
            self._http = None

    def versions(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for agent in self.agents:
            counts[agent.version] = counts.get(agent.version, 0) + 1
        return counts
