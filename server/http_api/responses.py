"""JSON bodies as Triton writes them: `Content-Type: application/json` with no charset (the
KServe SDK reads error bodies only under exactly that type) and never a bare NaN or Infinity."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

JSON_TYPE = "application/json"


def json_bytes(value: Any) -> bytes:
    """Strict JSON (RFC 8259): a NaN or Infinity raises ValueError instead of being written."""
    return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()


def json_response(
    value: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json_bytes(value),
        status=status,
        headers={"Content-Type": JSON_TYPE, **(headers or {})},
    )


def error_response(
    message: str, status: int, headers: Mapping[str, str] | None = None
) -> web.Response:
    return json_response({"error": message}, status, headers)
