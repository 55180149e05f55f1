"""The one interface every runtime implements. It knows none of them: the factory that picks
one is server/models/backends/factory.py."""

from __future__ import annotations

from typing import Protocol

from server.models.types import Arrays


class Backend(Protocol):
    """A loaded model. `run` blocks and is called from one executor thread at a time."""

    @property
    def description(self) -> str:
        """Runtime, version and providers actually in use, for logs and metadata."""
        ...

    @property
    def provider(self) -> str:
        """The execution provider running the model, e.g. CPUExecutionProvider."""
        ...

    @property
    def process_bytes(self) -> int:
        """Memory of a separate process the runtime runs the model in, beyond the model's own
        weights and activations (a confined worker's interpreter and libraries); 0 in-process."""
        ...

    def run(self, inputs: Arrays, output_names: list[str]) -> Arrays: ...

    def interrupt(self) -> None:
        """End a run in progress at once, from any thread (the server stops past its grace).
        In-process runtimes cannot be stopped and return at once; a worker process is killed."""
        ...

    def close(self) -> None: ...
