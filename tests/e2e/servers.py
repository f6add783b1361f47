"""Servers the e2e tests run themselves, as the "external" or VM workloads of a mesh: a JSON echo that
answers with what it received, started in a thread and stopped by the context manager."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JsonEcho(BaseHTTPRequestHandler):
    """Answers any GET or POST with JSON: the server's address, path, method, header names in lower case,
    and whether the connection was TLS. `status` is the answer's status code."""

    status = 200

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({
            "server": self.server.server_address[0],
            "path": self.path,
            "method": self.command,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "tls": isinstance(self.connection, ssl.SSLSocket),
            "client": _client_name(self.connection),
        }).encode()
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


def _client_name(connection) -> str | None:
    """The common name of the TLS client's certificate, when the server asked for one and it verified."""
    if not isinstance(connection, ssl.SSLSocket):
        return None
    cert = connection.getpeercert() or {}
    return next((value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"), None)


class Failing(JsonEcho):
    status = 500


@contextmanager
def serving(address: str, port: int = 0, handler: type[BaseHTTPRequestHandler] = JsonEcho, tls: ssl.SSLContext | None = None) -> Iterator[ThreadingHTTPServer]:
    """A threaded HTTP server at address:port (0: any free port; read it from `server_address`)."""
    server = ThreadingHTTPServer((address, port), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
