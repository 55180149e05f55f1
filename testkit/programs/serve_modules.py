"""Run `edgefleet serve ARGS...` in this process; once it serves, answer one KServe request,
then print which top-level modules and `server.*` modules the serving process has imported
(one JSON line) and stop it as SIGTERM would.

Run as its own process by test_edge_sized.py: pytest itself has torch, cv2 and onnx loaded.
The command line is the real one (the hardware planner, the HTTP and metrics listeners).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from protos.inference import grpc_service_pb2_grpc as kserve_grpc
from testkit.kserve import infer_request

READY_TIMEOUT_S = 120.0


def _report_when_serving(port_file: Path, model: str, report: dict[str, object]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not (port_file.exists() and port_file.read_text().strip()):
        if time.monotonic() > deadline:
            report["error"] = "not serving in time"
            os.kill(os.getpid(), signal.SIGTERM)
            return
        time.sleep(0.05)
    port = int(port_file.read_text())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(
            infer_request(model, np.zeros((1, 3, 224, 224), np.float32)), timeout=60
        )
    report["answered"] = len(response.raw_output_contents[0])
    report["modules"] = sorted(sys.modules)
    os.kill(os.getpid(), signal.SIGTERM)


def main(repository: Path, model: str, *arguments: str) -> None:
    from edgefleet.cli import main as cli_main

    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="edgefleet-modules-") as workdir:
        port_file = Path(workdir) / "port"
        sys.argv = [
            "edgefleet", "serve", "--repository", str(repository), "--model", model,
            "--port", "0", "--port-file", str(port_file), "--metrics-port", "0",
            "--http-port", "0", *arguments,
        ]  # fmt: skip
        watcher = threading.Thread(
            target=_report_when_serving, args=(port_file, model, report), daemon=True
        )
        watcher.start()
        try:
            cli_main()
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise
        watcher.join(timeout=5)
    print(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], *sys.argv[3:])
