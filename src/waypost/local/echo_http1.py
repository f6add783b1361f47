"""HTTP/1.x for the echo workloads: keep-alive, Content-Length and chunked bodies, `Upgrade: h2c`.

The request is reported the way Go's `net/http` server hands it to a handler (echo-basic and Istio's echo
are both Go): Host moved out of the header map, `Transfer-Encoding` removed, `Content-Length` dropped
when the body is chunked. Request bodies are read and thrown away; the echo never reports them.
"""

from __future__ import annotations

import asyncio
import http
import re
from dataclasses import dataclass

from waypost.local import echo_http2
from waypost.local.echo_app import EchoRequest, EchoResponse
from waypost.local.echo_go import group_headers
from waypost.local.echo_wire import READ_SIZE, EchoConnection, LimitExceeded, http_date

MAX_HEAD = 64 * 1024            # request line plus headers
_MAX_CHUNK_LINE = 4 * 1024

_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e\x80-\xff]+) HTTP/(\d)\.(\d)")
_HEADER_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,15}")
_REASONS = {status.value: status.phrase for status in http.HTTPStatus}
# Framing is ours to write; a handler-provided value (via X-Echo-Set-Header) would corrupt the stream.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})


class Reject(Exception):
    """A request the server refuses; the connection is closed after the answer (Go's badRequestError)."""

    def __init__(self, status: int, detail: str = "") -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class _EndOfStream(Exception):
    pass


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    version: tuple[int, int]
    headers: tuple[tuple[str, str], ...]   # as received (name case kept), in order


def parse_head(head: bytes) -> RequestHead:
    """Request line and header block (without the final empty line) → RequestHead, or Reject."""
    lines = head.split(b"\n")
    match = _REQUEST_LINE.fullmatch(lines[0].rstrip(b"\r"))
    if match is None:
        raise Reject(400, "malformed request line")
    version = (int(match.group(3)), int(match.group(4)))
    if version[0] != 1:
        raise Reject(505, "unsupported protocol version")
    headers = []
    for raw in lines[1:]:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            raise Reject(400, "obsolete line folding")  # RFC 9112 §5.2 lets a server reject it
        name, colon, value = line.partition(b":")
        if not colon or _HEADER_NAME.fullmatch(name) is None:
            raise Reject(400, "malformed MIME header line")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise Reject(400, "invalid header value")
        headers.append((name.decode("ascii"), value.decode("utf-8", "replace")))
    return RequestHead(
        method=match.group(1).decode("ascii"),
        target=match.group(2).decode("utf-8", "replace"),
        version=version,
        headers=tuple(headers),
    )


async def _read_head(conn: EchoConnection) -> bytes | None:
    """The next request head (request line and headers), None when the client closed between requests."""
    start = 0
    while True:
        # RFC 9112 §2.2: ignore empty lines before a request line (sent after a body by old clients).
        while conn.buffer[:1] in (b"\r", b"\n") and conn.buffer:
            del conn.buffer[:1]
        # Go's textproto also accepts bare-LF line endings.
        ends = [index + size for index, size in ((conn.buffer.find(b"\n\r\n", start), 3),
                                                 (conn.buffer.find(b"\n\n", start), 2)) if index >= 0]
        if ends:
            end = min(ends)
            if end > MAX_HEAD:
                raise LimitExceeded
            head = conn.take(end)
            return head.rstrip(b"\r\n")
        if len(conn.buffer) > MAX_HEAD:
            raise LimitExceeded
        start = max(0, len(conn.buffer) - 2)
        if not await conn.fill():
            if conn.buffer:
                raise _EndOfStream
            return None


def _values(head: RequestHead, name: str) -> list[str]:
    return [value for key, value in head.headers if key.lower() == name]


def _tokens(values: list[str]) -> set[str]:
    return {token.strip().lower() for value in values for token in value.split(",")}


async def serve_http1(conn: EchoConnection) -> None:
    """Answer requests on the connection until the client closes it or a request ends it."""
    while True:
        try:
            head = await _read_head(conn)
            if head is None:
                return
            keep_alive = await _serve_one(conn, parse_head(head))
        except LimitExceeded:
            await _refuse(conn, Reject(431, ""))
            return
        except Reject as reject:
            await _refuse(conn, reject)
            return
        except (_EndOfStream, ConnectionError):
            return
        if not keep_alive:
            conn.close()
            return


