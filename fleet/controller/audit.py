"""The audit log: who did what, in the store and in the controller's log."""

from __future__ import annotations

import logging
import time

from fleet.controller.store.protocol import Store
from fleet.controller.store.records import AuditRecord
from fleet.controller.store.runner import StoreRunner

logger = logging.getLogger(__name__)


class AuditLog:
    def __init__(self, store: StoreRunner) -> None:
        self._store = store

    async def record(self, actor: str, action: str, **detail: object) -> None:
        await self._store.run(
            Store.add_audit, AuditRecord(at=time.time(), actor=actor, action=action, detail=detail)
        )
        logger.info("audit: %s %s %s", actor, action, detail)

    async def entries(self, limit: int) -> list[AuditRecord]:
        return await self._store.run(Store.audit_entries, limit or 100)
