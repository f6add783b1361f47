"""The gRPC side of the echo workloads: Istio's `proto.EchoTestService/Echo` (no I/O).

Istio's echo app (`pkg/test/echo/server/endpoint/grpc.go`) answers the unary `Echo` call with the same
``Key=Value`` text as its HTTP handler: the received metadata as ``RequestHeader`` lines, then its own
fields, ending with ``Hostname``. Both echo flavours serve it here, so GRPCRoute tests can find the pod.

The messages have one string field each (`pkg/test/echo/proto/echo.proto`)::

    message EchoRequest  { string message = 1; }
    message EchoResponse { string message = 1; }

so the protobuf wire format is written by hand. gRPC framing: each message is prefixed by a compressed
flag byte and a 4-byte big-endian length (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from waypost.local.echo_app import EchoApp

SERVICE = "proto.EchoTestService"
ECHO_PATH = f"/{SERVICE}/Echo"
# grpc-go's default limit for a received message (grpc.defaultServerMaxReceiveMessageSize).
MAX_MESSAGE = 4 * 1024 * 1024

OK = 0
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13

# grpc-go `isReservedHeader`: transport headers that never reach the handler's metadata, except the
# whitelisted `:authority` and `user-agent` (internal/transport/http_util.go).
_RESERVED = frozenset({
    "content-type", "grpc-message-type", "grpc-encoding", "grpc-message", "grpc-status", "grpc-timeout",
    "grpc-status-details-bin", "te", "connection", "host",
})


def is_grpc(content_type: str) -> bool:
    return content_type == "application/grpc" or content_type.startswith(("application/grpc+", "application/grpc;"))


@dataclass(frozen=True, slots=True)
class GrpcResult:
    """A unary answer: a response message (framed) or none, then `grpc-status` / `grpc-message` trailers."""

    status: int
    message: str = ""
    payload: bytes | None = None     # the framed response message; None → trailers-only response
    log: str | None = None


class ProtobufError(ValueError):
    pass


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise ProtobufError("varint too long")


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_string_field(data: bytes, field: int = 1) -> str:
    """The last value of string `field` in a message, skipping every other field (proto3 semantics)."""
    value = ""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ProtobufError("field number 0")
        if wire_type == 0:
            _, pos = _read_varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise ProtobufError("truncated length-delimited field")
            if number == field:
                try:
                    value = data[pos:pos + length].decode("utf-8")
                except UnicodeDecodeError as error:
                    raise ProtobufError("string field is not valid UTF-8") from error
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            raise ProtobufError(f"unsupported wire type {wire_type}")
        if pos > len(data):
            raise ProtobufError("truncated field")
    return value


def encode_string_field(value: str, field: int = 1) -> bytes:
    if not value:
        return b""  # proto3 omits default values
    raw = value.encode("utf-8")
    return _varint(field << 3 | 2) + _varint(len(raw)) + raw


def frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def unframe(body: bytes) -> list[tuple[bool, bytes]]:
    """Length-prefixed messages → [(compressed, message)]; ValueError when the body is cut short."""
    messages = []
    pos = 0
    while pos < len(body):
        if pos + 5 > len(body):
            raise ValueError("truncated gRPC message header")
        length = int.from_bytes(body[pos + 1:pos + 5], "big")
        if pos + 5 + length > len(body):
            raise ValueError("truncated gRPC message")
        messages.append((body[pos] != 0, body[pos + 5:pos + 5 + length]))
        pos += 5 + length
    return messages


def handle_grpc(
    app: EchoApp, *, path: str, metadata: Iterable[tuple[str, str]], body: bytes, body_overflow: bool,
    port: int, remote: str,
) -> GrpcResult:
    """One unary call. `metadata` is the HTTP/2 header list (lowercase names, pseudo-headers included)."""
    service, _, method = path.lstrip("/").rpartition("/")
    if app.flavor == "ext-authz":
        return _authz_check(service, method, body, body_overflow)
    if service != SERVICE:
        return GrpcResult(UNIMPLEMENTED, f"unknown service {service or path}")
    if method != "Echo":
        return GrpcResult(UNIMPLEMENTED, f"unknown method {method} for service {service}")
    raw = _unary_request(body, body_overflow)
    if isinstance(raw, GrpcResult):
        return raw
    try:
        text = decode_string_field(raw)
    except ProtobufError as error:
        return GrpcResult(INTERNAL, f"grpc: error unmarshalling request: {error}")
    answer = echo_text(app, metadata=metadata, message=text, port=port, remote=remote)
    log = f"Echoing back request made to {path} to client ({remote})"
    return GrpcResult(OK, payload=frame(encode_string_field(answer)), log=log)


def _unary_request(body: bytes, body_overflow: bool) -> bytes | GrpcResult:
    """The one uncompressed request message of a unary call, or the gRPC error answering a bad body."""
    if body_overflow:
        return GrpcResult(RESOURCE_EXHAUSTED, f"grpc: received message larger than max ({MAX_MESSAGE})")
    try:
        messages = unframe(body)
    except ValueError as error:
        return GrpcResult(INTERNAL, f"grpc: {error}")
    if len(messages) != 1:
        return GrpcResult(INTERNAL, f"grpc: expected one request message for a unary call, got {len(messages)}")
    compressed, raw = messages[0]
    if compressed:
        return GrpcResult(UNIMPLEMENTED, "grpc: compressed messages are not supported by this echo server")
    return raw


def echo_text(app: EchoApp, *, metadata: Iterable[tuple[str, str]], message: str, port: int, remote: str) -> str:
    """Istio's gRPC `Echo` body. Upstream walks a Go map (random order); sorted here, for stable output."""
    grouped: dict[str, list[str]] = {}
    authority: list[str] = []
    hosts: list[str] = []
    for name, value in metadata:
        if name == ":authority":
            authority.append(value)
        elif name == "host":
            hosts.append(value)
        elif name.startswith(":") or name in _RESERVED or name.endswith("-bin"):
            continue
        else:
            grouped.setdefault(name, []).append(value)
    # gRFC A41: without :authority, Host is renamed to :authority; with it, Host is discarded.
    grouped[":authority"] = authority or hosts
    lines: list[str] = []
    for value in grouped[":authority"]:
        lines.append(f"Host={value}")
    for name in sorted(grouped):
        lines.extend(f"RequestHeader={name}:{value}" for value in grouped[name])
    lines += ["StatusCode=200", f"ServiceVersion={app.service_version}", f"ServicePort={port}"]
    if app.namespace:
        lines.append(f"Namespace={app.namespace}")
    lines += [f"IP={remote.rpartition(':')[0].strip('[]')}", "Proto=GRPC", f"Echo={message}", f"Hostname={app.pod}"]
    return "".join(line + "\n" for line in lines)


def _authz_check(service: str, method: str, body: bytes, body_overflow: bool) -> GrpcResult:
    """Envoy's `envoy.service.auth.v3.Authorization/Check`, answered as Istio's sample authorizer does."""
    from waypost.local.extauthz import DEFAULT_ALLOWED_ACCOUNT, GRPC_SERVICE, grpc_check

    if service != GRPC_SERVICE or method != "Check":
        return GrpcResult(UNIMPLEMENTED, f"unknown service {service}" if service != GRPC_SERVICE else f"unknown method {method} for service {service}")
    raw = _unary_request(body, body_overflow)
    if isinstance(raw, GrpcResult):
        return raw
    from google.protobuf.message import DecodeError
    from envoy.service.auth.v3 import external_auth_pb2

    try:
        request = external_auth_pb2.CheckRequest.FromString(raw)
    except DecodeError as error:
        return GrpcResult(INTERNAL, f"grpc: error unmarshalling request: {error}")
    response, line = grpc_check(request, DEFAULT_ALLOWED_ACCOUNT)
    return GrpcResult(OK, payload=frame(response.SerializeToString()), log=line)
