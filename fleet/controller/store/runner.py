"""The store as the controller's services use it: every call runs on one dedicated thread, in
order, off the event loop, over any `Store` (SQLite, PostgreSQL).

One typed entry point instead of an async copy of every store method: name the method on the
protocol and pass its arguments, checked against the protocol's signature,

    device = await store.run(Store.get_device, device_id)

and the runner calls the open store's own method of that name on its thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Concatenate, ParamSpec, TypeVar

from fleet.controller.store.protocol import Store

P = ParamSpec("P")
T = TypeVar("T")


class StoreRunner:
    def __init__(self, store: Store, owns_store: bool = True) -> None:
        self._store = store
        # A second runner over the same store (leases, change notes) does not close it.
        self._owns_store = owns_store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-store")

    async def run(
        self, method: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`method` (a `Store` method, e.g. `Store.get_device`) of the open store, called with
        `args` on the store thread."""
        if getattr(Store, method.__name__, None) is not method:
            raise TypeError(f"{method.__qualname__} is not a method of the Store protocol")
        bound = getattr(self._store, method.__name__)
        loop = asyncio.get_running_loop()
        result: T = await loop.run_in_executor(self._executor, partial(bound, *args, **kwargs))
        return result

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._owns_store:
            self._store.close()
