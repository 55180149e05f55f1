"""ServerInfo conversion: a model's manifest and runtime plan as the JSON the service returns."""

from __future__ import annotations

import json

from server.core import ModelInfo


def model_info_to_json(info: ModelInfo) -> tuple[str, str]:
    manifest_json = info.manifest.model_dump_json()
    plan = {**info.plan.to_dict(), "runtime": info.backend}
    return manifest_json, json.dumps(plan, sort_keys=True)
