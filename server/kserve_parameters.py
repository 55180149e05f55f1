"""KServe v2 parameters both transports accept, and what each means here: one rule, called by
the gRPC converter and the HTTP transport with values already unwrapped (protobuf oneof or
JSON). Unknown load parameters are refused on both; see docs/http.md for the request ones."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.errors import InvalidInput

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
