"""Runs Triton's own Python client (tritonclient[grpc]) against an edgefleet server.

It runs as a subprocess of the tests because tritonclient registers its own copy of the
`inference` protobuf package, which cannot share one descriptor pool with edgefleet's.
Prints one JSON object with what it observed; the test asserts on it.
"""

from __future__ import annotations

import json
import queue
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from skimage import data

from server.manifest import read_manifest
from server.vision.preprocess import to_model_input


def classify(client: triton.InferenceServerClient, model: str, image: np.ndarray, spec) -> str:
    tensor = to_model_input(image, "rgb", spec)
    infer_input = triton.InferInput("input", list(tensor.shape), "FP32")
    infer_input.set_data_from_numpy(tensor)
    output = triton.InferRequestedOutput("logits", class_count=1)
    result = client.infer(model, [infer_input], outputs=[output], request_id="req-1")
    raw = result.as_numpy("logits")
    logits_result = client.infer(model, [infer_input])
    logits = logits_result.as_numpy("logits")
    top = str(raw.reshape(-1)[0].decode())
    assert int(top.split(":")[1]) == int(np.argmax(logits)), (top, int(np.argmax(logits)))
    return top.split(":", 2)[2]


def main(url: str, model: str, repository: str, stream_count: int) -> None:
    spec = read_manifest(Path(repository) / model / "1").preprocess
    assert spec is not None
    client = triton.InferenceServerClient(url)
    report: dict[str, object] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "labels": {
            name: classify(client, model, getattr(data, name)(), spec)
            for name in ("chelsea", "coffee")
        },
    }
    metadata = client.get_model_metadata(model, as_json=True)
    report["metadata"] = {
        "platform": metadata["platform"],
        "inputs": [
            [t["name"], t["datatype"], [int(d) for d in t["shape"]]] for t in metadata["inputs"]
        ],
    }
    config = client.get_model_config(model, as_json=True)["config"]
    report["config"] = {
        "max_batch_size": config.get("max_batch_size"),
        "platform": config.get("platform"),
    }
    report["index_before"] = [
        [m["name"], m.get("state", "")]
        for m in client.get_model_repository_index(as_json=True).get("models", [])
    ]

    # Streaming: every response comes back, ids echoed.
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    tensor = to_model_input(data.coffee(), "rgb", spec)
    for index in range(stream_count):
        infer_input = triton.InferInput("input", list(tensor.shape), "FP32")
        infer_input.set_data_from_numpy(tensor)
        client.async_stream_infer(model, [infer_input], request_id=f"s-{index}")
    seen, errors, argmaxes = set(), 0, set()
    for _ in range(stream_count):
        result, error = responses.get(timeout=60)
        if error is not None:
            errors += 1
            continue
        seen.add(result.get_response().id)
        argmaxes.add(int(np.argmax(result.as_numpy("logits"))))
    client.stop_stream()
    report["stream"] = {
        "ids": len(seen),
        "all_ids": seen == {f"s-{i}" for i in range(stream_count)},
        "errors": errors,
        "argmaxes": sorted(argmaxes),
    }

    # Triton's decoupled-final protocol: a client waiting for `triton_final_response` finishes.
    finals: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: finals.put((result, error)))
    infer_input = triton.InferInput("input", list(tensor.shape), "FP32")
    infer_input.set_data_from_numpy(tensor)
    client.async_stream_infer(
        model, [infer_input], request_id="final", enable_empty_final_response=True
    )
    result, error = finals.get(timeout=60)
    client.stop_stream()
    parameters = result.get_response().parameters if error is None else {}
    report["final_flag"] = {
        "error": None if error is None else str(error),
        "final": bool(parameters["triton_final_response"].bool_param)
        if "triton_final_response" in parameters
        else False,
        "argmax": int(np.argmax(result.as_numpy("logits"))) if error is None else -1,
    }

    client.unload_model(model)
    report["ready_after_unload"] = client.is_model_ready(model)
    client.load_model(model)
    report["ready_after_load"] = client.is_model_ready(model)
    stats = client.get_inference_statistics(model, as_json=True)
    report["stats_success"] = int(
        stats["model_stats"][0]["inference_stats"]["success"].get("count", 0)
    )
    try:
        client.get_system_shared_memory_status()
        report["shm"] = "answered"
    except triton.InferenceServerException as exc:
        report["shm"] = exc.status()
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
