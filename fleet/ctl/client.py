"""An async client for the controller's admin API, authenticated by an admin certificate."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc

from protos.edgefleet.fleet.v1 import admin_pb2, admin_pb2_grpc

UPLOAD_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class AdminCredential:
    address: str
    ca_pem: bytes
    certificate_pem: bytes
    key_pem: bytes

    @classmethod
    def load(cls, path: Path) -> AdminCredential:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            address=data["address"],
            ca_pem=data["ca_pem"].encode(),
            certificate_pem=data.get("certificate_pem", "").encode(),
            key_pem=data.get("key_pem", "").encode(),
        )

    def channel(self, address: str | None = None) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.key_pem or None,
            certificate_chain=self.certificate_pem or None,
        )
        return grpc.aio.secure_channel(address or self.address, credentials)


class AdminClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self.stub = admin_pb2_grpc.AdminServiceStub(channel)

    @classmethod
    def connect(cls, credential: AdminCredential, address: str | None = None) -> AdminClient:
        return cls(credential.channel(address))

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._channel.close()

    async def upload_bundle(self, path: Path) -> admin_pb2.UploadBundleResponse:
        async def chunks() -> AsyncIterator[admin_pb2.UploadBundleRequest]:
            with path.open("rb") as handle:  # noqa: ASYNC230 - small reads between sends
                while block := handle.read(UPLOAD_CHUNK_BYTES):
                    yield admin_pb2.UploadBundleRequest(data=block)

        response: admin_pb2.UploadBundleResponse = await self.stub.UploadBundle(chunks())
        return response
