"""The serving protocol: what the agent needs from the edge server it drives.

`server.core.InferenceCore` implements it, in the same process and event loop. The agent knows
nothing else of the server: `load_model` raises the core's declared `load_error` when a version
cannot serve (bad files, a runtime that refuses the graph, a failed warm-up), and the agent
treats exactly that as a failed install; anything else is a bug and is logged as one.

Per-model figures come as the fleet's own `common.telemetry.ModelTelemetry`, which the server
builds, so the agent sends them on unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from common.telemetry import ModelTelemetry

__all__ = ["IndexEntryView", "ModelTelemetry", "ServingCore"]


class IndexEntryView(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def reason(self) -> str: ...


class ServingCore(Protocol):
    @property
    def load_error(self) -> type[Exception]:
        """The error `load_model` raises when a version cannot serve."""
        ...

    async def load_model(self, name: str, version: str | None = None) -> str: ...
    def active_version(self, name: str) -> str | None: ...
    def model_telemetry(self) -> Sequence[ModelTelemetry]: ...
    def repository_index(self) -> Sequence[IndexEntryView]: ...
