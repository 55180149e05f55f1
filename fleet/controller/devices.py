"""The device registry: enrollment (one-time tokens, CSR signing), the devices the controller
knows, what they last said about themselves, the operator's view of them, and revocation.

Removing a device revokes its key: the revocation list (in the store, loaded at start) is
checked on every call to the controller's mutual-TLS port and at enrollment, so a removed
device can neither reconnect with its certificate nor enroll again with its old key, even
under the same device id."""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

from fleet.controller.audit import AuditLog
from fleet.controller.live import LiveFleet, TelemetrySample
from fleet.controller.replication.replica import Replica
from fleet.controller.store.protocol import Store
from fleet.controller.store.records import DesiredEntry, DeviceRecord, Revocation
from fleet.controller.store.runner import StoreRunner
from fleet.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from fleet.grpc_status import Peer
from fleet.pki import DEVICE_PREFIX, CertificateAuthority, request_key_sha256

logger = logging.getLogger(__name__)
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def matches(labels: dict[str, str], selector: dict[str, str]) -> bool:
    """Whether a device's labels satisfy a selector (every key, the same value)."""
    return all(labels.get(key) == value for key, value in selector.items())


@dataclass(frozen=True)
class DeviceView:
    record: DeviceRecord
    online: bool
    last_seen: float
    desired: list[DesiredEntry]
    latest: TelemetrySample | None


