"""The device's identity: a key that never leaves it and a certificate from the controller's CA,
obtained once by exchanging a one-time enrollment token."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from fleet.agent.settings import AgentSettings
from fleet.errors import InvalidRequest
from fleet.pki import make_csr, new_private_key, private_key_pem
from protos.edgefleet.fleet.v1 import agent_pb2, agent_pb2_grpc

IDENTITY_FILE = "identity.json"


@dataclass(frozen=True)
class DeviceIdentity:
    device_id: str
    key_pem: bytes
    certificate_pem: bytes
    ca_pem: bytes
    labels: dict[str, str]

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.key_pem,
            certificate_chain=self.certificate_pem,
        )


def load_identity(state_dir: Path) -> DeviceIdentity | None:
    path = state_dir / IDENTITY_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return DeviceIdentity(
        device_id=data["device_id"],
        key_pem=data["key_pem"].encode(),
        certificate_pem=data["certificate_pem"].encode(),
        ca_pem=data["ca_pem"].encode(),
        labels=data.get("labels", {}),
    )


def save_identity(state_dir: Path, identity: DeviceIdentity) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / IDENTITY_FILE
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(
            {
                "device_id": identity.device_id,
                "key_pem": identity.key_pem.decode(),
                "certificate_pem": identity.certificate_pem.decode(),
                "ca_pem": identity.ca_pem.decode(),
                "labels": identity.labels,
            },
            handle,
        )
    temporary.replace(path)


async def enroll(settings: AgentSettings, attempt: int = 0) -> DeviceIdentity:
    if not settings.enroll_token or settings.controller_ca is None:
        raise InvalidRequest(
            "this device is not enrolled: give it an enrollment token and the controller CA"
        )
    ca_pem = settings.controller_ca.read_bytes()
    key = new_private_key()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    address = settings.resolved_enroll_address(attempt)
    async with grpc.aio.secure_channel(address, credentials) as channel:
        stub = agent_pb2_grpc.EnrollmentServiceStub(channel)
        response = await stub.Enroll(
            agent_pb2.EnrollRequest(
                token=settings.enroll_token,
                device_id=settings.device_id,
                csr_pem=make_csr(key, settings.device_id or "device"),
            ),
            timeout=30,
        )
    return DeviceIdentity(
        device_id=response.device_id,
        key_pem=private_key_pem(key),
        certificate_pem=response.certificate_pem,
        ca_pem=response.ca_certificate_pem or ca_pem,
        labels=dict(response.labels),
    )
