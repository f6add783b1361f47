"""Built-in echo workloads: the servers that stand in for pods running echo images.

One `EchoHost` serves every workload of a mesh from one asyncio event loop. Each (workload, port) gets a
listening socket on the workload's loopback address, and every accepted connection is sniffed from the
first bytes the client sends (conformance README §2c: one port answers HTTP, h2c, gRPC and raw TCP):

- the HTTP/2 connection preface → h2c with prior knowledge (`echo_http2`), which also carries gRPC;
- an HTTP/1.x request line → HTTP/1.1 with keep-alive (`echo_http1`);
- anything else → a raw TCP echo of every byte until the peer closes.

What the HTTP and gRPC answers contain lives in `echo_app` and `echo_grpc`; `echo_go` holds the Go
`net/http` conventions both upstream echo programs report requests in.

Run as a program: ``python -m waypost.local.echo --spec SPEC.json [--ready-file PATH]``; SIGHUP re-reads the
spec, SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import json
import logging
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from waypost.local.echo_app import FLAVORS, EchoApp
from waypost.local.echo_http1 import MAX_HEAD, serve_http1
from waypost.local.echo_http2 import serve_http2
from waypost.local.echo_wire import READ_SIZE, EchoConnection
from waypost.local.state import write_json_atomic

_log = logging.getLogger(__name__)

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
# An HTTP/1 request line, valid or not (the HTTP/1 side answers a malformed one with 400).
_REQUEST_LINE = re.compile(_TOKEN + rb"{1,32} [^\r\n]* HTTP/\d\.\d\r?\n")
_KNOWN_METHOD = re.compile(rb"(?:GET|HEAD|POST|PUT|DELETE|CONNECT|OPTIONS|TRACE|PATCH) ")
# Everything a request line can start with, so a client that has sent part of one is waited for.
_REQUEST_LINE_START = re.compile(_TOKEN + rb"{0,32}|" + _TOKEN + rb"{1,32} [^\r\n]*")
# A client that stops mid-way through something that could still become a request line is a TCP client.
_SNIFF_PATIENCE = 0.5
_BACKLOG = 1024


@dataclass(frozen=True)
class EchoWorkload:
    namespace: str
    pod: str                 # pod name, reported as `pod` (basic) / `Hostname` (advanced)
    address: str             # IP to bind, e.g. "127.21.64.3"
    ports: tuple[int, ...]   # TCP ports to listen on
    flavor: str              # "basic" (JSON body, echo-basic) or "advanced" (Key=Value text, Istio echo)
    service_version: str = ""  # advanced: the ServiceVersion line

    def __post_init__(self) -> None:
        if self.flavor not in FLAVORS:
            raise ValueError(f"echo workload {self.namespace}/{self.pod}: unknown flavor {self.flavor!r} "
                             f"(want one of {', '.join(FLAVORS)})")


def sniff(data: bytes) -> str | None:
    """Which protocol a connection speaks from its first bytes: "h2", "http1", "tcp", or None (need more)."""
    if data.startswith(_PREFACE):
        return "h2"
    if _PREFACE.startswith(data):
        return None
    line_end = data.find(b"\n")
    if line_end >= 0:
        line = data[:line_end + 1]
        return "http1" if _REQUEST_LINE.fullmatch(line) or _KNOWN_METHOD.match(line) else "tcp"
    if _REQUEST_LINE_START.fullmatch(data) is None:
        return "tcp"
    return "http1" if len(data) > MAX_HEAD else None  # the HTTP/1 side answers 431


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _StdoutLog:
    """Prints workload log lines; flushed once per event-loop turn rather than once per line."""

    def __init__(self) -> None:
        self._flush_pending = False

    def __call__(self, line: str) -> None:
        try:
            sys.stdout.write(line + "\n")
        except (OSError, ValueError):
            return
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass


# A listener is identified by everything that shapes its answers plus its port, so that changing a
# workload's port list leaves its other ports (and its retry counters) alone.
_Key = tuple[EchoWorkload, int]


class EchoHost:
    """Runs many workloads' servers in one asyncio event loop (a mesh may have thousands of pods)."""

    def __init__(self, *, log: Callable[[str], None] | None = None) -> None:
        """`log` receives each workload log line, already prefixed `[namespace/pod] `; default: stdout."""
        self._log = log if log is not None else _StdoutLog()
        self._servers: dict[_Key, asyncio.Server] = {}
        self._connections: dict[_Key, set[asyncio.Task[None]]] = {}
        self._apps: dict[EchoWorkload, EchoApp] = {}
        self._failed: dict[_Key, str] = {}
        self._lock = asyncio.Lock()

    async def apply(self, workloads: Sequence[EchoWorkload]) -> None:
        """Start servers for new (workload, port)s, stop removed ones, keep unchanged ones serving.

        A port that cannot be bound is recorded (see `failures()`) and retried on the next apply.
        """
        desired: dict[_Key, None] = {}
        for workload in workloads:
            identity = dataclasses.replace(workload, ports=())
            for port in workload.ports:
                desired[(identity, port)] = None
        async with self._lock:
            for key in [key for key in self._servers if key not in desired]:
                await self._stop(key)
            self._failed = {}
            for key in desired:
                if key not in self._servers:
                    await self._start(key)
            wanted = {identity for identity, _ in desired}
            self._apps = {identity: app for identity, app in self._apps.items() if identity in wanted}

    async def close(self) -> None:
        async with self._lock:
            for key in list(self._servers):
                await self._stop(key)
            self._apps.clear()
            self._failed.clear()

    def listening(self) -> list[str]:
        """"ip:port" of every bound socket."""
        return sorted(
            _format_address(*sock.getsockname()[:2]) for server in self._servers.values() for sock in server.sockets
        )

    def failed(self) -> list[str]:
        """"ip:port" of every (workload, port) that could not be bound by the last apply."""
        return sorted(_format_address(key[0].address, key[1]) for key in self._failed)

    def failures(self) -> list[tuple[EchoWorkload, int, str]]:
        """(workload, port, reason) for every listener the last apply could not bind."""
        return [(workload, port, reason) for (workload, port), reason in self._failed.items()]

    async def _start(self, key: _Key) -> None:
        workload, port = key
        app = self._apps.get(workload)
        if app is None:
            app = self._apps[workload] = EchoApp(namespace=workload.namespace, pod=workload.pod,
                                                 flavor=workload.flavor, service_version=workload.service_version)
        prefix = f"[{workload.namespace}/{workload.pod}] "
        log = self._log

        def prefixed(line: str) -> None:
            log(prefix + line)

        connections: set[asyncio.Task[None]] = set()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await _serve_connection(app, prefixed, connections, reader, writer)
            except asyncio.CancelledError:
                # `_stop` cancels connections; end quietly, since Python 3.11's StreamReaderProtocol calls
                # `exception()` on this task and would log a cancelled one as an error.
                pass

        try:
            server = await asyncio.start_server(accept, host=workload.address, port=port, reuse_address=True,
                                                backlog=_BACKLOG, limit=MAX_HEAD)
        except OSError as error:
            self._failed[key] = error.strerror or str(error)
            return
        self._servers[key] = server
        self._connections[key] = connections

    async def _stop(self, key: _Key) -> None:
        server = self._servers.pop(key)
        server.close()
        # A removed pod's open connections die with it.
        tasks = self._connections.pop(key, set())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)


