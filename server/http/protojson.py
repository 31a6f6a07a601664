"""Protobuf answers as the JSON the KServe v2 HTTP API uses: field names as in the .proto, every scalar
field present (zeros included, as Triton's HTTP answers have them) and 64-bit integers as JSON numbers
(protobuf's JSON mapping writes them as strings; Triton's HTTP API and tritonclient.http use numbers)."""

from __future__ import annotations

from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict

_INT64: Final = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def to_json(message: Any) -> dict[str, Any]:
    out: dict[str, Any] = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _numbers(message.DESCRIPTOR, out)
    return out


def _numbers(descriptor: Descriptor, value: dict[str, Any]) -> None:
    for field in descriptor.fields:
        if field.name in value:
            value[field.name] = _convert(field, value[field.name], field.is_repeated)


def _convert(field: FieldDescriptor, value: Any, repeated: bool) -> Any:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        entry = message.fields_by_name["value"]
        return {key: _convert(entry, item, False) for key, item in value.items()}
    if repeated:
        return [_convert(field, item, False) for item in value]
    if message is not None:
        _numbers(message, value)
        return value
    if field.type in _INT64:
        return int(value)
    return value