async def _serve_one(conn: EchoConnection, head: RequestHead) -> bool:
    """Read (and drop) the body, answer; True when the connection stays open."""
    hosts = _values(head, "host")
    if len(hosts) > 1:
        raise Reject(400, "too many Host headers")
    if head.version >= (1, 1) and not hosts:
        raise Reject(400, "missing required Host header")
    host = hosts[0] if hosts else ""
    if "://" in head.target and not head.target.startswith("/"):
        # absolute-form: Go takes r.Host from the URL
        authority = head.target.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
        host = authority or host

    chunked = False
    length = 0
    encodings = _values(head, "transfer-encoding")
    if encodings:
        if len(encodings) != 1 or encodings[0].strip().lower() != "chunked":
            raise Reject(501, "unsupported transfer encoding")
        chunked = True
    else:
        lengths = {value.strip() for value in _values(head, "content-length")}
        if lengths:
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                raise Reject(400, "bad Content-Length")
            length = int(next(iter(lengths)))

    connection = _tokens(_values(head, "connection"))
    if head.version >= (1, 1):
        keep_alive = "close" not in connection
    else:
        keep_alive = "keep-alive" in connection

    if (chunked or length) and head.version >= (1, 1) and "100-continue" in _tokens(_values(head, "expect")):
        await conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if chunked:
        await _discard_chunked(conn)
    elif length and not await conn.discard(length):
        raise _EndOfStream

    dropped = {"host", "transfer-encoding"} | ({"content-length"} if chunked else set())
    upgrade = (
        head.version >= (1, 1) and "upgrade" in connection and "h2c" in _tokens(_values(head, "upgrade"))
        and len(_values(head, "http2-settings")) == 1
    )
    if upgrade:
        dropped |= {"connection", "upgrade", "http2-settings"}
    request = EchoRequest(
        method=head.method,
        target=head.target,
        host=host,
        proto="HTTP/2.0" if upgrade else f"HTTP/{head.version[0]}.{head.version[1]}",
        headers=group_headers((name, value) for name, value in head.headers if name.lower() not in dropped),
        port=conn.port,
        remote=conn.remote,
    )
    if upgrade:
        # RFC 7540 §3.2: answer 101, then the response to this request comes on HTTP/2 stream 1.
        await conn.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        await echo_http2.serve_http2(conn, upgrade=(_values(head, "http2-settings")[0].encode("ascii"), request))
        return False

    response = conn.app.handle(request)
    if response.log:
        conn.log(response.log)
    if response.delay:
        await asyncio.sleep(response.delay)
    if response.reset:
        conn.reset()
        return False
    await conn.write(_encode_response(response, head_only=head.method == "HEAD",
                                      connection=None if keep_alive == (head.version >= (1, 1))
                                      else ("keep-alive" if keep_alive else "close")))
    return keep_alive


def _encode_response(response: EchoResponse, *, head_only: bool, connection: str | None) -> bytes:
    status = response.status
    headers = [(name, value) for name, value in response.headers if name.lower() not in _FRAMING]
    if not any(name.lower() == "date" for name, _ in headers):
        headers.append(("Date", http_date()))
    # RFC 9110 §8.6: no Content-Length (nor body) on 1xx, 204 and 304.
    body_allowed = status >= 200 and status not in (204, 304)
    if body_allowed:
        headers.append(("Content-Length", str(len(response.body))))
    if connection:
        headers.append(("Connection", connection))
    headers.sort(key=lambda item: item[0])  # Go writes headers sorted by key
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status) or f'status code {status}'}"]
    lines += [f"{name}: {value}" for name, value in headers]
    out = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "replace")
    if body_allowed and not head_only:
        out += response.body
    return out


async def _discard_chunked(conn: EchoConnection) -> None:
    while True:
        end = await conn.read_until(b"\n", _MAX_CHUNK_LINE)
        if end is None:
            raise _EndOfStream
        size_text = conn.take(end).rstrip(b"\r\n").split(b";", 1)[0].strip(b" \t")
        if _CHUNK_SIZE.fullmatch(size_text) is None:
            raise Reject(400, "invalid chunk length")
        size = int(size_text, 16)
        if size == 0:
            break
        if not await conn.discard(size):
            raise _EndOfStream
        end = await conn.read_until(b"\n", 2)
        if end is None:
            raise _EndOfStream
        if conn.take(end) not in (b"\r\n", b"\n"):
            raise Reject(400, "malformed chunked encoding")
    trailer_bytes = 0
    while True:  # trailer section, ended by an empty line
        end = await conn.read_until(b"\n", MAX_HEAD)
        if end is None:
            raise _EndOfStream
        line = conn.take(end)
        trailer_bytes += len(line)
        if trailer_bytes > MAX_HEAD:
            raise LimitExceeded
        if line in (b"\r\n", b"\n"):
            return


async def _refuse(conn: EchoConnection, reject: Reject) -> None:
    """Answer a refused request like Go's server, then close without resetting the answer away."""
    reason = _REASONS.get(reject.status, "")
    text = f"{reject.status} {reason}" + (f": {reject.detail}" if reject.detail else "")
    data = (
        f"HTTP/1.1 {reject.status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Connection: close\r\nContent-Length: {len(text)}\r\n\r\n{text}"
    ).encode()
    try:
        await conn.write(data)
        # Closing with unread input makes the kernel send RST, which can destroy the answer in flight:
        # half-close, then drain what the client still sends for a moment (Go's closeWriteAndWait).
        if conn.writer.can_write_eof():
            conn.writer.write_eof()
        conn.buffer.clear()
        async with asyncio.timeout(0.5):
            while await conn.discard(READ_SIZE):
                pass
    except (TimeoutError, ConnectionError):
        pass
    conn.close()

