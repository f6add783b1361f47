"""Envoy resources from JSON-form dicts to packed protobuf `Any`s.

`json_format.ParseDict` resolves a nested `typed_config`'s `"@type"` through the default descriptor pool,
which only knows the messages of `_pb2` modules that were imported. Which extension a dict names is data, so
the first encode imports every generated module of the Envoy API (from `xds-protos`) once. On the project's
standard machine that is ~535 modules in ~0.2-0.3 s; it happens on first use, not on `import waypost.xds`.

Limit: `xds-protos` 1.85 lags Envoy 1.40, so a field added in 1.40 fails here with "has no field named ..."
(spec/envoy-dataplane.md §0 describes reading the exact schema out of the Envoy binary instead).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping

from google.protobuf import any_pb2, descriptor_pool, json_format, message, message_factory

from waypost.xds import fastparse
from waypost.xds.types import NAME_FIELD, TYPE_LISTENER, short_name

_log = logging.getLogger("waypost.xds")

# Packages whose messages can appear in an Envoy resource, directly or behind an `Any`. Not
# `envoy.service`/`envoy.admin`: those hold gRPC services and admin output, never config.
_API_PACKAGES = ("envoy.config", "envoy.extensions", "envoy.type", "envoy.data", "udpa", "xds")
_TYPE_URL_PREFIX = "type.googleapis.com/"

_load_lock = threading.Lock()
_load_seconds: float | None = None


class EncodeError(ValueError):
    """A resource dict that is not a valid Envoy message of its type."""

    def __init__(self, type_url: str, name: str, message: str) -> None:
        self.type_url = type_url
        self.name = name
        self.message = message
        super().__init__(f"{short_name(type_url)} {name!r} ({type_url}): {message}")


def load_api_modules() -> float:
    """Import every Envoy API `_pb2` module once; returns the seconds the first call spent (cached after)."""
    global _load_seconds
    with _load_lock:
        if _load_seconds is not None:
            return _load_seconds
        start = time.perf_counter()
        count = 0
        for package in _API_PACKAGES:
            count += _import_pb2_modules(package)
        _load_seconds = time.perf_counter() - start
        _log.debug("imported %d Envoy API modules in %.0f ms", count, _load_seconds * 1000)
        return _load_seconds


def _import_pb2_modules(package: str) -> int:
    # A file walk rather than pkgutil.walk_packages: the walk is deterministic and skips importing
    # the many `__init__` packages that hold no messages (they are imported as parents anyway).
    try:
        root = importlib.import_module(package)
    except ImportError:
        return 0
    count = 0
    for base in root.__path__:
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            relative = os.path.relpath(dirpath, base)
            prefix = package if relative == "." else f"{package}.{relative.replace(os.sep, '.')}"
            for filename in sorted(filenames):
                if not filename.endswith("_pb2.py"):
                    continue
                module = f"{prefix}.{filename[:-3]}"
                try:
                    importlib.import_module(module)
                    count += 1
                except Exception as exc:  # one broken generated module must not take down every encode
                    _log.warning("cannot import %s: %s", module, exc)
    return count


def message_class(type_url: str) -> type[message.Message]:
    """The generated class for a type URL; KeyError when no imported module defines it."""
    load_api_modules()
    full_name = type_url.removeprefix(_TYPE_URL_PREFIX)
    descriptor = descriptor_pool.Default().FindMessageTypeByName(full_name)
    return message_factory.GetMessageClass(descriptor)


def _guess_name(type_url: str, resource: object) -> str:
    if not isinstance(resource, Mapping):
        return ""
    field = NAME_FIELD.get(type_url, "name")
    camel = "".join(part if i == 0 else part.title() for i, part in enumerate(field.split("_")))
    value = resource.get(field, resource.get(camel, ""))
    return value if isinstance(value, str) else ""


def encode_named(type_url: str, name: str, resource: Mapping[str, object]) -> any_pb2.Any:
    """Encode a resource stored under `name`; fills in its name field when the dict leaves it out.

    A dict whose own name disagrees with its key is an error: Envoy keys resources by the name inside the
    message, so the snapshot would subscribe and serve under different names.
    """
    msg = _parse(type_url, name, resource)
    field = NAME_FIELD.get(type_url)
    if field is not None:
        inner = getattr(msg, field)
        if not inner:
            setattr(msg, field, name)
        elif inner != name:
            raise EncodeError(type_url, name, f"stored under name {name!r} but its {field} is {inner!r}")
    return _pack(msg)


TYPE_FILTER_CHAIN = "type.googleapis.com/envoy.config.listener.v3.FilterChain"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def encode_chain(listener: str, chain: Mapping[str, object]) -> bytes:
    """One filter chain as it appears inside an encoded Listener: the field's tag and length, then the
    FilterChain message (protobuf's wire format lets a repeated message field's items be written one by one,
    anywhere in the message)."""
    try:
        body = _parse(TYPE_FILTER_CHAIN, str(chain.get("name", "")), chain).SerializeToString(deterministic=True)
    except EncodeError as exc:
        raise EncodeError(TYPE_LISTENER, listener, f"filter chain {exc.name!r}: {exc.message}") from None
    return _chains_tag() + _varint(len(body)) + body


@functools.cache
def _chains_tag() -> bytes:
    """The tag of Listener.filter_chains (field number from the schema, wire type 2: length-delimited)."""
    return _varint(message_class(TYPE_LISTENER).DESCRIPTOR.fields_by_name["filter_chains"].number << 3 | 2)


def encode_listener(name: str, rest: Mapping[str, object], chains: Iterable[bytes]) -> any_pb2.Any:
    """A Listener from its fields other than `filter_chains` (a dict) and its chains already encoded
    (`encode_chain`, or the same bytes cut from an earlier encoding). Parses back to the message that
    `encode_named` makes of the whole dict."""
    head = encode_named(TYPE_LISTENER, name, rest)
    return any_pb2.Any(type_url=head.type_url, value=head.value + b"".join(chains))


def encode_resource(type_url: str, resource: dict) -> any_pb2.Any:
    """`resource` (Envoy v3 JSON form, snake_case or camelCase) as a packed `Any` of `type_url`.

    Raises EncodeError naming the type, the resource's name and ParseDict's message.
    """
    return _pack(_parse(type_url, _guess_name(type_url, resource), resource))


def _parse(type_url: str, name: str, resource: object) -> message.Message:
    try:
        cls = message_class(type_url)
    except KeyError:
        raise EncodeError(type_url, name, "unknown message type (no Envoy API module defines it)") from None
    try:
        return fastparse.parse(resource, cls())
    except fastparse.Unsupported:
        pass  # ParseDict decides, with its own error messages
    msg = cls()
    try:
        json_format.ParseDict(resource, msg)
    except (json_format.Error, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise EncodeError(type_url, name, str(exc)) from exc
    return msg


def _pack(msg: message.Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    # Deterministic map ordering: the same dict gives the same bytes, so responses are reproducible.
    packed.Pack(msg, deterministic=True)
    return packed