class DeviceRegistry:
    def __init__(
        self,
        store: StoreRunner,
        ca: CertificateAuthority,
        live: LiveFleet,
        audit: AuditLog,
        token_ttl_s: float,
        replica: Replica,
    ) -> None:
        self._store = store
        self._ca = ca
        self._live = live
        self._audit = audit
        self._token_ttl_s = token_ttl_s
        self._replica = replica
        self._devices: dict[str, DeviceRecord] = {}
        # public key SHA-256 -> revocation
        self._revoked: dict[str, Revocation] = {}

    async def start(self) -> None:
        heard = await self._store.run(Store.last_telemetry)
        for device in await self._store.run(Store.list_devices):
            # "Last seen" survives a restart: the newest stored telemetry, if later than hello.
            last = max(device.last_seen, heard.get(device.device_id, 0.0))
            self._devices[device.device_id] = device.model_copy(update={"last_seen": last})
        for revocation in await self._store.run(Store.revocations):
            self._revoked[revocation.public_key_sha256] = revocation

    @property
    def revoked_keys(self) -> int:
        return len(self._revoked)

    @property
    def ca_certificate_pem(self) -> bytes:
        return self._ca.certificate_pem

    def records(self) -> list[DeviceRecord]:
        return list(self._devices.values())

    def records_by_id(self) -> dict[str, DeviceRecord]:
        """Every device by id (read only: the registry's own mapping)."""
        return self._devices

    def get(self, device_id: str) -> DeviceRecord:
        device = self._devices.get(device_id)
        if device is None:
            raise NotFound(f"no device {device_id!r}")
        return device

    def known(self, device_id: str) -> bool:
        return device_id in self._devices

    def admission(self, peer: Peer) -> str | None | Awaitable[str | None]:
        """The agent API's rule: `refusal`, after looking the device up in the store when this
        replica does not know it (enrolled through another replica a moment ago)."""
        device_id = peer.common_name.removeprefix(DEVICE_PREFIX)
        if (
            not self._replica.enabled
            or not peer.common_name.startswith(DEVICE_PREFIX)
            or device_id in self._devices
        ):
            return self.refusal(peer)
        return self._admit_after_lookup(peer, device_id)

    async def _admit_after_lookup(self, peer: Peer, device_id: str) -> str | None:
        await self.reload(device_id)
        if peer.public_key_sha256 not in self._revoked:
            # Revoked through another replica since this one started?
            self._revoked.update(
                (revocation.public_key_sha256, revocation)
                for revocation in await self._store.run(Store.revocations)
            )
        return self.refusal(peer)

    # replicas
    async def reload(self, device_id: str) -> None:
        """Take the store's copy of one device (enrolled or removed by another replica)."""
        device = await self._store.run(Store.get_device, device_id)
        if device is None:
            if self._devices.pop(device_id, None) is not None:
                self._live.disconnect(device_id)
        else:
            self._devices[device_id] = device

    async def reload_all(self) -> None:
        stored = {device.device_id: device for device in await self._store.run(Store.list_devices)}
        for device_id in list(self._devices):
            if device_id not in stored:
                del self._devices[device_id]
                self._live.disconnect(device_id)
        for device_id, device in stored.items():
            if device_id not in self._devices or not self._live.online(device_id):
                self._devices[device_id] = device
        for revocation in await self._store.run(Store.revocations):
            self._revoked[revocation.public_key_sha256] = revocation

    async def refresh(self) -> None:
        """Replicas: the store's copy of every device not connected here (another replica wrote
        its hello and install results); ours is fresher for those connected here."""
        if not self._replica.enabled:
            return
        for device in await self._store.run(Store.list_devices):
            if not self._live.online(device.device_id):
                self._devices[device.device_id] = device

    def online(self, device_id: str) -> bool:
        """Connected here, or to another replica and heard lately (its telemetry in the
        store): the rule of `LiveFleet.online` on every replica. Connected elsewhere: as that
        replica announced, or (a lost note) as the store shows, telemetry received from the
        device since it last left a replica."""
        live = self._live
        if live.online(device_id):
            return True
        if self._replica.online_elsewhere(device_id):
            device = self._devices.get(device_id)
            return live.heard_lately(device_id, device.last_seen if device else 0.0)
        heard = live.remote_heard(device_id)
        return heard > self._replica.left_at(device_id) and live.fresh(heard)

    def _announce(self, device_id: str) -> None:
        self._replica.announce("device", [device_id])

    def refusal(self, peer: Peer) -> str | None:
        """Why a client certificate may not use the agent API, or None if it may."""
        if peer.public_key_sha256 in self._revoked:
            return "this device's key was revoked: the device was removed"
        device_id = peer.common_name.removeprefix(DEVICE_PREFIX)
        if not peer.common_name.startswith(DEVICE_PREFIX) or device_id not in self._devices:
            return "not an enrolled device certificate"
        known = self._devices[device_id].public_key_sha256
        if known and peer.public_key_sha256 != known:
            return "not the key this device enrolled with"
        return None

    def device_for(self, peer: Peer) -> str:
        """The enrolled device a verified client certificate belongs to."""
        refusal = self.refusal(peer)
        if refusal is not None:
            raise PermissionDenied(refusal)
        return peer.common_name.removeprefix(DEVICE_PREFIX)

    # enrollment
    async def create_token(
        self, actor: str, labels: dict[str, str], ttl_s: float
    ) -> tuple[str, float]:
        token = secrets.token_urlsafe(24)
        expires_at = time.time() + (ttl_s or self._token_ttl_s)
        await self._store.run(Store.add_token, _token_hash(token), labels, expires_at)
        await self._audit.record(
            actor, "enrollment-token.create", labels=labels, expires_at=expires_at
        )
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
            key_sha256 = request_key_sha256(csr_pem)
            certificate = self._ca.sign_request(csr_pem, DEVICE_PREFIX + device_id)
        except ValueError as exc:
            raise InvalidRequest(f"bad certificate request: {exc}") from None
        if key_sha256 in self._revoked:
            raise PermissionDenied("this key was revoked: enroll with a new key")
        token_hash, now = _token_hash(token), time.time()
        labels = await self._store.run(Store.consume_token, token_hash, device_id, now)
        device = DeviceRecord(
            device_id=device_id,
            labels=labels,
            enrolled_at=time.time(),
            public_key_sha256=key_sha256,
        )
        await self._store.run(Store.upsert_device, device)
        self._devices[device_id] = device
        self._announce(device_id)
        await self._audit.record(f"device:{device_id}", "device.enroll", labels=labels)
        return device_id, certificate, labels

    # what agents say
    async def hello(
        self,
        peer: Peer,
        labels: dict[str, str],
        hardware_json: str,
        active: dict[str, str],
        agent_version: str = "",
    ) -> str:
        """A device connected: record what it says; return its id."""
        device_id = self.device_for(peer)
        device = self.get(device_id)
        # Enrollment labels are the controller's; the device may add labels, never override.
        merged = {**labels, **device.labels}
        updated = device.model_copy(
            update={
                "labels": merged,
                "hardware_json": hardware_json,
                "agent_version": agent_version,
                "active_versions": active,
                "last_seen": time.time(),
                # Devices enrolled before keys were recorded: learn the key on connection.
                "public_key_sha256": device.public_key_sha256 or peer.public_key_sha256,
            }
        )
        await self._store.run(Store.upsert_device, updated)
        # Only after the store has it: until the caller attaches the device's stream (right
        # after this returns, with no await between), `refresh` takes the store's copy of a
        # device not connected here, and one taken while this upsert was under way (the
        # enrollment's copy) had overwritten what the hello said, for good: its labels and
        # versions were lost until the next hello (a PostgreSQL test under load, 60 s).
        self._devices[device_id] = updated
        self._live.touch(device_id, updated.last_seen)
        return device_id

    def active_seen(self, device_id: str, model: str, version: str) -> None:
        """Telemetry showed `version` of `model` serving on the device."""
        device = self._devices.get(device_id)
        if device is not None and device.active_versions.get(model) != version:
            device.active_versions[model] = version

    async def active_reported(self, device_id: str, model: str, active_version: str) -> bool:
        """An install result named the version now serving; False if the device is gone."""
        device = self._devices.get(device_id)
        if device is None:  # removed while its stream was still open
            return False
        if active_version:
            device.active_versions[model] = active_version
        await self._store.run(Store.upsert_device, device.model_copy(deep=True))
        return True

    # the operator's view
    async def views(self, selector: dict[str, str]) -> list[DeviceView]:
        await self.refresh()
        by_device: dict[str, list[DesiredEntry]] = {}
        for entry in await self._store.run(Store.all_desired):
            by_device.setdefault(entry.device_id, []).append(entry)
        return [
            self._view(device, by_device.get(device_id, []))
            for device_id, device in sorted(self._devices.items())
            if matches(device.labels, selector)
        ]

    async def views_of(self, device_ids: Sequence[str]) -> list[DeviceView]:
        """The views of these devices (a page of the dashboard's list): their rows only."""
        views = []
        for device_id in device_ids:
            device = self._devices.get(device_id)
            if device is not None:
                desired = await self._store.run(Store.desired_for, device_id)
                views.append(self._view(device, desired))
        return views

    async def view(self, device_id: str) -> DeviceView:
        """One device's view: reads that device's rows only, not the whole fleet's."""
        if self._replica.enabled and not self._live.online(device_id):
            # As `refresh` does, for one device.
            stored = await self._store.run(Store.get_device, device_id)
            if stored is not None:
                self._devices[device_id] = stored
        device = self.get(device_id)
        return self._view(device, await self._store.run(Store.desired_for, device_id))

    def _view(self, device: DeviceRecord, desired: list[DesiredEntry]) -> DeviceView:
        device_id = device.device_id
        return DeviceView(
            record=device,
            online=self.online(device_id),
            last_seen=self._live.last_seen(device_id) or device.last_seen,
            desired=desired,
            latest=self._live.latest(device_id),
        )

    async def remove(self, actor: str, device_id: str) -> Revocation | None:
        """Forget the device and revoke its key; None when its key was never seen."""
        device = self.get(device_id)
        revocation = None
        if device.public_key_sha256:
            revocation = Revocation(
                public_key_sha256=device.public_key_sha256,
                device_id=device_id,
                revoked_at=time.time(),
                actor=actor,
            )
            await self._store.run(Store.revoke_device, revocation)
            self._revoked[revocation.public_key_sha256] = revocation
        else:
            logger.warning(
                "device %s never presented its certificate to this controller: removed, but "
                "its key is unknown and cannot be revoked",
                device_id,
            )
            await self._store.run(Store.delete_device, device_id)
        del self._devices[device_id]
        self._live.disconnect(device_id)
        self._announce(device_id)
        await self._audit.record(
            actor,
            "device.remove",
            device=device_id,
            revoked_key=revocation.public_key_sha256 if revocation else "",
        )
        return revocation


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
