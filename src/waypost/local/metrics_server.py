"""The metrics endpoints of a running mesh: each proxy's `:15020/stats/prometheus` on its own address
(Istio's pilot-agent convention, so scrape configs carry over) and a merged one on the control plane's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from waypost.mesh.addresses import STATS_PORT

from .metrics import fetch, merge

log = logging.getLogger("waypost.local")
PATH = "/stats/prometheus"


def _server(address: str, produce: Callable[[], str]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.split("?", 1)[0] not in (PATH, "/metrics"):
                self.send_error(404, f"metrics are at {PATH}")
                return
            try:
                body = produce().encode()
            except OSError as exc:
                self.send_error(503, f"proxy not reachable: {exc}")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # scrapes are not worth a log line each
            pass

    server = ThreadingHTTPServer((address, STATS_PORT), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"metrics-{address}", daemon=True).start()
    return server


class MetricsEndpoints:
    def __init__(self, merged_address: str) -> None:
        self._merged_address = merged_address
        self._admins: dict[str, str] = {}  # proxy name -> admin address
        self._servers: dict[str, tuple[str, ThreadingHTTPServer]] = {}  # proxy name -> (address, server)
        self._merged: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    def sync(self, proxies: Iterable[dict]) -> None:
        """Serves every proxy in `proxies` (dicts with name, address, admin); stops the others."""
        wanted = {p["name"]: p for p in proxies}
        with self._lock:
            for name in list(self._servers):
                if name not in wanted or wanted[name]["address"] != self._servers[name][0]:
                    self._servers.pop(name)[1].shutdown()
            for name, proxy in wanted.items():
                self._admins[name] = proxy["admin"]
                if name not in self._servers:
                    try:
                        self._servers[name] = (proxy["address"], _server(proxy["address"], lambda admin=proxy["admin"]: fetch(admin)))
                    except OSError as exc:
                        log.warning("cannot serve metrics for %s on %s:%d: %s", name, proxy["address"], STATS_PORT, exc)
            self._admins = {n: a for n, a in self._admins.items() if n in wanted}
            if self._merged is None:
                try:
                    self._merged = _server(self._merged_address, self.merged)
                except OSError as exc:
                    log.warning("cannot serve merged metrics on %s:%d: %s", self._merged_address, STATS_PORT, exc)

    def merged(self) -> str:
        with self._lock:
            admins = dict(self._admins)
        return merge((name, fetch(admin)) for name, admin in sorted(admins.items()))

    def stop(self) -> None:
        with self._lock:
            for _, server in self._servers.values():
                server.shutdown()
            self._servers.clear()
            if self._merged is not None:
                self._merged.shutdown()
                self._merged = None
