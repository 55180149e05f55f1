"""Small builders and callers for the KServe v2 HTTP port, shared by the HTTP tests."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np

from server.models.tensors import kserve_datatype


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        """The JSON error message; fails the test unless the body is exactly `{"error": str}`."""
        assert self.content_type == "application/json", (self.content_type, self.body[:200])
        value = self.json()
        assert isinstance(value, dict) and isinstance(value.get("error"), str), value
        return str(value["error"])


def binary_infer(
    array: np.ndarray, *, input_name: str = "input", classification: int = 0
) -> tuple[bytes, dict[str, str]]:
    """An infer body using the binary tensor data extension, and its headers."""
    outputs: list[dict[str, Any]] = []
    if classification:
        outputs.append({"name": "logits", "parameters": {"classification": classification}})
    header = json.dumps({
        "inputs": [{
            "name": input_name, "datatype": kserve_datatype(str(array.dtype)),
            "shape": list(array.shape),
            "parameters": {"binary_data_size": array.nbytes},
        }],
        "outputs": outputs,
    }).encode()  # fmt: skip
    return header + np.ascontiguousarray(array).tobytes(), {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    # aiohttp warns that large raw bytes may block its loop; a stream it sends in chunks.
    data = io.BytesIO(body) if body is not None and len(body) > 2**20 else body
    async with session.request(method, url, data=data, headers=headers) as response:
        return Reply(
            response.status, response.headers.get("Content-Type", ""), await response.read()
        )
