"""tritonclient[grpc] against a drop-in model (only model.onnx on disk); prints one JSON line.

A subprocess for the same reason as triton_grpc.py: tritonclient's protobuf package cannot
share a descriptor pool with edgefleet's.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from skimage import data

from server.manifest import Preprocess
from server.vision.preprocess import to_model_input

# EfficientNet-Lite0's preprocess, known to the caller, not to the server.
SPEC = Preprocess(input="input", height=224, width=224, mean=(127.0,) * 3, std=(128.0,) * 3)


def main(url: str, model: str) -> None:
    client = triton.InferenceServerClient(url)
    metadata = client.get_model_metadata(model, as_json=True)
    config = client.get_model_config(model, as_json=True)["config"]
    tensor = to_model_input(data.chelsea(), "rgb", SPEC)
    infer_input = triton.InferInput("input", list(tensor.shape), "FP32")
    infer_input.set_data_from_numpy(tensor)
    logits = client.infer(model, [infer_input]).as_numpy("logits")
    report = {
        "ready": client.is_model_ready(model),
        "inputs": [
            [t["name"], t["datatype"], [int(d) for d in t["shape"]]] for t in metadata["inputs"]
        ],
        "outputs": [
            [t["name"], t["datatype"], [int(d) for d in t["shape"]]] for t in metadata["outputs"]
        ],
        "max_batch_size": config.get("max_batch_size", 0),
        "argmax": int(np.argmax(logits)),
        "shape": list(logits.shape),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
