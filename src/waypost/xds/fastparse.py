"""A fast path for `json_format.ParseDict` on the Envoy resources waypost generates.

`ParseDict` walks the dict in pure Python and rebuilds a name → field table for every message it meets,
which made encoding most of a push: ~0.9 ms per resource, 0.35 s for the 1000 route configs of one bulk
change and 3 s to serve a 1000-Service waypoint the first time. This module does the same conversion
with the field tables cached per message type.

It covers what generated configs contain (messages, repeated and map fields with string keys, scalars,
enums by name, `Any` with `@type`, the wrapper types, Duration/Timestamp/FieldMask strings, Struct and
Value). Anything else, and anything `ParseDict` would reject, raises `Unsupported`; the caller then runs
`ParseDict` itself, so every error message, and every corner of the proto3 JSON mapping, is still
`ParseDict`'s own. For what it accepts the result is the message `ParseDict` builds (the same fields set,
including empty messages that are present; `tests/unit/test_fastparse.py` compares the bytes).
"""

from __future__ import annotations

import base64
import math
from typing import Any

from google.protobuf import descriptor, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

_FD = descriptor.FieldDescriptor
_WRAPPERS = frozenset(
    f"google.protobuf.{n}Value" for n in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
_STRING_FORMS = frozenset(("google.protobuf.Duration", "google.protobuf.Timestamp", "google.protobuf.FieldMask"))
_DICT_FORMS = frozenset(("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"))
_INTS = frozenset((_FD.CPPTYPE_INT32, _FD.CPPTYPE_INT64, _FD.CPPTYPE_UINT32, _FD.CPPTYPE_UINT64))
_FLOATS = frozenset((_FD.CPPTYPE_FLOAT, _FD.CPPTYPE_DOUBLE))
_FLOAT_MAX = 3.4028234663852886e38
_MAX_DEPTH = 90  # ParseDict refuses nesting past 100; stay clear of it and let ParseDict decide


class Unsupported(Exception):
    """Not for the fast path: run `json_format.ParseDict` instead."""


_MAP, _REPEATED_MESSAGE, _REPEATED_SCALAR, _MESSAGE, _SCALAR = range(5)

# message full name -> {JSON key: (field, how it is set)}; keys are the JSON (camelCase) and proto names.
_tables: dict[str, dict[str, tuple[Any, int]]] = {}


def _mode(f: Any) -> int:
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        return _MAP
    if f.is_repeated:
        return _REPEATED_MESSAGE if f.cpp_type == _FD.CPPTYPE_MESSAGE else _REPEATED_SCALAR
    return _MESSAGE if f.cpp_type == _FD.CPPTYPE_MESSAGE else _SCALAR


def _table(desc: descriptor.Descriptor) -> dict[str, tuple[Any, int]]:
    table = _tables.get(desc.full_name)
    if table is None:
        table = {}
        for f in desc.fields:
            entry = (f, _mode(f))
            table[f.name] = entry
            table.setdefault(f.json_name, entry)
        _tables[desc.full_name] = table
    return table


def parse(value: Any, message: Message) -> Message:
    """Fills `message` (fresh) from `value` as `ParseDict(value, message)` would; raises Unsupported."""
    _message(value, message, 0)
    return message


def _message(value: Any, message: Message, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise Unsupported("deep")
    desc = message.DESCRIPTOR
    name = desc.full_name
    if name in _WRAPPERS:
        message.value = _scalar(value, desc.fields_by_name["value"])
        return
    if name in _STRING_FORMS:
        if not isinstance(value, str):
            raise Unsupported(name)
        try:
            message.FromJsonString(value)
        except (ValueError, TypeError) as exc:
            raise Unsupported(name) from exc
        return
    if name in _DICT_FORMS:
        try:
            json_format.ParseDict(value, message)
        except json_format.Error as exc:
            raise Unsupported(name) from exc
        return
    if name == "google.protobuf.Any":
        _any(value, message, depth)
        return
    if type(value) is not dict:
        raise Unsupported("not an object")
    table = _table(desc)
    seen: set[int] = set()
    oneofs: set[str] = set()
    for key, item in value.items():
        entry = table.get(key)
        if entry is None or item is None:
            raise Unsupported(key)  # unknown (or an extension), or null
        field, mode = entry
        if field.number in seen:
            raise Unsupported(key)  # named twice (camelCase and snake_case)
        seen.add(field.number)
        oneof = field.containing_oneof
        if oneof is not None:
            if oneof.name in oneofs:
                raise Unsupported(key)
            oneofs.add(oneof.name)
        try:
            if mode == _MESSAGE:
                sub = getattr(message, field.name)
                sub.SetInParent()  # present even when empty, as ParseDict makes it
                _message(item, sub, depth + 1)
            elif mode == _SCALAR:
                setattr(message, field.name, _scalar(item, field))
            elif mode == _REPEATED_MESSAGE:
                if type(item) is not list:
                    raise Unsupported(key)
                target = getattr(message, field.name)
                for element in item:
                    if element is None:
                        raise Unsupported(key)
                    _message(element, target.add(), depth + 1)
            elif mode == _REPEATED_SCALAR:
                if type(item) is not list:
                    raise Unsupported(key)
                target = getattr(message, field.name)
                for element in item:
                    target.append(_scalar(element, field))
            else:
                _map(item, getattr(message, field.name), field, depth)
        except (ValueError, TypeError) as exc:  # e.g. a number out of range for the field
            raise Unsupported(key) from exc


def _map(value: Any, target: Any, field: Any, depth: int) -> None:
    if type(value) is not dict:
        raise Unsupported(field.name)
    entry = field.message_type
    if entry.fields_by_name["key"].cpp_type != _FD.CPPTYPE_STRING:
        raise Unsupported(field.name)
    value_field = entry.fields_by_name["value"]
    for key, item in value.items():
        if type(key) is not str or item is None:
            raise Unsupported(field.name)
        if value_field.cpp_type == _FD.CPPTYPE_MESSAGE:
            _message(item, target[key], depth + 1)
        else:
            try:
                target[key] = _scalar(item, value_field)
            except (ValueError, TypeError) as exc:
                raise Unsupported(field.name) from exc


def _any(value: Any, message: Message, depth: int) -> None:
    if type(value) is not dict:
        raise Unsupported("Any")
    if not value:
        return  # ParseDict leaves an empty Any empty
    type_url = value.get("@type")
    if type(type_url) is not str:
        raise Unsupported("Any")
    try:
        desc = descriptor_pool.Default().FindMessageTypeByName(type_url.split("/")[-1])
    except KeyError as exc:
        raise Unsupported(type_url) from exc
    if desc.full_name.startswith("google.protobuf."):
        raise Unsupported(type_url)  # well-known types inside Any take the {"@type", "value"} form
    sub = message_factory.GetMessageClass(desc)()
    _message({k: v for k, v in value.items() if k != "@type"}, sub, depth + 1)
    message.value = sub.SerializeToString()
    message.type_url = type_url


def _scalar(value: Any, field: Any) -> Any:
    kind = field.cpp_type
    t = type(value)
    if kind == _FD.CPPTYPE_STRING:
        if t is not str:
            raise Unsupported(field.name)
        if field.type == _FD.TYPE_BYTES:
            # As ParseDict decodes bytes: URL-safe base64, padded.
            encoded = value.encode("utf-8")
            try:
                return base64.urlsafe_b64decode(encoded + b"=" * (4 - len(encoded) % 4))
            except ValueError as exc:
                raise Unsupported(field.name) from exc
        return value
    if kind == _FD.CPPTYPE_BOOL:
        if t is not bool:
            raise Unsupported(field.name)
        return value
    if kind in _INTS:
        if t is int:
            return value
        if t is str and " " not in value:  # the JSON form of 64-bit integers; ParseDict takes int(value)
            try:
                return int(value)
            except ValueError as exc:
                raise Unsupported(field.name) from exc
        raise Unsupported(field.name)
    if kind == _FD.CPPTYPE_ENUM:
        if t is not str:
            raise Unsupported(field.name)
        found = field.enum_type.values_by_name.get(value)
        if found is None:
            raise Unsupported(field.name)
        return found.number
    if kind in _FLOATS:
        if t is not float and t is not int:
            raise Unsupported(field.name)
        number = float(value)
        if math.isnan(number) or math.isinf(number) or (kind == _FD.CPPTYPE_FLOAT and abs(number) > _FLOAT_MAX):
            raise Unsupported(field.name)
        return number
    raise Unsupported(field.name)
