"""Signed bundles: receive an upload (bounded, never left behind), verify it against the
trusted keys, keep it under its digest, refuse a reused name+version, serve it to agents."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from fleet.bundle import BundleInfo, sha256_path, verify_bundle
from fleet.controller.audit import AuditLog
from fleet.controller.store.protocol import Store
from fleet.controller.store.records import BundleRecord
from fleet.controller.store.runner import StoreRunner
from fleet.errors import Conflict, InvalidRequest, NotFound
from fleet.keys import TrustedKeys
from fleet.publish import publish_bundle

# How much of an oversized upload is read (and dropped) so the client hears why it was refused.
DRAIN_BYTES = 256 * 1024 * 1024


class BundleService:
    def __init__(
        self,
        store: StoreRunner,
        trusted_keys: TrustedKeys,
        audit: AuditLog,
        data_dir: Path,
        max_bundle_bytes: int,
        publish_dir: Path | None,
    ) -> None:
        self._store = store
        self._trusted_keys = trusted_keys
        self._audit = audit
        self._bundle_dir = data_dir / "bundles"
        self._upload_dir = data_dir / "uploads"
        self.max_bundle_bytes = max_bundle_bytes
        self._publish_dir = publish_dir

    async def start(self) -> None:
        await asyncio.to_thread(self._bundle_dir.mkdir, parents=True, exist_ok=True)

    async def file(self, sha256: str) -> tuple[Path, int]:
        bundle = await self._store.run(Store.get_bundle, sha256)
        if bundle is None:
            raise NotFound(f"no bundle {sha256}")
        # Uploaded to another replica: its path is on that machine. A shared bundle directory
        # or the HTTP origin (--publish-dir) hold it under its digest.
        candidates = [Path(bundle.path), self._bundle_dir / f"{sha256}.efb"]
        if self._publish_dir is not None:
            candidates.append(self._publish_dir / f"{sha256}.efb")
        for path in candidates:
            if await asyncio.to_thread(path.is_file):
                return path, bundle.size
        raise NotFound(
            f"bundle {sha256} was uploaded to another replica and is not on this one: give the"
            " replicas a shared bundle directory or agents an HTTP bundle source"
        )

    async def receive(self, actor: str, chunks: AsyncIterator[bytes]) -> BundleRecord:
        """Write an upload to a temporary file (at most `max_bundle_bytes`), then add it. A
        refused, failed or cancelled upload leaves nothing behind."""
        limit = self.max_bundle_bytes
        path, handle = await asyncio.to_thread(_new_upload, self._upload_dir)
        oversized = False
        try:
            try:
                received = 0
                async for data in chunks:
                    received += len(data)
                    if received > limit:
                        oversized = True
                        break
                    await asyncio.to_thread(handle.write, data)
            finally:
                await asyncio.to_thread(handle.close)
            if not oversized:
                return await self.add(actor, path)
        finally:
            await asyncio.to_thread(path.unlink, True)
        # Nothing is kept. The rest of the stream is read and dropped before the answer: a
        # grpc.aio client still writing when its call ends reports INTERNAL instead of the
        # server's status (grpc/grpc#36066). Bounded: past DRAIN_BYTES the answer goes anyway.
        drained = 0
        async for data in chunks:
            drained += len(data)
            if drained > DRAIN_BYTES:
                break
        raise InvalidRequest(f"bundle is larger than the {limit}-byte limit")

    async def add(self, actor: str, upload: Path) -> BundleRecord:
        """Verify an uploaded bundle against the controller's trusted keys, then keep it under its
        sha256. The upload file is consumed."""
        try:
            info, digest, size = await asyncio.to_thread(_verify_upload, upload, self._trusted_keys)
            existing = await self._store.run(Store.find_bundle, info.name, info.version)
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
        await self._store.run(Store.add_bundle, record)
        if self._publish_dir is not None:
            await asyncio.to_thread(publish_bundle, target, self._publish_dir, digest)
        await self._audit.record(
            actor, "bundle.upload", sha256=digest, model=info.name, version=info.version
        )
        return record


def _new_upload(directory: Path) -> tuple[Path, BinaryIO]:
    directory.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=directory, suffix=".upload")
    return Path(name), os.fdopen(descriptor, "wb")


def _verify_upload(upload: Path, trusted_keys: TrustedKeys) -> tuple[BundleInfo, str, int]:
    info = verify_bundle(upload, trusted_keys)
    return info, sha256_path(upload), upload.stat().st_size