async def _serve_connection(
    app: EchoApp, log: Callable[[str], None], connections: set[asyncio.Task[None]],
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
) -> None:
    task = asyncio.current_task()
    assert task is not None
    connections.add(task)
    try:
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        conn = EchoConnection(app=app, port=local[1], remote=_format_address(peer[0], peer[1]), log=log,
                              reader=reader, writer=writer)
        kind = await _sniff(conn)
        if kind == "h2":
            await serve_http2(conn)
        elif kind == "http1":
            await serve_http1(conn)
        elif kind == "tcp":
            await _tcp_echo(conn)
    except (OSError, EOFError):
        pass  # the client went away
    except Exception:  # noqa: BLE001 — one broken connection must not take the server down
        _log.exception("echo: connection failed")
    finally:
        connections.discard(task)
        writer.transport.close()


async def _sniff(conn: EchoConnection) -> str | None:
    while True:
        kind = sniff(bytes(conn.buffer)) if conn.buffer else None
        if kind is not None:
            return kind
        try:
            async with asyncio.timeout(_SNIFF_PATIENCE if conn.buffer else None):
                more = await conn.fill()
        except TimeoutError:
            return "tcp"
        if not more:
            return "tcp" if conn.buffer else None


async def _tcp_echo(conn: EchoConnection) -> None:
    """Write back every byte received until the peer closes (Istio's TCP echo endpoint)."""
    if conn.buffer:
        await conn.write(conn.take(len(conn.buffer)))
    while not conn.eof:
        data = await conn.reader.read(READ_SIZE)
        if not data:
            break
        await conn.write(data)
    conn.close()


