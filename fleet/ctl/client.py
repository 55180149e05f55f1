"""An async client for the controller's admin API, authenticated by an admin certificate."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from protos.edgefleet.fleet.v1 import admin_pb2, admin_pb2_grpc

UPLOAD_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class AdminCredential:
    # One replica, or several separated by commas ("a:7443,b:7443"): fleetctl fails over.
    address: str
    ca_pem: bytes
    certificate_pem: bytes
    key_pem: bytes

    @classmethod
    def load(cls, path: Path) -> AdminCredential:
        data = json.loads(path.read_text(encoding="utf-8"))
        address = data["address"]
        if isinstance(data.get("addresses"), list) and data["addresses"]:
            address = ",".join(str(item) for item in data["addresses"])
        return cls(
            address=address,
            ca_pem=data["ca_pem"].encode(),
            certificate_pem=data.get("certificate_pem", "").encode(),
            key_pem=data.get("key_pem", "").encode(),
        )

    @property
    def addresses(self) -> list[str]:
        return [part.strip() for part in self.address.split(",") if part.strip()]

    def channel(self, address: str | None = None) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.key_pem or None,
            certificate_chain=self.certificate_pem or None,
        )
        return grpc.aio.secure_channel(address or self.addresses[0], credentials)


def _reads(method: str) -> bool:
    """Calls that change nothing: safe to send again to another replica."""
    return method.startswith(("Get", "List", "Explain"))


class _FailoverStub:
    """The admin stub over several replicas: a call that finds its replica UNAVAILABLE (killed,
    restarting, unreachable) goes to the next one. Reads are sent again there; a write is not
    (the dead replica may have committed it): it fails, and the next call goes elsewhere.
    Streamed requests (bundle uploads) are not replayed either."""

    def __init__(self, stubs: list[_Deadlines]) -> None:
        self._stubs = stubs
        self._current = 0

    def __getattr__(self, method: str) -> Any:
        async def call(request: Any, **kwargs: Any) -> Any:
            replayable = _reads(method) and not hasattr(request, "__aiter__")
            tries = 2 * len(self._stubs) if replayable else 1
            for attempt in range(tries):
                stub = self._stubs[self._current]
                try:
                    return await getattr(stub, method)(request, **kwargs)
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    self._current = (self._current + 1) % len(self._stubs)
                    if attempt == tries - 1:
                        raise
                    if self._current == 0:  # every replica tried once: give them a moment
                        await asyncio.sleep(FAILOVER_PAUSE_S)
            raise AssertionError("unreachable")

        return call


# After every replica refused a read once, wait this long before the next round.
FAILOVER_PAUSE_S = 1.0
# A call's deadline unless the caller names one: a replica that accepted the connection and
# never answers (stalled, overloaded, half-open) must fail the call, not hang fleetctl.
CALL_TIMEOUT_S = 30.0
UPLOAD_TIMEOUT_S = 600.0


class _Deadlines:
    """The admin stub with a default deadline on every call."""

    def __init__(self, stub: admin_pb2_grpc.AdminServiceStub, timeout_s: float) -> None:
        self._stub = stub
        self._timeout_s = timeout_s

    def __getattr__(self, method: str) -> Any:
        bound = getattr(self._stub, method)
        streamed = method == "UploadBundle"  # a bundle may take minutes on a slow link
        default = max(UPLOAD_TIMEOUT_S, self._timeout_s) if streamed else self._timeout_s

        def call(request: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", default)
            return bound(request, **kwargs)

        return call


class AdminClient:
    def __init__(self, *channels: grpc.aio.Channel, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self._channels = channels
        stubs = [
            _Deadlines(admin_pb2_grpc.AdminServiceStub(channel), timeout_s) for channel in channels
        ]
        self.stub: Any = stubs[0] if len(stubs) == 1 else _FailoverStub(stubs)

    @classmethod
    def connect(
        cls,
        credential: AdminCredential,
        address: str | None = None,
        timeout_s: float = CALL_TIMEOUT_S,
    ) -> AdminClient:
        addresses = [address] if address else credential.addresses
        return cls(*(credential.channel(item) for item in addresses), timeout_s=timeout_s)

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for channel in self._channels:
            await channel.close()

    async def upload_bundle(self, path: Path) -> admin_pb2.UploadBundleResponse:
        async def chunks() -> AsyncIterator[admin_pb2.UploadBundleRequest]:
            with path.open("rb") as handle:  # noqa: ASYNC230 - small reads between sends
                while block := handle.read(UPLOAD_CHUNK_BYTES):
                    yield admin_pb2.UploadBundleRequest(data=block)

        response: admin_pb2.UploadBundleResponse = await self.stub.UploadBundle(chunks())
        return response
