"""Metadata, config, statistics and the repository index as Triton's HTTP server writes them.

They reuse the gRPC converters and print the same messages, so both transports describe a model
identically, but in Triton's JSON rather than protobuf's: 64-bit integers are JSON numbers (not
strings, which perf_analyzer misreads), fields at their zero value are present, and a
non-finite float is written as the protobuf JSON mapping's "NaN"/"Infinity" string, never as a
bare token. Statistics print every message field, set or not, as Triton does; the config prints
unset sub-messages as absent, as Triton's protobuf-based config writer does.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable
from typing import Any, cast

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from server.core import ModelInfo
from server.grpc_api import convert_kserve as convert
from server.models.registry import ModelIndexEntry
from server.models.stats import ModelStats

_FLOATS = frozenset({FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE})


def message_json(message: Message, *, expand: bool) -> dict[str, Any]:
    """Every field of `message` by its proto name; `expand` prints unset sub-messages too."""
    result: dict[str, Any] = {}
    for descriptor in message.DESCRIPTOR.fields:
        field = cast(FieldDescriptor, descriptor)
        oneof = field.containing_oneof
        if oneof is not None and message.WhichOneof(oneof.name) != field.name:
            continue
        value = getattr(message, field.name)
        if _is_map(field):
            entry = cast(Any, field.message_type)  # a map entry: fields "key" and "value"
            value_field = cast(FieldDescriptor, entry.fields_by_name["value"])
            result[field.name] = {
                str(key): _value(value_field, item, expand) for key, item in value.items()
            }
        elif field.is_repeated:
            result[field.name] = [_value(field, item, expand) for item in value]
        elif (
            field.type == FieldDescriptor.TYPE_MESSAGE
            and not expand
            and not message.HasField(field.name)
        ):
            continue
        else:
            result[field.name] = _value(field, value, expand)
    return result


def _is_map(field: FieldDescriptor) -> bool:
    message_type = field.message_type
    return field.is_repeated and message_type is not None and message_type.GetOptions().map_entry


def _value(field: FieldDescriptor, value: Any, expand: bool) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_json(value, expand=expand)
    if field.type == FieldDescriptor.TYPE_ENUM:
        enum_type = field.enum_type
        known = enum_type.values_by_number.get(value) if enum_type is not None else None
        return known.name if known is not None else value
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    if field.type in _FLOATS and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def model_metadata(info: ModelInfo) -> dict[str, Any]:
    metadata = convert.model_metadata_to_pb(info)
    return {
        "name": metadata.name,
        "versions": list(metadata.versions),
        "platform": metadata.platform,
        "inputs": [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
            for t in metadata.inputs
        ],
        "outputs": [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
            for t in metadata.outputs
        ],
    }


def model_config(info: ModelInfo) -> dict[str, Any]:
    return message_json(convert.model_config_to_pb(info), expand=False)


def statistics(stats: Iterable[ModelStats]) -> dict[str, Any]:
    return message_json(convert.statistics_to_pb(stats), expand=True)


def repository_index(entries: Iterable[ModelIndexEntry]) -> list[dict[str, str]]:
    return [
        {"name": entry.name, "version": entry.version, "state": entry.state, "reason": entry.reason}
        for entry in entries
    ]
