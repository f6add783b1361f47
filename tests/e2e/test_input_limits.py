"""Input limits at the waypoint (issue 9): Envoy's edge settings on every waypoint HTTP chain.

- a client that trickles its request headers (slowloris) is cut off after `request_headers_timeout`
  (10 s) instead of holding the connection and the waypoint's stream open;
- request headers over 60 KiB, or more than 100 of them, get 431 before any filter or backend sees them;
- a normal request on the same service still works, and a slow client does not slow others down.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e


def connect(mesh) -> socket.socket:
    client = mesh.pods("quickstart", "client")[0]["address"]
    sock = socket.socket()
    sock.settimeout(30)
    sock.bind((client, 0))
    sock.connect((mesh.service("quickstart", "echo")["vip"], 80))
    return sock


def status_of(sock: socket.socket, request: bytes) -> int:
    sock.sendall(request)
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            return 0
        head += chunk
    return int(head.split(b" ", 2)[1])


def test_input_limits(start_mesh):
    mesh = start_mesh(REPO / "examples" / "quickstart", name="limits")
    # Oversized headers: one huge header, and too many small ones.
    with connect(mesh) as sock:
        assert status_of(sock, b"GET /v1 HTTP/1.1\r\nHost: echo\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n") == 431
    with connect(mesh) as sock:
        many = b"".join(f"x-h{i}: v\r\n".encode() for i in range(150))
        assert status_of(sock, b"GET /v1 HTTP/1.1\r\nHost: echo\r\n" + many + b"\r\n") == 431

    # Slowloris: one header byte a second, never finishing the request.
    slow = connect(mesh)
    slow.sendall(b"GET /v1 HTTP/1.1\r\nHost: echo\r\n")
    started = time.monotonic()
    closed_after = None
    try:
        while time.monotonic() - started < 25:
            try:
                slow.sendall(b"x")
            except OSError:
                closed_after = time.monotonic() - started
                break
            slow.settimeout(1.0)
            try:
                data = slow.recv(4096)
            except socket.timeout:
                data = None
            if data is not None:  # the waypoint answered (408) or closed (b"")
                closed_after = time.monotonic() - started
                break
            # Meanwhile an ordinary client is served as usual.
            if int(time.monotonic() - started) == 3:
                assert mesh.request("quickstart/client", "http://echo/v1", timeout=5).status == 200
    finally:
        slow.close()
    assert closed_after is not None, "the slow client kept its connection for 25 s"
    assert 9 <= closed_after <= 16, f"cut off after {closed_after:.1f}s (request_headers_timeout is 10 s)"
