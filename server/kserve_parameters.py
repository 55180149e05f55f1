"""KServe v2 parameters and what each means here: one rule per parameter, called by both
transports with values already unwrapped (protobuf oneof or JSON).

Request parameters (docs/http.md has the table): `timeout` (microseconds, Triton's) is honoured
as a deadline on queueing and computing; `priority` is accepted and ignored, as Triton ignores it
for a model without priority levels; `sequence_id`, `sequence_start` and `sequence_end` are
refused, since edgefleet has no sequence batcher and silently treating a stateful request as
stateless would answer it wrongly; other parameters are ignored, as Triton passes unknown ones to
a backend that may not read them. Shared-memory tensors are refused as not supported. Unknown
load parameters are refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from server.errors import InvalidInput, Unsupported

SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")


@dataclass(frozen=True)
class RequestOptions:
    # None: no deadline beyond the transport's own.
    timeout_s: float | None = None


def request_options(parameters: Mapping[str, Any]) -> RequestOptions:
    """The options an infer request's parameters ask for, or why they cannot be had."""
    if any(parameters.get(name) not in (None, 0, "", False) for name in SEQUENCE_PARAMETERS):
        raise Unsupported(
            "sequence batching (sequence_id, sequence_start, sequence_end) is not supported by "
            "edgefleet: every request is answered on its own"
        )
    priority = parameters.get("priority", 0)
    if type(priority) is not int or priority < 0:
        raise InvalidInput("request parameter 'priority' must be an integer >= 0")
    timeout = parameters.get("timeout", 0)
    if type(timeout) is not int or timeout < 0:
        raise InvalidInput("request parameter 'timeout' must be microseconds, an integer >= 0")
    return RequestOptions(timeout_s=timeout / 1e6 if timeout else None)


def refuse_shared_memory(tensor: str, parameter_names: Iterable[str]) -> None:
    """Tensors placed in shared memory name a region instead of carrying data."""
    if any(name.startswith("shared_memory_") for name in parameter_names):
        raise Unsupported(
            f"tensor {tensor!r}: shared memory is not supported by edgefleet; send the data in "
            "the request"
        )


LOAD_PARAMETERS = frozenset({"version"})


def load_version(parameters: Mapping[str, Any]) -> str | None:
    """RepositoryModelLoad's optional "version" (a string or an integer); nothing else."""
    unknown = sorted(key for key in parameters if key not in LOAD_PARAMETERS)
    if unknown:
        raise InvalidInput(f"load parameter {unknown[0][:80]!r} is not supported (only 'version')")
    if "version" not in parameters:
        return None
    value = parameters["version"]
    if isinstance(value, str):
        return value
    if type(value) is int:
        return str(value)
    raise InvalidInput("load parameter 'version' must be a string or an integer")
