"""Serve an ONNX-only repository, answer one real request, report whether torch was imported.

Run as its own process by test_edge_sized.py: pytest itself has torch loaded.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import grpc
import numpy as np

from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from server.app import EdgeServer
from server.settings import ServerSettings
from testkit.kserve import infer_request


async def main(repository: Path) -> None:
    server = EdgeServer(ServerSettings(repository=repository, port=0, metrics_port=0, http_port=-1))
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        response = await stub.ModelInfer(
            infer_request("efficientnet_lite0", np.zeros((1, 3, 224, 224), np.float32))
        )
    await server.stop(grace_s=1.0)
    print(json.dumps({
        "answered": len(response.raw_output_contents[0]),
        "torch_imported": any(name == "torch" or name.startswith("torch.") for name in sys.modules),
    }))  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
