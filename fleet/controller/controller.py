"""The controller core: enrollment, the device registry, desired state, bundles, telemetry and
rollouts. No gRPC here: `fleet.controller.grpc_api` translates and delegates."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram

from fleet.bundle import BundleInfo, sha256_path, verify_bundle
from fleet.controller.changefeed import Announcer, Change
from fleet.controller.live import LiveFleet, TelemetrySample
from fleet.controller.metrics import FleetCollector
from fleet.controller.records import (
    PIN_SOURCE,
    AuditRecord,
    BundleRecord,
    DesiredEntry,
    DeviceRecord,
    Measurement,
    RolloutRecord,
    RolloutSpec,
)
from fleet.controller.rollouts import RolloutEngine, matches
from fleet.controller.settings import ControllerSettings
from fleet.controller.store import Store, StoreRunner
from fleet.controller.stores import is_postgres
from fleet.errors import Conflict, InvalidRequest, NotFound
from fleet.keys import TrustedKeys
from fleet.pki import DEVICE_PREFIX, CertificateAuthority
from fleet.publish import publish_bundle

logger = logging.getLogger(__name__)
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class DeviceView:
    record: DeviceRecord
    online: bool
    last_seen: float
    desired: list[DesiredEntry]
    latest: TelemetrySample | None


class FleetController:
    def __init__(
        self,
        settings: ControllerSettings,
        store: Store,
        ca: CertificateAuthority,
        trusted_keys: TrustedKeys,
        registry: CollectorRegistry,
    ) -> None:
        self.settings = settings
        self._store = StoreRunner(store)
        self._ca = ca
        self._trusted_keys = trusted_keys
        # One controller per SQLite file: the same name across restarts, so a restarted
        # controller drives its rollouts at once instead of waiting for its old leases.
        self.replica = settings.replica_name or (
            f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
            if is_postgres(settings.store)
            else "sqlite"
        )
        # Replicas on one PostgreSQL tell each other what changed (fleet/controller/changefeed);
        # one controller on SQLite has nobody to tell.
        self.announcer: Announcer | None = None
        if is_postgres(settings.store):
            self.announcer = Announcer(self._publish, self.replica)
        # Devices connected to another replica, and which.
        self._elsewhere: dict[str, str] = {}
        self.live = LiveFleet(settings.samples_per_device, self._presence)
        self.rollouts = RolloutEngine(
            self._store,
            self.live,
            self.wake_devices,
            settings.rollout_tick_s,
            replica=self.replica,
            lease_ttl_s=settings.lease_ttl_s,
            announce=self._announce,
        )
        self._bundle_dir = settings.data_dir / "bundles"
        # (sequence, device, received at, document): rows leave only once the store has them.
        self._pending_rows: deque[tuple[int, str, float, str]] = deque(
            maxlen=settings.telemetry_buffer_rows
        )
        self._row_sequence = 0
        self._flush_lock = asyncio.Lock()
        self.telemetry_rows_dropped = 0
        self._devices: dict[str, DeviceRecord] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.heartbeat_seconds = Histogram(
            "edgefleet_controller_telemetry_handling_seconds",
            "Time to handle one telemetry heartbeat from an agent",
            buckets=(2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 3e-2, 0.1),
            registry=registry,
        )
        registry.register(FleetCollector(self))

    @property
    def ca_certificate_pem(self) -> bytes:
        return self._ca.certificate_pem

    @property
    def telemetry_rows_pending(self) -> int:
        return len(self._pending_rows)

    def device_records(self) -> list[DeviceRecord]:
        return list(self._devices.values())

    async def start(self) -> None:
        self._bundle_dir.mkdir(parents=True, exist_ok=True)
        if self.announcer is not None:
            self.announcer.start()
        for device in await self._store.call(self._store.store.list_devices):
            self._devices[device.device_id] = device
        await self.rollouts.start()
        self._tasks.append(asyncio.create_task(self._flush_telemetry(), name="telemetry-flush"))

    # replicas
    async def _publish(self, note: str) -> None:
        await self._store.call(self._store.store.publish, note)

    def _announce(self, kind: str, ids: Sequence[str], revision: int = 0) -> None:
        if self.announcer is not None:
            self.announcer.post(kind, ids, revision)

    def wake_devices(self, device_ids: Iterable[str]) -> None:
        """Their desired state changed: their streams resend it, here and on every replica."""
        ids = list(device_ids)
        self.live.notify(ids)
        self._announce("desired", ids)

    def _presence(self, device_id: str, online: bool) -> None:
        self._announce("online" if online else "offline", [device_id])

    def online(self, device_id: str) -> bool:
        """Connected here or to another replica."""
        return self.live.online(device_id) or device_id in self._elsewhere

    async def on_change(self, change: Change) -> None:
        """A note from another replica (fleet/controller/changefeed.py)."""
        if change.kind == "desired":
            self.live.notify(change.ids)
        elif change.kind == "online":
            for device_id in change.ids:
                self._elsewhere[device_id] = change.origin
        elif change.kind == "offline":
            for device_id in change.ids:
                if self._elsewhere.get(device_id) == change.origin:
                    del self._elsewhere[device_id]
        elif change.kind == "device":
            for device_id in change.ids:
                await self._reload_device(device_id)
        elif change.kind == "rollout":
            for rollout_id in change.ids:
                await self.rollouts.refresh(rollout_id, change.revision)

    async def _refresh_devices(self) -> None:
        """Replicas: take the store's copy of every device not connected here (another replica
        wrote its hello and install results); ours is fresher for the ones connected here."""
        if self.announcer is None:
            return
        for device in await self._store.call(self._store.store.list_devices):
            if not self.live.online(device.device_id):
                self._devices[device.device_id] = device

    async def lookup_device(self, device_id: str) -> bool:
        """Known here, or enrolled in the store by another replica (then known here too)."""
        if device_id not in self._devices:
            await self._reload_device(device_id)
        return device_id in self._devices

    async def _reload_device(self, device_id: str) -> None:
        device = await self._store.call(self._store.store.get_device, device_id)
        if device is None:
            if self._devices.pop(device_id, None) is not None:
                self.live.disconnect(device_id)
        else:
            self._devices[device_id] = device

    async def resync(self) -> None:
        """After missing notes (the feed reconnected): re-read devices and rollouts, resend every
        connected device its desired state, and tell the others who is connected here."""
        stored = {d.device_id: d for d in await self._store.call(self._store.store.list_devices)}
        for device_id in list(self._devices):
            if device_id not in stored:
                del self._devices[device_id]
                self.live.disconnect(device_id)
        for device_id, device in stored.items():
            if device_id not in self._devices:
                self._devices[device_id] = device
        for rollout in self.rollouts.list_rollouts():
            await self.rollouts.refresh(rollout.rollout_id)
        here = self.live.sessions()
        self.live.notify(here)
        self._announce("online", here)

    async def stop(self) -> None:
        await self.rollouts.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self._write_pending_telemetry()
        if self.announcer is not None:
            await self.announcer.stop()
        self._store.close()

    async def audit(self, actor: str, action: str, **detail: object) -> None:
        record = AuditRecord(at=time.time(), actor=actor, action=action, detail=detail)
        await self._store.call(self._store.store.add_audit, record)
        logger.info("audit: %s %s %s", actor, action, detail)

    # enrollment
    async def create_token(
        self, actor: str, labels: dict[str, str], ttl_s: float
    ) -> tuple[str, float]:
        token = secrets.token_urlsafe(24)
        expires_at = time.time() + (ttl_s or self.settings.token_ttl_s)
        await self._store.call(self._store.store.add_token, _token_hash(token), labels, expires_at)
        await self.audit(actor, "enrollment-token.create", labels=labels, expires_at=expires_at)
        return token, expires_at

    async def enroll(
        self, token: str, requested_id: str, csr_pem: bytes
    ) -> tuple[str, bytes, dict[str, str]]:
        device_id = requested_id or f"dev-{secrets.token_hex(4)}"
        if not _DEVICE_ID.match(device_id):
            raise InvalidRequest(f"device id {device_id!r} must match {_DEVICE_ID.pattern}")
        if device_id in self._devices:
            raise Conflict(f"device {device_id} is already enrolled")
        # The request is checked (and signed) before the one-time token is spent: a bad CSR
        # must not burn it. The certificate is only handed out once the token is consumed.
        try:
            certificate = self._ca.sign_request(csr_pem, DEVICE_PREFIX + device_id)
        except ValueError as exc:
            raise InvalidRequest(f"bad certificate request: {exc}") from None
        labels = await self._store.call(
            self._store.store.consume_token, _token_hash(token), device_id, time.time()
        )
        device = DeviceRecord(device_id=device_id, labels=labels, enrolled_at=time.time())
        await self._store.call(self._store.store.upsert_device, device)
        self._devices[device_id] = device
        self._announce("device", [device_id])
        await self.audit(f"device:{device_id}", "device.enroll", labels=labels)
        return device_id, certificate, labels

    # agents
    def known(self, device_id: str) -> bool:
        return device_id in self._devices

    async def hello(
        self,
        device_id: str,
        labels: dict[str, str],
        hardware_json: str,
        active: dict[str, str],
        agent_version: str = "",
    ) -> None:
        device = self._devices[device_id]
        # Enrollment labels are the controller's; the device may add labels, never override.
        merged = {**labels, **device.labels}
        updated = device.model_copy(
            update={
                "labels": merged,
                "hardware_json": hardware_json,
                "agent_version": agent_version,
                "active_versions": active,
                "last_seen": time.time(),
            }
        )
        self._devices[device_id] = updated
        self.live.touch(device_id, updated.last_seen)
        await self._store.call(self._store.store.upsert_device, updated)

    async def desired_state(self, device_id: str) -> list[DesiredEntry]:
        return await self._store.call(self._store.store.desired_for, device_id)

    def telemetry(self, device_id: str, sample: TelemetrySample, document: str) -> None:
        """Record one sample; cheap and synchronous, it runs for every heartbeat of the fleet."""
        self.live.record(device_id, sample)
        if len(self._pending_rows) == self._pending_rows.maxlen:
            self.telemetry_rows_dropped += 1
        self._row_sequence += 1
        self._pending_rows.append((self._row_sequence, device_id, sample.received_wall, document))
        device = self._devices.get(device_id)
        for model in sample.models:
            if device is not None and device.active_versions.get(model.name) != model.version:
                device.active_versions[model.name] = model.version
            self.rollouts.active_version_seen(device_id, model.name, model.version)

    async def install_result(
        self,
        device_id: str,
        model: str,
        version: str,
        error: str,
        active_version: str,
        bundle_sha256: str = "",
    ) -> None:
        device = self._devices.get(device_id)
        if device is None:  # removed while its stream was still open
            return
        if active_version:
            device.active_versions[model] = active_version
        await self._store.call(self._store.store.upsert_device, device.model_copy(deep=True))
        entries = await self.desired_state(device_id)
        for entry in entries:
            if entry.model == model and entry.version == version and entry.last_error != error:
                await self._store.call(
                    self._store.store.set_desired, [entry.model_copy(update={"last_error": error})]
                )
        await self.rollouts.install_reported(device_id, model, version, error, bundle_sha256)
        if error:
            logger.warning(
                "device %s failed to install %s/%s: %s", device_id, model, version, error
            )

    async def _flush_telemetry(self) -> None:
        last_prune = 0.0
        while True:
            await asyncio.sleep(self.settings.telemetry_flush_s)
            try:
                await self._write_pending_telemetry()
                now = time.time()
                if now - last_prune > 60:
                    last_prune = now
                    before = now - self.settings.telemetry_retention_s
                    await self._store.call(self._store.store.prune_telemetry, before)
            except Exception:
                logger.exception("writing telemetry to the store failed; will retry")

    async def _write_pending_telemetry(self) -> None:
        if not self._pending_rows:
            return
        async with self._flush_lock:
            batch = list(self._pending_rows)
            if not batch:
                return
            rows = [(device_id, at, document) for _, device_id, at, document in batch]
            # A failed write raises here and leaves every row in the buffer for the next flush.
            await self._store.call(self._store.store.add_telemetry, rows)
            written = batch[-1][0]
            while self._pending_rows and self._pending_rows[0][0] <= written:
                self._pending_rows.popleft()

    # bundles
    async def bundle_file(self, sha256: str) -> tuple[Path, int]:
        bundle = await self._store.call(self._store.store.get_bundle, sha256)
        if bundle is None:
            raise NotFound(f"no bundle {sha256}")
        # Uploaded to another replica: its path is on that machine. A shared bundle directory
        # or the HTTP origin (--publish-dir) hold it under its digest.
        candidates = [Path(bundle.path), self._bundle_dir / f"{sha256}.efb"]
        if self.settings.publish_dir is not None:
            candidates.append(self.settings.publish_dir / f"{sha256}.efb")
        for path in candidates:
            if await asyncio.to_thread(path.is_file):
                return path, bundle.size
        raise NotFound(
            f"bundle {sha256} was uploaded to another replica and is not on this one: give the"
            " replicas a shared bundle directory or agents an HTTP bundle source"
        )

    async def add_bundle(self, actor: str, upload: Path) -> BundleRecord:
        """Verify an uploaded bundle against the controller's trusted keys, then keep it under its
        sha256. The upload file is consumed."""
        try:
            info, digest, size = await asyncio.to_thread(_verify_upload, upload, self._trusted_keys)
            existing = await self._store.call(
                self._store.store.find_bundle, info.name, info.version
            )
            if existing is not None and existing.sha256 != digest:
                raise Conflict(
                    f"{info.name} version {info.version} already exists as bundle "
                    f"{existing.sha256[:12]}; versions are immutable: package a new version"
                )
            target = self._bundle_dir / f"{digest}.efb"
            await asyncio.to_thread(shutil.move, upload, target)
        finally:
            await asyncio.to_thread(upload.unlink, True)
        record = BundleRecord(
            sha256=digest,
            name=info.name,
            version=info.version,
            size=size,
            key_id=info.key_id,
            path=str(target),
            uploaded_at=time.time(),
        )
        await self._store.call(self._store.store.add_bundle, record)
        if self.settings.publish_dir is not None:
            await asyncio.to_thread(publish_bundle, target, self.settings.publish_dir, digest)
        await self.audit(
            actor, "bundle.upload", sha256=digest, model=info.name, version=info.version
        )
        return record

    # operator views
    async def devices(self, selector: dict[str, str]) -> list[DeviceView]:
        await self._refresh_devices()
        desired = await self._store.call(self._store.store.all_desired)
        by_device: dict[str, list[DesiredEntry]] = {}
        for entry in desired:
            by_device.setdefault(entry.device_id, []).append(entry)
        return [
            DeviceView(
                record=device,
                online=self.online(device_id),
                last_seen=self.live.last_seen(device_id) or device.last_seen,
                desired=by_device.get(device_id, []),
                latest=self.live.latest(device_id),
            )
            for device_id, device in sorted(self._devices.items())
            if matches(device.labels, selector)
        ]

    async def device(self, device_id: str) -> DeviceView:
        views = [view for view in await self.devices({}) if view.record.device_id == device_id]
        if not views:
            raise NotFound(f"no device {device_id!r}")
        return views[0]

    async def remove_device(self, actor: str, device_id: str) -> None:
        if device_id not in self._devices:
            raise NotFound(f"no device {device_id!r}")
        await self._store.call(self._store.store.delete_device, device_id)
        del self._devices[device_id]
        self.live.disconnect(device_id)
        self._announce("device", [device_id])
        await self.audit(actor, "device.remove", device=device_id)

    async def telemetry_history(
        self, device_id: str, since_s: float, limit: int
    ) -> list[tuple[float, str]]:
        if device_id not in self._devices:
            raise NotFound(f"no device {device_id!r}")
        await self._write_pending_telemetry()
        since = time.time() - since_s if since_s > 0 else 0.0
        return await self._store.call(self._store.store.telemetry, device_id, since, limit or 1000)

    async def audit_entries(self, limit: int) -> list[AuditRecord]:
        return await self._store.call(self._store.store.audit_entries, limit or 100)

    async def pin(self, actor: str, device_id: str, model: str, version: str) -> DeviceView:
        if device_id not in self._devices:
            raise NotFound(f"no device {device_id!r}")
        if not model:
            raise InvalidRequest("pin needs a model name")
        await self._refresh_devices()
        if not version:
            await self._store.call(self._store.store.delete_desired, device_id, model)
        else:
            bundle = await self._store.call(self._store.store.find_bundle, model, version)
            # A pin must name something the device can run: a version the controller holds a
            # bundle for, or the one the device serves right now.
            running = self._devices[device_id].active_versions.get(model)
            if bundle is None and running != version:
                known = running is not None or any(
                    model in device.active_versions for device in self._devices.values()
                )
                if not known and not await self._store.call(
                    self._store.store.find_bundle_named, model
                ):
                    raise NotFound(f"no model {model!r}: no bundle and no device runs it")
                raise NotFound(
                    f"no bundle for {model} version {version} and {device_id} does not run it:"
                    " upload the bundle first"
                )
            entry = DesiredEntry(
                device_id=device_id,
                model=model,
                version=version,
                bundle_sha256=bundle.sha256 if bundle else "",
                bundle_size=bundle.size if bundle else 0,
                source=PIN_SOURCE,
            )
            await self._store.call(self._store.store.set_desired, [entry])
            await self.rollouts.pinned(device_id, model)
        await self.audit(actor, "device.pin", device=device_id, model=model, version=version)
        self.wake_devices([device_id])
        return await self.device(device_id)

    # rollouts
    async def create_rollout(self, actor: str, spec: RolloutSpec) -> RolloutRecord:
        bundle = await self._store.call(self._store.store.get_bundle, spec.bundle_sha256)
        if bundle is None:
            raise NotFound(f"no bundle {spec.bundle_sha256}: upload it first")
        await self._refresh_devices()
        desired = await self._store.call(self._store.store.all_desired)
        rollout = await self.rollouts.create(spec, bundle, list(self._devices.values()), desired)
        await self.audit(
            actor,
            "rollout.create",
            rollout=rollout.rollout_id,
            model=rollout.model_name,
            version=rollout.version,
            spec=spec.model_dump(mode="json"),
        )
        return rollout

    async def promote(self, actor: str, rollout_id: str) -> RolloutRecord:
        rollout = await self.rollouts.promote(rollout_id)
        await self.audit(actor, "rollout.promote", rollout=rollout.rollout_id)
        return rollout

    async def abort(self, actor: str, rollout_id: str, reason: str) -> RolloutRecord:
        rollout = await self.rollouts.abort(rollout_id, reason)
        await self.audit(actor, "rollout.abort", rollout=rollout.rollout_id, reason=reason)
        return rollout

    async def rollback(self, actor: str, rollout_id: str) -> RolloutRecord:
        rollout = await self.rollouts.rollback(rollout_id)
        await self.audit(actor, "rollout.rollback", rollout=rollout.rollout_id)
        return rollout

    async def explain(self, rollout_id: str) -> tuple[RolloutRecord, list[Measurement]]:
        rollout = self.rollouts.get(rollout_id)
        return rollout, await self.rollouts.measurements(rollout.rollout_id)


def _verify_upload(upload: Path, trusted_keys: TrustedKeys) -> tuple[BundleInfo, str, int]:
    info = verify_bundle(upload, trusted_keys)
    return info, sha256_path(upload), upload.stat().st_size


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