# -- the program ---------------------------------------------------------------------------------------


def load_spec(path: str) -> list[EchoWorkload]:
    """SPEC.json → workloads; ValueError naming the file and field on bad input."""
    with open(path, encoding="utf-8") as handle:
        try:
            document = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not JSON: {error}") from None
    entries = document.get("workloads") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: want an object with a `workloads` list")
    workloads = []
    for index, entry in enumerate(entries):
        where = f"{path}: workloads[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: want an object")
        try:
            address = str(ipaddress.ip_address(entry.get("address", "")))
        except ValueError:
            raise ValueError(f"{where}.address: want an IP address, got {entry.get('address')!r}") from None
        ports = entry.get("ports")
        if not isinstance(ports, list) or not all(isinstance(p, int) and 0 < p < 65536 for p in ports):
            raise ValueError(f"{where}.ports: want a list of port numbers, got {ports!r}")
        fields = {name: entry.get(name, "") for name in ("namespace", "pod", "flavor", "service_version")}
        for name, value in fields.items():
            if not isinstance(value, str):
                raise ValueError(f"{where}.{name}: want a string, got {value!r}")
        try:
            workloads.append(EchoWorkload(address=address, ports=tuple(ports), **fields))
        except ValueError as error:
            raise ValueError(f"{where}.flavor: {error}") from None
    return workloads


def _write_ready_file(path: str, document: dict[str, object]) -> None:
    write_json_atomic(Path(path), document)


def _raise_open_file_limit() -> None:
    # Thousands of listeners and their connections need more descriptors than the usual soft limit.
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


async def _run(spec: str, ready_file: str | None, workloads: list[EchoWorkload]) -> int:
    host = EchoHost()
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    requested = {"stop": False, "reload": False}

    def request(what: str) -> None:
        requested[what] = True
        wake.set()

    # Installed before the ready file exists: a SIGHUP right after readiness must not kill us.
    loop.add_signal_handler(signal.SIGTERM, request, "stop")
    loop.add_signal_handler(signal.SIGINT, request, "stop")
    loop.add_signal_handler(signal.SIGHUP, request, "reload")
    generation = 0

    async def apply(new: list[EchoWorkload]) -> None:
        nonlocal generation
        await host.apply(new)
        generation += 1
        for workload, port, reason in host.failures():
            print(f"echo: {workload.namespace}/{workload.pod}: cannot listen on "
                  f"{_format_address(workload.address, port)}: {reason}", file=sys.stderr, flush=True)
        if ready_file:
            _write_ready_file(ready_file, {"pid": os.getpid(), "listening": host.listening(),
                                           "failed": host.failed(), "generation": generation})

    try:
        await apply(workloads)
        while True:
            await wake.wait()
            wake.clear()
            if requested["stop"]:
                break
            if requested["reload"]:
                requested["reload"] = False
                try:
                    new = load_spec(spec)
                except (OSError, ValueError) as error:
                    print(f"echo: reload ignored, keeping the running workloads: {error}",
                          file=sys.stderr, flush=True)
                    continue
                await apply(new)
    finally:
        await host.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m waypost.local.echo",
                                     description="Serve built-in echo workloads (HTTP/1.1, h2c, gRPC, TCP).")
    parser.add_argument("--spec", required=True, help='JSON file: {"workloads": [{namespace, pod, address, '
                                                      'ports, flavor, service_version}]}; re-read on SIGHUP')
    parser.add_argument("--ready-file", help='written once listening: {"pid", "listening", "failed", "generation"}')
    args = parser.parse_args(argv)
    try:
        workloads = load_spec(args.spec)
    except (OSError, ValueError) as error:
        print(f"echo: {error}", file=sys.stderr)
        return 2
    _raise_open_file_limit()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="echo: %(message)s")
    return asyncio.run(_run(args.spec, args.ready_file, workloads))


if __name__ == "__main__":
    sys.exit(main())
