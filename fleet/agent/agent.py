"""The device agent. It dials out to the controller (devices sit behind NAT), reconnects with
backoff, reports telemetry through a store-and-forward buffer, and converges the edge server on
the desired state: download (resumable), verify, install, load and warm, switch, report.

It drives the server only through the serving protocol (`fleet.agent.serving.ServingCore`), in
the same process and event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import shutil
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc

from common.telemetry import TelemetryRecord
from common.version import EDGEFLEET_VERSION
from fleet.agent.download import fetch_bundle
from fleet.agent.identity import DeviceIdentity, enroll, load_identity, save_identity
from fleet.agent.local_state import (
    BootPlan,
    LocalState,
    load_state,
    prune_quarantine,
    quarantine_version,
    save_state,
)
from fleet.agent.serving import ServingCore
from fleet.agent.settings import AgentSettings
from fleet.agent.sources import BundleSources
from fleet.agent.spool import TelemetrySpool
from fleet.agent.system import SystemSample, SystemSampler
from fleet.bundle import install_bundle
from fleet.errors import BundleRejected, FleetError
from fleet.keys import TrustedKeys
from fleet.telemetry_pb import telemetry_to_pb
from protos.edgefleet.fleet.v1 import agent_pb2, agent_pb2_grpc

logger = logging.getLogger(__name__)
DEFAULT_TELEMETRY_INTERVAL_S = 10.0
# Failures worth retrying on the next connection rather than reporting as a failed install.
_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
}


class LoadFailed(FleetError):
    """The server could not load and warm a version."""


class Agent:
    def __init__(
        self,
        core: ServingCore,
        repository: Path,
        settings: AgentSettings,
        hardware_json: str = "{}",
        boot: BootPlan | None = None,
    ) -> None:
        self._core = core
        # What the server tried at boot (None: the server booted without the agent's plan).
        self._boot = boot
        self._state = boot.state if boot is not None else LocalState()
        self._repository = repository
        self._settings = settings
        self._hardware_json = hardware_json
        self._identity: DeviceIdentity | None = None
        self._spool: TelemetrySpool | None = None
        self._trusted = TrustedKeys(by_id={})
        self._sampler: SystemSampler | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._desired: dict[str, agent_pb2.DesiredModel] = {}
        self._desired_changed = asyncio.Event()
        self._spooled = asyncio.Event()
        self._interval_changed = asyncio.Event()
        self._connected = asyncio.Event()
        self._outbox: asyncio.Queue[agent_pb2.ConnectRequest | None] | None = None
        self._stub: agent_pb2_grpc.AgentServiceStub | None = None
        self._unsent_results: deque[agent_pb2.InstallResult] = deque(maxlen=64)
        self._reported: dict[str, str] = {}
        self._failed: dict[tuple[str, str, str], str] = {}
        # Drifts found and put back (active version != desired), per model, since start.
        self.drift_corrections: dict[str, int] = {}
        self._interval = settings.telemetry_interval_s or DEFAULT_TELEMETRY_INTERVAL_S
        # The controller's interval: it calls a device offline after a few of them in silence.
        self._controller_interval = self._interval
        self._sources = BundleSources(settings.bundle_sources)
        # Controller replicas, tried in turn: every failed or ended connection moves on.
        self._addresses = settings.controller_addresses()
        self._attempt = 0

    @property
    def device_id(self) -> str:
        return self._identity.device_id if self._identity else ""

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def desired_versions(self) -> dict[str, str]:
        """The version of each model the controller last asked for."""
        return {name: model.version for name, model in self._desired.items()}

    @property
    def controller_address(self) -> str:
        """The controller replica this agent uses (or tries) now."""
        return self._addresses[self._attempt % len(self._addresses)]

    async def start(self) -> None:
        settings = self._settings
        # Without an identity yet, the connection loop enrolls (with backoff): the server serves
        # from the start, whether or not the controller is reachable.
        self._identity = await asyncio.to_thread(load_identity, settings.state_dir)
        self._trusted = await asyncio.to_thread(TrustedKeys.from_paths, settings.trusted_keys)
        if not self._trusted.by_id:
            logger.warning("no trusted bundle keys configured: every bundle will be rejected")
        self._spool = await asyncio.to_thread(
            TelemetrySpool, settings.state_dir / "telemetry.db", settings.spool_max_samples
        )
        self._sampler = await asyncio.to_thread(SystemSampler)
        if self._boot is None:
            self._state = await asyncio.to_thread(load_state, settings.state_dir)
        # Converge on the desired state this device last heard of, controller or not.
        for name, model in self._state.models.items():
            if model.desired:
                self._desired[name] = agent_pb2.DesiredModel(
                    name=name, version=model.desired, bundle_sha256=model.desired_sha256
                )
        if self._desired:
            self._desired_changed.set()
        await self._quarantine_boot_failures()
        self._tasks = [
            asyncio.create_task(self._connect_forever(), name="agent-connect"),
            asyncio.create_task(self._sample_forever(), name="agent-telemetry"),
            asyncio.create_task(self._converge_forever(), name="agent-converge"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._sources.aclose()
        if self._spool is not None:
            await asyncio.to_thread(self._spool.close)
            self._spool = None

    # connection
    async def _connect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self._settings.reconnect_min_s
        while True:
            started = loop.time()
            try:
                if self._identity is None:
                    await self._enroll()
                await self._session()
            except FleetError as error:
                logger.error("cannot enroll: %s", error)
            except grpc.aio.AioRpcError as error:
                logger.warning("controller stream ended: %s %s", error.code().name, error.details())
            except (OSError, ConnectionError) as error:
                logger.warning("controller unreachable: %s", error)
            # The next try goes to the next replica; with one, to the same controller.
            self._attempt += 1
            if loop.time() - started > 30:
                delay = self._settings.reconnect_min_s
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self._settings.reconnect_max_s)

    async def _enroll(self) -> None:
        identity = await enroll(self._settings, self._attempt)
        await asyncio.to_thread(save_identity, self._settings.state_dir, identity)
        self._identity = identity
        logger.info("enrolled as device %s", identity.device_id)

    async def _session(self) -> None:
        assert self._identity is not None
        options = [("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000)]
        address = self.controller_address
        async with grpc.aio.secure_channel(
            address, self._identity.credentials(), options=options
        ) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            # None ends the request stream, so gRPC's request consumer finishes cleanly.
            outbox: asyncio.Queue[agent_pb2.ConnectRequest | None] = asyncio.Queue(maxsize=256)
            outbox.put_nowait(agent_pb2.ConnectRequest(hello=self._hello()))
            call = stub.Connect(self._drain(outbox))
            forwarder: asyncio.Task[None] | None = None
            heartbeat: asyncio.Task[None] | None = None
            try:
                async for response in call:
                    if forwarder is None:
                        # Only a stream the controller answered takes samples out of the buffer.
                        forwarder = asyncio.create_task(self._forward_telemetry(outbox))
                        heartbeat = asyncio.create_task(self._heartbeat(outbox))
                        self._outbox, self._stub = outbox, stub
                        self._connected.set()
                        logger.info("connected to controller %s", address)
                        while self._unsent_results:
                            result = self._unsent_results.popleft()
                            await outbox.put(agent_pb2.ConnectRequest(install_result=result))
                    if response.HasField("desired_state"):
                        self._take_desired(response.desired_state)
            finally:
                self._connected.clear()
                self._outbox = self._stub = None
                # gather, not `suppress(CancelledError): await task`: that would also swallow
                # a cancellation of this task (Agent.stop) arriving meanwhile.
                helpers = [task for task in (forwarder, heartbeat) if task is not None]
                for task in helpers:
                    task.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
                while not outbox.empty():
                    outbox.get_nowait()
                outbox.put_nowait(None)
                call.cancel()

    async def _heartbeat(self, outbox: asyncio.Queue[agent_pb2.ConnectRequest | None]) -> None:
        """Between samples taken less often than the controller expects (an agent configured
        with its own longer interval), say "alive" at the controller's interval."""
        while True:
            await asyncio.sleep(self._controller_interval)
            if self._interval > self._controller_interval and not outbox.full():
                message = agent_pb2.Heartbeat()
                message.sent_at.GetCurrentTime()
                outbox.put_nowait(agent_pb2.ConnectRequest(heartbeat=message))

    @staticmethod
    async def _drain(
        outbox: asyncio.Queue[agent_pb2.ConnectRequest | None],
    ) -> AsyncIterator[agent_pb2.ConnectRequest]:
        while (message := await outbox.get()) is not None:
            yield message

    def _hello(self) -> agent_pb2.Hello:
        installed = []
        for entry in self._core.repository_index():
            active = self._core.active_version(entry.name) == entry.version
            digest = self._state.models.get(entry.name)
            installed.append(
                agent_pb2.InstalledModel(
                    name=entry.name,
                    version=entry.version,
                    state=entry.state,
                    active=active,
                    bundle_sha256=digest.installed.get(entry.version, "") if digest else "",
                )
            )
        return agent_pb2.Hello(
            agent_version=EDGEFLEET_VERSION,
            labels=self._settings.labels,
            hardware_json=self._hardware_json,
            installed=installed,
        )

    def _take_desired(self, state: agent_pb2.DesiredState) -> None:
        interval = state.telemetry_interval_s
        if interval > 0:
            self._controller_interval = interval
        follow = self._settings.telemetry_interval_s is None
        if follow and interval > 0 and interval != self._interval:
            self._interval = interval
            self._interval_changed.set()
        self._desired = {model.name: model for model in state.models}
        changed = False
        for model in state.models:
            local = self._state.model(model.name)
            if (local.desired, local.desired_sha256) != (model.version, model.bundle_sha256):
                local.desired, local.desired_sha256 = model.version, model.bundle_sha256
                changed = True
        if changed:
            self._save_state()
        self._desired_changed.set()

    def _save_state(self) -> None:
        """Write the local state now: it is small, and a device may lose power any time."""
        save_state(self._settings.state_dir, self._state)

    async def _report(self, result: agent_pb2.InstallResult) -> None:
        outbox = self._outbox
        if outbox is None:
            self._unsent_results.append(result)
        else:
            await outbox.put(agent_pb2.ConnectRequest(install_result=result))

    # telemetry
    def _telemetry(self, vitals: SystemSample, dropped: int) -> agent_pb2.Telemetry:
        """Runs on the event loop: the core's statistics are not thread-safe."""
        record = TelemetryRecord(
            sampled_at=time.time(),
            dropped_samples=dropped,
            cpu_percent=vitals.cpu_percent,
            memory_used_bytes=vitals.memory_used_bytes,
            memory_total_bytes=vitals.memory_total_bytes,
            temperature_c=None if math.isnan(vitals.temperature_c) else vitals.temperature_c,
            gpu_utilization_percent=vitals.gpu_utilization_percent if vitals.has_gpu else None,
            gpu_memory_used_bytes=vitals.gpu_memory_used_bytes if vitals.has_gpu else None,
            drift_corrections=sum(self.drift_corrections.values()),
            # The server reports the fleet's own record (common.telemetry): passed on as is.
            models=tuple(
                model
                for model in self._core.model_telemetry()
                if self._core.active_version(model.name) == model.version
            ),
        )
        return telemetry_to_pb(record)

    async def _sample_forever(self) -> None:
        while True:
            try:
                assert self._sampler is not None and self._spool is not None
                vitals = await asyncio.to_thread(self._sampler.sample)
                dropped = await asyncio.to_thread(self._spool.dropped)
                message = self._telemetry(vitals, dropped)
                await asyncio.to_thread(self._spool.put, message.SerializeToString())
                self._spooled.set()
            except Exception:
                logger.exception("telemetry sample failed")
            # A new interval from the controller takes effect at once, not after the old one.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._interval_changed.wait()
            self._interval_changed.clear()

    async def _forward_telemetry(
        self, outbox: asyncio.Queue[agent_pb2.ConnectRequest | None]
    ) -> None:
        """Move buffered samples, oldest first, onto the stream."""
        spool = self._spool
        assert spool is not None
        while True:
            rows = await asyncio.to_thread(spool.peek, 64)
            if not rows:
                self._spooled.clear()
                await self._spooled.wait()
                continue
            now = time.time()
            for _, payload in rows:
                message = agent_pb2.Telemetry.FromString(payload)
                if now - message.sampled_at.ToNanoseconds() / 1e9 > 2 * self._interval:
                    message.replayed = True
                await outbox.put(agent_pb2.ConnectRequest(telemetry=message))
            await asyncio.to_thread(spool.ack, rows[-1][0])

    # convergence
    async def _converge_forever(self) -> None:
        """Converge when the desired state changes, and every --reconcile-interval-s check that
        what serves is still what is desired (one task: never beside an install of its own)."""
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for can lose a cancellation
            # that arrives as its timeout fires, and this loop then outlives Agent.stop().
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.reconcile_interval_s):
                    await self._desired_changed.wait()
            if not self._desired_changed.is_set() and not self._drifted():
                continue
            self._desired_changed.clear()
            for model in list(self._desired.values()):
                try:
                    await self._converge(model)
                except Exception:
                    logger.exception("converging %s/%s failed", model.name, model.version)

    def _drifted(self) -> list[str]:
        """Models whose active version is not the desired one, though nothing failed to install
        it: changed by hand or by a load on the server's own API. Counted and logged; the
        caller converges them back."""
        drifted = []
        for name, model in self._desired.items():
            active = self._core.active_version(name)
            if (
                active == model.version
                or (name, model.version, model.bundle_sha256) in self._failed
            ):
                continue
            if self._reported.get(name) != model.version:
                continue  # not installed yet: an install, not a drift
            drifted.append(name)
            self.drift_corrections[name] = self.drift_corrections.get(name, 0) + 1
            logger.warning(
                "%s: version %s active, %s desired (changed outside the agent); putting %s back",
                name, active, model.version, model.version,
            )  # fmt: skip
        return drifted

    async def _converge(self, model: agent_pb2.DesiredModel) -> None:
        name, version, sha = model.name, model.version, model.bundle_sha256
        local = self._state.model(name)
        # Versions are immutable by digest: a version on disk from another bundle is stale.
        stale = bool(sha) and local.installed.get(version, "") != sha
        if self._core.active_version(name) == version and not stale:
            if self._reported.get(name) != version:
                await self._result(name, version, agent_pb2.INSTALL_OUTCOME_INSTALLED, "")
            await self._settle(name, version, model.rejected_versions)
            return
        key = (name, version, sha)
        if key in self._failed:
            return
        version_dir = self._repository / name / version
        try:
            on_disk = await asyncio.to_thread((version_dir / "manifest.json").is_file)
            if on_disk and stale:
                await self._quarantine(name, version, f"replaced by bundle {sha[:12]}")
                on_disk = False
            if not on_disk:
                self._progress(name, version, agent_pb2.INSTALL_PHASE_DOWNLOADING)
                await self._install(model)
                local.installed[version] = sha
                local.quarantined.pop(version, None)
                await asyncio.to_thread(self._save_state)
            loop = asyncio.get_running_loop()
            started = loop.time()
            previous = self._core.active_version(name)
            self._progress(name, version, agent_pb2.INSTALL_PHASE_INSTALLING)
            try:
                await self._core.load_model(name, version)
            except self._core.load_error as error:
                raise LoadFailed(str(error) or type(error).__name__) from error
            logger.info(
                "%s: version %s active (was %s), loaded and warmed in %.2fs",
                name,
                version,
                previous,
                loop.time() - started,
            )
            await self._result(name, version, agent_pb2.INSTALL_OUTCOME_INSTALLED, "")
            await self._settle(name, version, model.rejected_versions)
        except BundleRejected as error:
            self._failed[key] = str(error)
            logger.error("%s/%s: bundle rejected: %s", name, version, error)
            await self._result(name, version, agent_pb2.INSTALL_OUTCOME_REJECTED, str(error))
        except LoadFailed as error:
            self._failed[key] = str(error)
            logger.error("%s/%s: the server refused it: %s", name, version, error)
            await self._quarantine(name, version, f"failed to load: {error}")
            await self._result(name, version, agent_pb2.INSTALL_OUTCOME_FAILED, str(error))
        except grpc.aio.AioRpcError as error:
            if error.code() in _TRANSIENT:
                logger.warning("%s/%s: download interrupted (%s); will resume", name, version,
                               error.code().name)  # fmt: skip
                return
            self._failed[key] = f"download refused: {error.details()}"
            await self._result(name, version, agent_pb2.INSTALL_OUTCOME_FAILED, self._failed[key])
        except ConnectionError as error:
            logger.warning("%s/%s: %s; will resume", name, version, error)

    async def _settle(self, name: str, version: str, rejected: Sequence[str]) -> None:
        """`version` serves: remember it as good, quarantine rolled-back versions, clean up."""
        local = self._state.model(name)
        if local.good[:1] != [version]:
            self._state.mark_good(name, version)
            await asyncio.to_thread(self._save_state)
        for bad in rejected:
            if bad != version and bad not in local.quarantined:
                await self._quarantine(name, bad, "rolled back by the controller")
        keep = self._state.keep(name) | {version}
        removed = await asyncio.to_thread(self._prune, name, keep)
        if removed:
            for old in removed:
                local.installed.pop(old, None)
            await asyncio.to_thread(self._save_state)

    async def _quarantine(self, name: str, version: str, reason: str) -> None:
        """Move a version out of the repository so the server never boots into it again."""
        local = self._state.model(name)
        local.quarantined[version] = reason
        local.good = [v for v in local.good if v != version]
        local.installed.pop(version, None)
        await asyncio.to_thread(self._save_state)
        moved = await asyncio.to_thread(
            quarantine_version,
            self._repository,
            self._settings.state_dir,
            name,
            version,
            self._settings.quarantine_kept,
        )
        if moved is not None:
            logger.warning("%s: version %s quarantined (%s) in %s", name, version, reason, moved)

    async def _quarantine_boot_failures(self) -> None:
        """Versions the server tried at boot before the one it serves failed to load: quarantine
        them and tell the controller once connected."""
        if self._boot is None:
            return
        for name, tried in self._boot.tried.items():
            active = self._core.active_version(name)
            reasons = {e.version: e.reason for e in self._core.repository_index() if e.name == name}
            for version in tried:
                if version == active:
                    break
                reason = f"failed to load at boot: {reasons.get(version) or 'load failed'}"
                await self._quarantine(name, version, reason)
                await self._result(name, version, agent_pb2.INSTALL_OUTCOME_FAILED, reason)

    async def _install(self, model: agent_pb2.DesiredModel) -> None:
        if not model.bundle_sha256:
            raise BundleRejected(
                f"version {model.version} is not on this device and no bundle was offered"
            )
        directory = self._settings.state_dir / "bundles"
        # HTTP sources first (mirrors, the origin), the controller last.
        path = await self._sources.fetch(model.bundle_sha256, model.bundle_size, directory)
        if path is None:
            await self._connected.wait()
            stub = self._stub
            if stub is None:
                raise ConnectionError("controller went away")
            path = await fetch_bundle(
                stub, model.bundle_sha256, directory, self._settings.download_chunk_bytes
            )
        self._progress(model.name, model.version, agent_pb2.INSTALL_PHASE_VERIFYING)
        try:
            await asyncio.to_thread(
                install_bundle,
                path,
                self._trusted,
                self._repository,
                (model.name, model.version),
            )
        finally:
            # The version directory is the local copy from now on; a bad bundle is not kept.
            await asyncio.to_thread(path.unlink, True)

    def _progress(self, name: str, version: str, phase: int) -> None:
        """Tell the controller where an install stands (best effort: never waits, and a full
        outbox or no connection drops it; the result is what counts)."""
        outbox = self._outbox
        if outbox is not None and not outbox.full():
            progress = agent_pb2.InstallProgress(
                model_name=name,
                version=version,
                phase=phase,  # type: ignore[arg-type]
            )
            outbox.put_nowait(agent_pb2.ConnectRequest(install_progress=progress))

    async def _result(self, name: str, version: str, outcome: int, reason: str) -> None:
        if outcome == agent_pb2.INSTALL_OUTCOME_INSTALLED:
            self._reported[name] = version
        local = self._state.models.get(name)
        desired = self._desired.get(name)
        digest = local.installed.get(version, "") if local else ""
        if not digest and desired is not None and desired.version == version:
            digest = desired.bundle_sha256
        await self._report(
            agent_pb2.InstallResult(
                model_name=name,
                version=version,
                outcome=outcome,  # type: ignore[arg-type]
                reason=reason,
                active_version=self._core.active_version(name) or "",
                bundle_sha256=digest,
            )
        )

    def _prune(self, name: str, keep: set[str]) -> list[str]:
        """Quarantined copies go first; then versions beyond `keep_versions`, oldest first,
        never the desired, the last good, the previous good or the active version."""
        kept = self._settings.quarantine_kept
        for path in prune_quarantine(self._settings.state_dir, name, kept):
            logger.info("%s: removed quarantined copy %s", name, path.name)
        model_dir = self._repository / name
        versions = sorted(
            (child.name for child in model_dir.iterdir() if child.name.isdigit()), key=int
        )
        removable = [version for version in versions if version not in keep]
        excess = len(versions) - self._settings.keep_versions
        for version in removable[: max(excess, 0)]:
            shutil.rmtree(model_dir / version, ignore_errors=True)
            logger.info("%s: removed old version %s", name, version)
        return removable[: max(excess, 0)]
