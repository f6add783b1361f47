"""A minimal unary gRPC client over h2c, sent from inside a pod (the pod IP bound as source address).

grpcio cannot bind a source address, so this speaks HTTP/2 with the `h2` state machine over a plain
socket. It calls Istio echo's `proto.EchoTestService/Echo`, whose messages have a single string field:

    message EchoRequest  { string message = 1; }
    message EchoResponse { string message = 1; }

so protobuf is written by hand (tag 0x0A, varint length, UTF-8 bytes). gRPC framing: 1 byte compressed
flag + 4 bytes big-endian length, then the message (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md).
The status comes from the `grpc-status` trailer (or header, for a trailers-only answer). Like the upstream
echo client, gRPC OK is reported as status 200; any other outcome has no HTTP-like status.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from tests.conformance.judge import Exchange

ECHO_METHOD = "/proto.EchoTestService/Echo"

# https://grpc.github.io/grpc/core/md_doc_statuscodes.html
STATUS_NAMES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
    10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
    15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_message(text: str) -> bytes:
    """`{string message = 1}`; proto3 omits an empty string."""
    raw = text.encode("utf-8")
    return b"" if not raw else b"\x0a" + _varint(len(raw)) + raw


def decode_message(data: bytes) -> str:
    """Field 1 (string) of a message; other fields are skipped."""
    pos, value = 0, ""

    def varint() -> int:
        nonlocal pos
        result = shift = 0
        while True:
            if pos >= len(data):
                raise ValueError("truncated varint")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while pos < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            varint()
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length = varint()
            if number == 1:
                value = data[pos:pos + length].decode("utf-8", "replace")
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return value


def frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def unframe(body: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 5 <= len(body):
        length = int.from_bytes(body[pos + 1:pos + 5], "big")
        out.append(body[pos + 5:pos + 5 + length])
        pos += 5 + length
    if pos != len(body):
        raise ValueError("truncated gRPC message")
    return out


@dataclass(frozen=True)
class GrpcReply:
    http_status: int | None
    headers: list[tuple[str, str]]
    trailers: list[tuple[str, str]]
    grpc_status: int | None
    grpc_message: str
    message: str                         # the EchoResponse text

    def exchange(self) -> Exchange:
        if self.grpc_status == 0 and self.http_status == 200:
            status, text = 200, "200 (gRPC OK)"
        elif self.http_status not in (None, 200):
            status, text = None, f"HTTP {self.http_status} on a gRPC call (grpc-status {self.grpc_status})"
        else:
            name = STATUS_NAMES.get(self.grpc_status or -1, "no grpc-status")
            status, text = None, f"gRPC status {self.grpc_status} {name}: {self.grpc_message!r}"
        return Exchange(status=status, status_text=text, headers=self.headers + self.trailers, body=self.message)


class GrpcError(Exception):
    pass


class GrpcChannel:
    """One h2c connection from `source_ip` to `address:port`; unary calls run one after another on it."""

    def __init__(self, source_ip: str, address: str, port: int, *, authority: str, timeout: float) -> None:
        self.authority = authority
        self.sock = socket.create_connection((address, port), timeout=timeout, source_address=(source_ip, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def unary(self, method: str, metadata: list[tuple[str, str]], text: str = "") -> GrpcReply:
        stream = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"), (":scheme", "http"), (":path", method), (":authority", self.authority),
            ("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", "waypost-conformance"),
        ] + [(k.lower(), v) for k, v in metadata]
        self.conn.send_headers(stream, headers)
        self.conn.send_data(stream, frame(encode_message(text)), end_stream=True)
        self._flush()
        http_status: int | None = None
        response_headers: list[tuple[str, str]] = []
        trailers: list[tuple[str, str]] = []
        body = bytearray()
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise GrpcError("connection closed before the call ended")
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if getattr(event, "stream_id", stream) != stream:
                    continue
                if isinstance(event, h2.events.ResponseReceived):
                    response_headers = [(k, v) for k, v in event.headers if not k.startswith(":")]
                    http_status = int(dict(event.headers).get(":status", "0"))
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = list(event.headers)
                elif isinstance(event, h2.events.StreamReset):
                    raise GrpcError(f"stream reset by the peer (error code {event.error_code!r})")
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise GrpcError(f"connection terminated by the peer (GOAWAY {event.error_code!r})")
                elif isinstance(event, h2.events.StreamEnded):
                    self._flush()
                    return self._reply(http_status, response_headers, trailers, bytes(body))
            self._flush()

    @staticmethod
    def _reply(http_status, headers, trailers, body: bytes) -> GrpcReply:
        status_source = dict(trailers) if trailers else dict(headers)  # trailers-only answers use headers
        raw_status = status_source.get("grpc-status")
        try:
            messages = unframe(body)
            message = decode_message(messages[0]) if messages else ""
        except ValueError as exc:
            message = f"<undecodable response: {exc}>"
        grpc_status = int(raw_status) if raw_status is not None and raw_status.strip().isdigit() else None
        return GrpcReply(http_status, headers, trailers, grpc_status,
                         status_source.get("grpc-message", ""), message)

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self._flush()
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> "GrpcChannel":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def grpc_call(source_ip: str, address: str, port: int, *, authority: str, metadata: list[tuple[str, str]],
              timeout: float, method: str = ECHO_METHOD) -> Exchange:
    """One unary call on a new connection; connection problems become an Exchange without status."""
    try:
        with GrpcChannel(source_ip, address, port, authority=authority, timeout=timeout) as channel:
            return channel.unary(method, metadata).exchange()
    except (OSError, GrpcError, h2.exceptions.ProtocolError) as exc:
        return Exchange(status=None, status_text=f"no gRPC response ({type(exc).__name__}: {exc})")
