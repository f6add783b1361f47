"""One accepted echo connection: buffered reads with limits, and the plumbing the protocols share."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Callable

from waypost.local.echo_app import EchoApp

READ_SIZE = 64 * 1024


class LimitExceeded(Exception):
    pass


@dataclass(eq=False)
class EchoConnection:
    """A client connection to one (workload, port), with the bytes read from it but not yet consumed."""

    app: EchoApp
    port: int
    remote: str                        # "ip:port" of the client
    log: Callable[[str], None]         # prints one line of the workload's log
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    buffer: bytearray = field(default_factory=bytearray)
    eof: bool = False

    async def fill(self) -> bool:
        """Read more bytes into the buffer; False at end of stream."""
        if self.eof:
            return False
        data = await self.reader.read(READ_SIZE)
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    async def read_until(self, separator: bytes, limit: int, *, start: int = 0) -> int | None:
        """Index just past the first `separator` (searched from `start`), reading as needed.

        None at end of stream; LimitExceeded when `limit` bytes arrive without one.
        """
        while True:
            index = self.buffer.find(separator, start)
            if index >= 0:
                return index + len(separator)
            if len(self.buffer) > limit:
                raise LimitExceeded
            start = max(0, len(self.buffer) - len(separator) + 1)
            if not await self.fill():
                return None

    def take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def discard(self, size: int) -> bool:
        """Drop `size` body bytes without keeping them; False if the stream ends first."""
        held = min(size, len(self.buffer))
        del self.buffer[:held]
        size -= held
        while size > 0:
            data = await self.reader.read(min(size, READ_SIZE))
            if not data:
                self.eof = True
                return False
            size -= len(data)
        return True

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), as echo-basic's retry simulator does."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.writer.transport.abort()

    def close(self) -> None:
        self.writer.transport.close()


_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
    """The `Date` header Go's server adds, formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]
