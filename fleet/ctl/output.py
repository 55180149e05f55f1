"""`fleetctl --output json`: one style for every verb, for scripts and `jq`.

- Plain JSON (RFC 8259): an object, or a list of objects for listings; keys as in the protos
  (snake_case), sorted.
- Numbers are numbers, 64-bit counters included; a figure nobody measured (NaN) is `null`.
- Zero values are present: `0`, `""`, `false`, `[]`, `{}`; an absent message is `null`.
- Embedded JSON documents are objects: `hardware_json` becomes `hardware`, `detail_json`
  `detail`, `telemetry_json` `telemetry`.
- Enums are their names without the type prefix (`"BAKING"`, `"PASS"`; `""` when unset);
  timestamps are RFC 3339 UTC strings (`null` when unset).
- `--watch` with `--output json` prints JSON Lines: one object per line, each time the
  rollout changes; the last line is its final state.
"""

from __future__ import annotations

import json
import math
from typing import Any

from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

JSON_SUFFIX = "_json"


def plain(value: object) -> Any:
    """Messages (also inside lists and dicts) as plain JSON-ready data."""
    if isinstance(value, Message):
        return _message(value)
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: object, *, lines: bool = False) -> str:
    """The JSON text of `value`: indented, or one line (JSON Lines) when `lines`."""
    data = plain(value)
    if lines:
        return json.dumps(data, sort_keys=True, allow_nan=False, separators=(",", ":"))
    return json.dumps(data, sort_keys=True, allow_nan=False, indent=2)


def _message(message: Message) -> Any:
    if isinstance(message, Timestamp):
        return message.ToJsonString() if (message.seconds or message.nanos) else None
    result: dict[str, Any] = {}
    # Descriptors are typed loosely here: protobuf's stubs give two FieldDescriptor classes.
    fields: list[Any] = list(message.DESCRIPTOR.fields)
    for field in fields:
        value = getattr(message, field.name)
        name = field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            result[name] = {key: _value(value_field, item) for key, item in value.items()}
        elif field.is_repeated:
            result[name] = [_value(field, item) for item in value]
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            result[name] = _message(value) if message.HasField(name) else None
        elif field.type == FieldDescriptor.TYPE_STRING and name.endswith(JSON_SUFFIX):
            result[name.removesuffix(JSON_SUFFIX)] = json.loads(value) if value else None
        else:
            result[name] = _value(field, value)
    return result


def _value(field: Any, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _message(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _enum_name(field.enum_type, value)
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return float(value) if math.isfinite(value) else None
    if field.type == FieldDescriptor.TYPE_BYTES:
        return value.decode("utf-8", errors="replace")
    return value


def _enum_name(enum: EnumDescriptor, number: int) -> str:
    value = enum.values_by_number.get(number)
    if value is None:
        return str(number)
    # ROLLOUT_STATE_BAKING -> BAKING; the unspecified zero value -> "".
    prefix = (
        "".join(
            f"_{char}" if char.isupper() and index else char for index, char in enumerate(enum.name)
        ).upper()
        + "_"
    )
    name = value.name.removeprefix(prefix)
    return "" if name == "UNSPECIFIED" else name
