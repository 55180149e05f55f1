"""Reads statistics and config with Triton's own clients, over HTTP and gRPC, and compares them
field by field; prints one JSON report. A subprocess like triton_checks.py (tritonclient.http
brings gevent, tritonclient.grpc its own copy of the `inference` protobuf package).

The oracle is protobuf itself: the HTTP JSON must parse into the very message gRPC returned
(json_format rejects unknown fields and wrong types), and every 64-bit integer must be a JSON
number with every zero-valued field present, as Triton writes them.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2

# Integer fields of the statistics and config that protobuf's own JSON writes as strings.
INT64_KEYS = {"count", "ns", "last_inference", "inference_count", "execution_count", "batch_size"}
STAT_DURATIONS = {"success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
                  "cache_hit", "cache_miss"}  # fmt: skip


def strings_where_numbers_belong(value: Any, path: str = "") -> list[str]:
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in INT64_KEYS and not isinstance(item, int):
                found.append(f"{path}.{key}={item!r}")
            found += strings_where_numbers_belong(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += strings_where_numbers_belong(item, f"{path}[{index}]")
    return found


def without_empty(message: Any) -> Any:
    """A copy with set-but-empty sub-messages cleared: HTTP prints every statistic, zero ones
    included, as Triton does; gRPC leaves them unset. Both mean zero."""
    copy = type(message)()
    copy.CopyFrom(message)
    _clear_empty(copy)
    return copy


def _clear_empty(message: Any) -> None:
    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        if field.is_repeated:
            items = value.values() if hasattr(value, "values") else value
            for item in items:
                _clear_empty(item)
        else:
            _clear_empty(value)
            if value.ByteSize() == 0:
                message.ClearField(field.name)


def main(http_url: str, grpc_url: str, model: str) -> None:
    http = triton_http.InferenceServerClient(http_url)
    grpc = triton_grpc.InferenceServerClient(grpc_url)
    tensor = np.zeros((1, 3, 224, 224), np.float32)
    for client, module in ((http, triton_http), (grpc, triton_grpc)):
        infer_input = module.InferInput("input", [1, 3, 224, 224], "FP32")
        infer_input.set_data_from_numpy(tensor)
        client.infer(model, [infer_input])
    http_stats = http.get_inference_statistics(model)
    grpc_stats = grpc.get_inference_statistics(model)
    http_all = http.get_inference_statistics()
    http_config = http.get_model_config(model)
    grpc_config = grpc.get_model_config(model).config
    parsed_stats = json_format.ParseDict(http_stats, service_pb2.ModelStatisticsResponse())
    parsed_config = json_format.ParseDict(http_config, model_config_pb2.ModelConfig())
    model_stats = http_stats["model_stats"][0]
    report = {
        "stats_equal": without_empty(parsed_stats) == without_empty(grpc_stats),
        "config_equal": without_empty(parsed_config) == without_empty(grpc_config),
        "all_models_equal": without_empty(
            json_format.ParseDict(http_all, service_pb2.ModelStatisticsResponse())
        )
        == without_empty(grpc_stats),
        "strings_for_numbers": strings_where_numbers_belong(http_stats)
        + strings_where_numbers_belong(http_config),
        "durations_present": sorted(model_stats["inference_stats"]),
        "fail": model_stats["inference_stats"]["fail"],
        "success_count": model_stats["inference_stats"]["success"]["count"],
        "inference_count": model_stats["inference_count"],
        "version": model_stats["version"],
        "max_batch_size": http_config["max_batch_size"],
        "dims": http_config["input"][0]["dims"],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
