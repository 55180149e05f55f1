"""tritonclient.http against edgefleet's KServe v2 HTTP endpoint; prints one JSON line.

A subprocess like triton_grpc.py: tritonclient.http brings gevent, which the test process
should not import.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.http as triton
from skimage import data

from server.manifest import Preprocess
from server.vision.preprocess import to_model_input

SPEC = Preprocess(input="input", height=224, width=224, mean=(127.0,) * 3, std=(128.0,) * 3)


def main(url: str, model: str) -> None:
    client = triton.InferenceServerClient(url)
    tensor = to_model_input(data.chelsea(), "rgb", SPEC)
    infer_input = triton.InferInput("input", list(tensor.shape), "FP32")
    infer_input.set_data_from_numpy(tensor, binary_data=True)
    top = client.infer(
        model, [infer_input], outputs=[triton.InferRequestedOutput("logits", class_count=3)]
    ).as_numpy("logits")
    json_input = triton.InferInput("input", list(tensor.shape), "FP32")
    json_input.set_data_from_numpy(tensor, binary_data=False)
    logits = client.infer(
        model, [json_input], outputs=[triton.InferRequestedOutput("logits", binary_data=False)]
    ).as_numpy("logits")
    metadata = client.get_model_metadata(model)
    config = client.get_model_config(model)
    stats = client.get_inference_statistics(model)
    report = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "missing_ready": client.is_model_ready("no_such_model"),
        "server": client.get_server_metadata()["name"],
        "inputs": metadata["inputs"],
        "platform": metadata["platform"],
        "max_batch_size": config.get("max_batch_size"),
        "top": [item.decode() for item in top.reshape(-1)],
        "argmax": int(np.argmax(logits)),
        "logits_shape": list(logits.shape),
        "success_count": int(stats["model_stats"][0]["inference_stats"]["success"]["count"]),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
