"""HTTP/2 cleartext (h2c) for the echo workloads, with the `h2` state machine.

Streams are answered concurrently: a stream whose request has ended is answered at once when its answer
fits the peer's window, else (and when `?delay=` asks to wait) in a task of its own. Received DATA is
acknowledged at once (flow-control credit goes back to the peer) and thrown away, except for gRPC calls,
whose request message is kept up to grpc-go's 4 MiB limit. Response bodies are sent within the peer's
stream and connection windows, waiting for WINDOW_UPDATE when they are spent.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Coroutine

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from waypost.local.echo_app import EchoRequest, EchoResponse
from waypost.local.echo_go import group_headers
from waypost.local.echo_grpc import MAX_MESSAGE, GrpcResult, handle_grpc, is_grpc
from waypost.local.echo_wire import READ_SIZE, EchoConnection, http_date

_log = logging.getLogger(__name__)

_CONFIG = h2.config.H2Configuration(client_side=False, header_encoding=None)
# Go's http2 server allows 250 concurrent streams; Envoy pools many requests on one upstream connection.
_MAX_CONCURRENT_STREAMS = 1000
_MAX_HEADER_LIST = 64 * 1024
# Connection-specific headers are forbidden in HTTP/2 (RFC 9113 §8.2.2); Go drops them from handler output.
_Headers = list[tuple[str, str]]
_NOT_IN_H2 = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
                        "te", "content-length"})


@dataclass(eq=False)
class _Stream:
    headers: list[tuple[str, str]]       # decoded, lowercase names, pseudo-headers included
    grpc: bool
    body: bytearray = field(default_factory=bytearray)
    overflow: bool = False

    def pseudo(self, name: str) -> str:
        for key, value in self.headers:
            if key == name:
                return value
            if not key.startswith(":"):
                break  # pseudo-headers come first (h2 validates that)
        return ""


async def serve_http2(conn: EchoConnection, *, upgrade: tuple[bytes, EchoRequest] | None = None) -> None:
    """Serve the connection as HTTP/2; `upgrade` = (HTTP2-Settings, request) after an `Upgrade: h2c`."""
    await _Session(conn).run(upgrade)


class _Session:
    def __init__(self, conn: EchoConnection) -> None:
        self.conn = conn
        self.h2 = h2.connection.H2Connection(config=_CONFIG)
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: _MAX_CONCURRENT_STREAMS,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: _MAX_HEADER_LIST,
        })
        self.streams: dict[int, _Stream] = {}          # requests still arriving
        self.pending: dict[int, asyncio.Task[None]] = {}  # answers waiting (delay, flow control)
        self.tasks: set[asyncio.Task[None]] = set()
        self.window_opened = asyncio.Event()
        self.closed = False
        self.peer_done = False

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.conn.writer.transport.is_closing():
            self.conn.writer.write(data)

    async def run(self, upgrade: tuple[bytes, EchoRequest] | None) -> None:
        try:
            if upgrade is not None:
                settings, request = upgrade
                self.h2.initiate_upgrade_connection(settings)
                self._answer_http(1, request)
            else:
                self.h2.initiate_connection()
            self.flush()
            data = bytes(self.conn.buffer)
            self.conn.buffer.clear()
            while not self.peer_done:
                if data:
                    try:
                        events = self.h2.receive_data(data)
                    except h2.exceptions.ProtocolError:
                        self.flush()  # h2 has queued the GOAWAY
                        return
                    for event in events:
                        self._on_event(event)
                    self.flush()
                    await self.conn.writer.drain()
                if self.peer_done:
                    break
                data = await self.conn.reader.read(READ_SIZE)
                if not data:
                    break
            # The client is done sending: let the streams in flight finish their answers (those waiting
            # for flow-control credit give up, as no WINDOW_UPDATE can come any more).
            self.closed = True
            self._wake()
            if self.tasks:
                await asyncio.gather(*list(self.tasks), return_exceptions=True)
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            self.closed = True
            self._wake()
            for task in self.tasks:
                task.cancel()
            self.conn.close()

    # -- events ----------------------------------------------------------------------------------------

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = [(name.decode("latin-1"), value.decode("utf-8", "replace")) for name, value in event.headers]
            stream = _Stream(headers, grpc=False)
            stream.grpc = stream.pseudo(":method") == "POST" and is_grpc(_first(headers, "content-type"))
            self.streams[event.stream_id] = stream
        elif isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.grpc and not stream.overflow:
                if len(stream.body) + len(event.data) > MAX_MESSAGE + 5:
                    stream.overflow = True
                    stream.body.clear()
                else:
                    stream.body += event.data
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                self._answer(event.stream_id, stream)
        elif isinstance(event, h2.events.StreamReset):
            self.streams.pop(event.stream_id, None)
            task = self.pending.pop(event.stream_id, None)
            if task is not None:
                task.cancel()
            self._wake()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._wake()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.peer_done = True

    def _start(self, stream_id: int, answer: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(self._guard(stream_id, answer))
        self.tasks.add(task)
        self.pending[stream_id] = task
        task.add_done_callback(self.tasks.discard)

    async def _guard(self, stream_id: int, answer: Coroutine[Any, Any, None]) -> None:
        try:
            await answer
        except (h2.exceptions.StreamClosedError, ConnectionError):
            pass  # the client went away or reset the stream
        except h2.exceptions.ProtocolError:
            pass  # e.g. the stream was reset while we were answering it
        except Exception:  # noqa: BLE001 — a handler bug must not take the connection down
            _log.exception("echo: failed to answer HTTP/2 stream %d", stream_id)
            self._reset(stream_id)
        finally:
            self.pending.pop(stream_id, None)

    def _wake(self) -> None:
        self.window_opened.set()
        self.window_opened = asyncio.Event()

    def _reset(self, stream_id: int) -> None:
        try:
            self.h2.reset_stream(stream_id, ErrorCodes.INTERNAL_ERROR)
            self.flush()
        except h2.exceptions.ProtocolError:
            pass

    # -- answers ---------------------------------------------------------------------------------------

    def _answer(self, stream_id: int, stream: _Stream) -> None:
        """Answer a complete request: at once when nothing has to wait, else in a task of its own."""
        try:
            if stream.grpc:
                self._answer_grpc(stream_id, stream)
            else:
                self._answer_http(stream_id, self._request(stream))
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        except Exception:  # noqa: BLE001 — a handler bug must not take the connection down
            _log.exception("echo: failed to answer HTTP/2 stream %d", stream_id)
            self._reset(stream_id)

    def _answer_http(self, stream_id: int, request: EchoRequest) -> None:
        response = self.conn.app.handle(request)
        if response.log:
            self.conn.log(response.log)
        head_only = request.method == "HEAD"
        if response.delay or response.reset:
            self._start(stream_id, self._answer_later(stream_id, response, head_only=head_only))
        else:
            self._reply(stream_id, *self._http_parts(response, head_only=head_only))

    def _request(self, stream: _Stream) -> EchoRequest:
        method = stream.pseudo(":method")
        authority = stream.pseudo(":authority") or _first(stream.headers, "host")
        target = stream.pseudo(":path") or (authority if method == "CONNECT" else "")
        return EchoRequest(
            method=method,
            target=target,
            host=authority,
            proto="HTTP/2.0",
            headers=group_headers((name, value) for name, value in stream.headers
                                  if not name.startswith(":") and name != "host"),
            port=self.conn.port,
            remote=self.conn.remote,
        )

    async def _answer_later(self, stream_id: int, response: EchoResponse, *, head_only: bool) -> None:
        if response.delay:
            await asyncio.sleep(response.delay)
        if response.reset:
            # One stream of a multiplexed connection: reset the stream, not everyone else's requests.
            self._reset(stream_id)
            return
        headers, body, trailers = self._http_parts(response, head_only=head_only)
        await self._reply_in_window(stream_id, headers, body, trailers)

    @staticmethod
    def _http_parts(response: EchoResponse, *, head_only: bool) -> tuple[_Headers, bytes, _Headers | None]:
        status = response.status
        body_allowed = status >= 200 and status not in (204, 304)
        headers = [(":status", str(status))]
        headers += [(name.lower(), value) for name, value in response.headers if name.lower() not in _NOT_IN_H2]
        if not any(name == "date" for name, _ in headers):
            headers.append(("date", http_date()))
        if body_allowed:
            headers.append(("content-length", str(len(response.body))))
        return headers, response.body if body_allowed and not head_only else b"", None

    def _answer_grpc(self, stream_id: int, stream: _Stream) -> None:
        result: GrpcResult = handle_grpc(
            self.conn.app, path=stream.pseudo(":path"), metadata=stream.headers, body=bytes(stream.body),
            body_overflow=stream.overflow, port=self.conn.port, remote=self.conn.remote,
        )
        if result.log:
            self.conn.log(result.log)
        headers = [(":status", "200"), ("content-type", "application/grpc")]
        trailers = [("grpc-status", str(result.status))]
        if result.message:
            trailers.append(("grpc-message", _grpc_message(result.message)))
        if result.payload is None:  # trailers-only response
            self._reply(stream_id, headers + trailers, b"", None)
        else:
            self._reply(stream_id, headers, result.payload, trailers)

    def _reply(self, stream_id: int, headers: _Headers, body: bytes, trailers: _Headers | None) -> None:
        """Queue a whole answer now if the body fits the peer's window; the read loop flushes it."""
        window = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
        if len(body) > window:
            self._start(stream_id, self._reply_in_window(stream_id, headers, body, trailers))
            return
        self.h2.send_headers(stream_id, headers, end_stream=not body and trailers is None)
        if body:
            self.h2.send_data(stream_id, body, end_stream=trailers is None)
        if trailers is not None:
            self.h2.send_headers(stream_id, trailers, end_stream=True)

    async def _reply_in_window(self, stream_id: int, headers: _Headers, body: bytes,
                               trailers: _Headers | None) -> None:
        self.h2.send_headers(stream_id, headers, end_stream=not body and trailers is None)
        if body:
            await self._send_body(stream_id, body, end_stream=trailers is None)
        if trailers is not None:
            self.h2.send_headers(stream_id, trailers, end_stream=True)
        self.flush()

    async def _send_body(self, stream_id: int, body: bytes, *, end_stream: bool) -> None:
        """Send within the peer's flow-control windows (RFC 9113 §5.2), waiting for WINDOW_UPDATEs."""
        view = memoryview(body)
        offset = 0
        while offset < len(body):
            window = self.h2.local_flow_control_window(stream_id)
            if window <= 0:
                if self.closed:
                    raise ConnectionError("connection closed while waiting for flow-control credit")
                self.flush()
                await self.window_opened.wait()
                continue
            end = offset + min(window, self.h2.max_outbound_frame_size, len(body) - offset)
            self.h2.send_data(stream_id, bytes(view[offset:end]), end_stream=end_stream and end == len(body))
            offset = end
            self.flush()
            await self.conn.writer.drain()


def _first(headers: list[tuple[str, str]], name: str) -> str:
    for key, value in headers:
        if key == name:
            return value
    return ""


def _grpc_message(message: str) -> str:
    """grpc-message is percent-encoded outside printable ASCII (PROTOCOL-HTTP2.md)."""
    return "".join(
        char if 0x20 <= ord(char) <= 0x7E and char != "%" else "".join(f"%{byte:02X}" for byte in char.encode())
        for char in message
    )
