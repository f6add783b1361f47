"""The control channel of a running supervisor: a Unix socket in its state directory, one JSON line each way.

    client → {"op": "apply", "paths": [...], "dry_run": false}
             {"op": "delete", "paths": [...], "ignore_not_found": false}
             {"op": "ping"}
    server → {"ok": true|false, "results": [...], "diagnostics": [...], "errors": [...], ...}

One request per connection; the server answers when the change is rejected or fully rolled out, so the
client just blocks on the answer. A Unix socket (rather than TCP on loopback) is reachable only by who
may enter the state directory, and needs no port.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from waypost.api.diagnostics import Diagnostic

log = logging.getLogger("waypost.local")

PROTOCOL = 1
# sun_path holds 108 bytes on Linux; longer paths go through the directory's /proc/self/fd entry.
_SUN_PATH_MAX = 100


class ControlError(RuntimeError):
    """The supervisor could not be reached, or answered something that is not the protocol."""


def diagnostic_to_json(d: Diagnostic) -> dict[str, Any]:
    return {**dataclasses.asdict(d), "severity": d.severity.value}


def diagnostic_from_json(data: dict[str, Any]) -> Diagnostic:
    # Imported here: `waypost.api` loads every resource model, a fifth of a second that a client which
    # only got an "ok" back should not pay.
    from waypost.api.diagnostics import Diagnostic, Severity

    return Diagnostic(**{**data, "severity": Severity(data["severity"])})


@contextlib.contextmanager
def _socket_path(path: Path) -> Iterator[str]:
    if len(str(path)) < _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


class ControlServer:
    """Serves `handler(request) -> response` on a Unix socket, one thread per connection."""

    def __init__(self, path: Path, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.path = path
        self._handler = handler
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.path.unlink(missing_ok=True)  # left by a supervisor that was killed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with _socket_path(self.path) as address:
            sock.bind(address)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="waypost-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._sock is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone does not on Linux.
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None
        self.path.unlink(missing_ok=True)

    def _accept(self) -> None:
        while self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="waypost-control-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            try:
                request = json.loads(stream.readline() or b"null")
                if not isinstance(request, dict):
                    raise ValueError("want one JSON object")
            except ValueError as exc:
                response: dict[str, Any] = {"ok": False, "errors": [f"bad control request: {exc}"]}
            else:
                try:
                    response = self._handler(request)
                except Exception as exc:  # noqa: BLE001 - one failed request must not end the channel
                    log.exception("control request %s failed", request.get("op"))
                    response = {"ok": False, "errors": [f"internal error: {exc}"]}
            try:
                stream.write(json.dumps({"protocol": PROTOCOL, **response}).encode() + b"\n")
                stream.flush()
            except OSError:
                pass  # the client gave up waiting


def call(path: Path, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Sends one request to the supervisor listening at `path` and returns its answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with _socket_path(path) as address:
            sock.connect(address)
        with sock.makefile("rwb") as stream:
            stream.write(json.dumps(request).encode() + b"\n")
            stream.flush()
            line = stream.readline()
    except FileNotFoundError:
        raise ControlError(f"no control socket at {path}") from None
    except socket.timeout:
        raise ControlError(f"the supervisor did not answer within {timeout:.0f}s") from None
    except OSError as exc:
        raise ControlError(f"cannot reach the supervisor at {path}: {exc}") from None
    finally:
        sock.close()
    try:
        response = json.loads(line)
    except ValueError:
        raise ControlError("the supervisor closed the connection without answering") from None
    if not isinstance(response, dict) or response.get("protocol") != PROTOCOL:
        raise ControlError(f"the supervisor speaks another control protocol: {response!r:.200}")
    return response
