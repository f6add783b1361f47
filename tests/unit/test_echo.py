"""The built-in echo workloads answer like the upstream echo images (conformance README §2), over real sockets.

Every test binds on 127.x.y.z addresses unique to this test process, with ports found free there, so the
file runs in parallel (`-n`) next to anything else.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import pytest

from waypost.local.echo import EchoHost, EchoWorkload, load_spec, sniff
from waypost.durations import parse_go_duration
from waypost.local.echo_go import canonical_header_key
from waypost.local.echo_grpc import decode_string_field, encode_string_field

pytestmark = pytest.mark.timeout(120)

NAMESPACE = "gateway-conformance-mesh"
REPO = Path(__file__).resolve().parents[2]
_addresses = itertools.count(1)


def unique_address() -> str:
    """A loopback address no other test process uses: two octets from the pid, one from a counter."""
    pid = os.getpid()
    return f"127.{10 + pid % 200}.{(pid // 200) % 250}.{next(_addresses)}"


def free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


class LoopThread:
    """An asyncio loop in a background thread, as a test's stand-in for the echo process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Any, timeout: float = 20) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Mesh:
    loop: LoopThread
    host: EchoHost
    log: list[str]
    basic: EchoWorkload
    advanced: EchoWorkload
    other: EchoWorkload
    client_ip: str           # source address of every HTTP client below, so `IP=` is predictable

    def url(self, workload: EchoWorkload, path: str, port_index: int = 0) -> str:
        return f"http://{workload.address}:{workload.ports[port_index]}{path}"

    def client(self, proto: str) -> httpx.Client:
        http2 = proto == "HTTP/2.0"
        transport = httpx.HTTPTransport(http1=not http2, http2=http2, local_address=self.client_ip)
        return httpx.Client(transport=transport, trust_env=False, timeout=10)


def start_host(loop: LoopThread, log: list[str]) -> EchoHost:
    async def create() -> EchoHost:
        return EchoHost(log=log.append)

    return loop.run(create())


def workload(name: str, flavor: str, *, ports: int = 1, namespace: str = NAMESPACE, version: str = "") -> EchoWorkload:
    address = unique_address()
    return EchoWorkload(namespace=namespace, pod=name, address=address,
                        ports=tuple(free_port(address) for _ in range(ports)), flavor=flavor,
                        service_version=version)


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    loop = LoopThread()
    log: list[str] = []
    host = start_host(loop, log)
    state = Mesh(
        loop=loop, host=host, log=log,
        basic=workload("echo-v1-5d8f7c9b6d-x2kqz", "basic", ports=2),
        advanced=workload("echo-v2-7c9b6d5d8f-q8w7e", "advanced", ports=2, version="v2"),
        other=workload("echo-v1-6f7d8c9b5a-m3n4p", "basic", namespace="gateway-conformance-mesh-consumer"),
        client_ip=unique_address(),
    )
    loop.run(host.apply([state.basic, state.advanced, state.other]))
    yield state
    loop.run(host.close())
    loop.stop()


PROTOS = ["HTTP/1.1", "HTTP/2.0"]


def lines_of(response: httpx.Response) -> list[str]:
    return response.text.splitlines()


def field(lines: list[str], name: str) -> list[str]:
    return [line.split("=", 1)[1] for line in lines if line.split("=", 1)[0] == name]


def wait_for(predicate: Callable[[], Any], timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


# -- basic flavour (echo-basic JSON) -----------------------------------------------------------------


@pytest.mark.parametrize("proto", PROTOS)
def test_basic_echo_reports_the_request_as_received(mesh: Mesh, proto: str) -> None:
    port = mesh.basic.ports[0]
    with mesh.client(proto) as client:
        response = client.get(mesh.url(mesh.basic, "/some/path?animal=whale&x=%2F"),
                              headers=[("x-header-add", "one"), ("X-Custom", "v")])
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-content-type-options"] == "nosniff"
    body = response.json()
    assert body["path"] == "/some/path?animal=whale&x=%2F"
    assert body["host"] == f"{mesh.basic.address}:{port}"
    assert body["method"] == "GET"
    assert body["proto"] == proto
    assert body["headers"]["X-Header-Add"] == ["one"]
    assert body["headers"]["X-Custom"] == ["v"]
    assert "Host" not in body["headers"] and not any(name.startswith(":") for name in body["headers"])
    assert body["httpPort"] == str(port)
    assert body["namespace"] == NAMESPACE
    assert body["ingress"] == "" and body["service"] == ""
    assert body["pod"] == "echo-v1-5d8f7c9b6d-x2kqz"
    assert list(body) == ["path", "host", "method", "proto", "headers", "httpPort", "namespace", "ingress",
                          "service", "pod"]


@pytest.mark.parametrize("proto", PROTOS)
def test_basic_echo_keeps_every_value_of_a_repeated_header_in_arrival_order(mesh: Mesh, proto: str) -> None:
    with mesh.client(proto) as client:
        response = client.get(mesh.url(mesh.basic, "/"),
                              headers=[("x-multi", "3"), ("X-Other", "a"), ("X-MULTI", "1"), ("x-multi", "2")])
    assert response.json()["headers"]["X-Multi"] == ["3", "1", "2"]


def test_basic_echo_reports_the_port_the_request_arrived_on(mesh: Mesh) -> None:
    with mesh.client("HTTP/1.1") as client:
        body = client.get(mesh.url(mesh.basic, "/", port_index=1)).json()
    assert body["httpPort"] == str(mesh.basic.ports[1])


def test_basic_echo_reports_http_1_0_requests_without_host(mesh: Mesh) -> None:
    reply = raw_exchange(mesh.basic, b"GET /old HTTP/1.0\r\nX-A: b\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    document = json.loads(body)
    assert (document["proto"], document["host"], document["headers"]) == ("HTTP/1.0", "", {"X-A": ["b"]})


@pytest.mark.parametrize("proto", PROTOS)
@pytest.mark.parametrize("flavor", ["basic", "advanced"])
def test_x_echo_set_header_sets_response_headers(mesh: Mesh, proto: str, flavor: str) -> None:
    target = mesh.basic if flavor == "basic" else mesh.advanced
    with mesh.client(proto) as client:
        response = client.get(mesh.url(target, "/"), headers={
            "X-Echo-Set-Header": "X-Foo:one, X-Bar: two,X-Foo:three",
        })
    assert response.status_code == 200
    assert response.headers.get_list("x-foo") == ["one,three"]
    assert response.headers.get_list("x-bar") == ["two"]


def test_empty_x_echo_set_header_adds_nothing(mesh: Mesh) -> None:
    with mesh.client("HTTP/1.1") as client:
        response = client.get(mesh.url(mesh.basic, "/"), headers={"X-Echo-Set-Header": ""})
    assert response.status_code == 200
    assert sorted(response.headers) == ["content-length", "content-type", "date", "x-content-type-options"]


@pytest.mark.parametrize("proto", PROTOS)
@pytest.mark.parametrize("flavor", ["basic", "advanced"])
def test_delay_query_parameter_delays_the_answer(mesh: Mesh, proto: str, flavor: str) -> None:
    target = mesh.basic if flavor == "basic" else mesh.advanced
    with mesh.client(proto) as client:
        started = time.monotonic()
        response = client.get(mesh.url(target, "/slow?delay=400ms"))
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert 0.4 <= elapsed < 5


def test_basic_invalid_delay_is_a_500_with_go_error_message(mesh: Mesh) -> None:
    with mesh.client("HTTP/1.1") as client:
        response = client.get(mesh.url(mesh.basic, "/?delay=soon"))
    assert response.status_code == 500
    assert response.json() == {"message": 'time: invalid duration "soon"'}


@pytest.mark.parametrize("proto", PROTOS)
@pytest.mark.parametrize("flavor", ["basic", "advanced"])
def test_status_path_answers_that_status_with_an_empty_body(mesh: Mesh, proto: str, flavor: str) -> None:
    target = mesh.basic if flavor == "basic" else mesh.advanced
    with mesh.client(proto) as client:
        response = client.get(mesh.url(target, "/status/503"))
    assert response.status_code == 503
    assert response.content == b""


@pytest.mark.parametrize("flavor", ["basic", "advanced"])
def test_health_answers_ok(mesh: Mesh, flavor: str) -> None:
    target = mesh.basic if flavor == "basic" else mesh.advanced
    with mesh.client("HTTP/1.1") as client:
        response = client.get(mesh.url(target, "/health"))
    assert (response.status_code, response.text) == (200, "OK")


def test_basic_collapses_double_slashes_for_routing_but_reports_the_raw_path(mesh: Mesh) -> None:
    with mesh.client("HTTP/1.1") as client:
        status = client.get(mesh.url(mesh.basic, "//status/418"))
        echo = client.get(mesh.url(mesh.basic, "//a//b"))
    assert status.status_code == 400  # echo-basic's /status/ handler matches the raw RequestURI
    assert echo.json()["path"] == "//a//b"


@pytest.mark.parametrize("proto", PROTOS)
def test_retry_simulator_answers_response_code_until_succeed_after(mesh: Mesh, proto: str) -> None:
    path = f"/retry/x?uuid={uuid.uuid4()}&succeedAfter=2&responseCode=503"
    with mesh.client(proto) as client:
        codes = [client.get(mesh.url(mesh.basic, path)).status_code for _ in range(4)]
        final = client.get(mesh.url(mesh.basic, path)).json()
    assert codes == [503, 503, 200, 200]
    assert final["pod"] == mesh.basic.pod and final["path"] == path


def test_retry_simulator_without_response_code_resets_the_connection(mesh: Mesh) -> None:
    path = f"/retry/x?uuid={uuid.uuid4()}&succeedAfter=2"
    for _ in range(2):
        with mesh.client("HTTP/1.1") as client, pytest.raises(httpx.TransportError):
            client.get(mesh.url(mesh.basic, path))
    with mesh.client("HTTP/1.1") as client:
        assert client.get(mesh.url(mesh.basic, path)).json()["pod"] == mesh.basic.pod


def test_retry_simulator_over_http2_resets_only_the_stream(mesh: Mesh) -> None:
    path = f"/retry/x?uuid={uuid.uuid4()}&succeedAfter=1"
    with mesh.client("HTTP/2.0") as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(mesh.url(mesh.basic, path))
        assert client.get(mesh.url(mesh.basic, path)).json()["proto"] == "HTTP/2.0"


def test_retry_simulator_waits_delay_retry_before_failing(mesh: Mesh) -> None:
    path = f"/retry/x?uuid={uuid.uuid4()}&succeedAfter=1&responseCode=500&delayRetry=300ms"
    with mesh.client("HTTP/1.1") as client:
        started = time.monotonic()
        assert client.get(mesh.url(mesh.basic, path)).status_code == 500
        assert time.monotonic() - started >= 0.3
        assert client.get(mesh.url(mesh.basic, path)).status_code == 200


def test_retry_simulator_requires_a_uuid(mesh: Mesh) -> None:
    with mesh.client("HTTP/1.1") as client:
        response = client.get(mesh.url(mesh.basic, "/retry/x?succeedAfter=1"))
    assert (response.status_code, response.text) == (400, "uuid is required")


# -- advanced flavour (Istio echo Key=Value) ---------------------------------------------------------


@pytest.mark.parametrize("proto", PROTOS)
def test_advanced_echo_writes_istio_key_value_lines(mesh: Mesh, proto: str) -> None:
    port = mesh.advanced.ports[0]
    with mesh.client(proto) as client:
        response = client.get(mesh.url(mesh.advanced, "/v2/example?x=1"),
                              headers=[("x-b", "2"), ("x-a", "1"), ("X-A", "0")])
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/text"
    lines = lines_of(response)
    assert lines[:8] == [
        "ServiceVersion=v2",
        f"ServicePort={port}",
        f"Host={mesh.advanced.address}:{port}",
        "URL=/v2/example?x=1",
        f"Namespace={NAMESPACE}",
        "Method=GET",
        f"Proto={proto}",
        f"IP={mesh.client_ip}",
    ]
    headers = field(lines, "RequestHeader")
    names = [header.split(":", 1)[0] for header in headers]
    assert names == sorted(names)
    assert [header for header in headers if header.startswith("X-")] == ["X-A:1", "X-A:0", "X-B:2"]
    assert not any(name in ("Host", ":authority") for name in names)
    assert lines[-1] == "Hostname=echo-v2-7c9b6d5d8f-q8w7e"


def test_advanced_headers_query_sets_response_headers(mesh: Mesh) -> None:
    with mesh.client("HTTP/1.1") as client:
        response = client.get(mesh.url(mesh.advanced, "/?headers=X-One:1,X-Two:2"))
    assert (response.headers["x-one"], response.headers["x-two"]) == ("1", "2")


@pytest.mark.parametrize("proto", PROTOS)
def test_advanced_codes_query_picks_the_status(mesh: Mesh, proto: str) -> None:
    with mesh.client(proto) as client:
        only = client.get(mesh.url(mesh.advanced, "/?codes=418"))
        weighted = {client.get(mesh.url(mesh.advanced, "/?codes=500:0,201:1")).status_code for _ in range(5)}
    assert only.status_code == 418 and field(lines_of(only), "Hostname") == [mesh.advanced.pod]
    assert weighted == {201}


# -- gRPC ---------------------------------------------------------------------------------------------


def grpc_echo(target: EchoWorkload, port_index: int = 1) -> Callable[..., str]:
    channel = grpc.insecure_channel(f"{target.address}:{target.ports[port_index]}",
                                    options=[("grpc.enable_http_proxy", 0)])
    return channel.unary_unary(
        "/proto.EchoTestService/Echo",
        request_serializer=lambda message: b"\x0a" + bytes([len(message)]) + message.encode(),
        response_deserializer=decode_string_field,
    )


@pytest.mark.parametrize("flavor", ["basic", "advanced"])
def test_grpc_echo_returns_pod_name_and_metadata(mesh: Mesh, flavor: str) -> None:
    target = mesh.basic if flavor == "basic" else mesh.advanced
    reply = grpc_echo(target)("hello grpc", metadata=[("x-request-md", "v1"), ("x-request-md", "v2")], timeout=10)
    lines = reply.splitlines()
    assert field(lines, "Hostname") == [target.pod]
    assert field(lines, "Echo") == ["hello grpc"]
    assert field(lines, "Proto") == ["GRPC"]
    assert field(lines, "ServicePort") == [str(target.ports[1])]
    assert field(lines, "Host") == [f"{target.address}:{target.ports[1]}"]
    headers = field(lines, "RequestHeader")
    assert [h for h in headers if h.startswith("x-request-md:")] == ["x-request-md:v1", "x-request-md:v2"]
    assert not any(h.startswith(("content-type:", "te:")) for h in headers)


def test_grpc_unknown_method_is_unimplemented(mesh: Mesh) -> None:
    channel = grpc.insecure_channel(f"{mesh.advanced.address}:{mesh.advanced.ports[1]}",
                                    options=[("grpc.enable_http_proxy", 0)])
    call = channel.unary_unary("/proto.EchoTestService/Nope", request_serializer=lambda m: m,
                               response_deserializer=lambda m: m)
    with pytest.raises(grpc.RpcError) as error:
        call(b"", timeout=10)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


class H2Client:
    """An HTTP/2 client driven by hand with `h2`, to see frames and windows as the server sends them."""

    def __init__(self, target: EchoWorkload, port_index: int = 0, *, initial_window: int | None = None) -> None:
        self.sock = socket.create_connection((target.address, target.ports[port_index]), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        if initial_window is not None:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: initial_window})
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def events(self, *, quiet: float | None = None) -> list[h2.events.Event]:
        """Events from the next read; [] when nothing arrives within `quiet` seconds."""
        self.sock.settimeout(quiet if quiet is not None else 10)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            if quiet is None:
                raise
            return []
        assert data, "server closed the connection"
        events = self.conn.receive_data(data)
        self.flush()
        return events

    def close(self) -> None:
        self.sock.close()


def test_grpc_call_made_by_hand_has_grpc_framing_and_trailers(mesh: Mesh) -> None:
    client = H2Client(mesh.advanced, port_index=1)
    try:
        authority = f"{mesh.advanced.address}:{mesh.advanced.ports[1]}"
        client.conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", authority),
                                     (":path", "/proto.EchoTestService/Echo"), ("content-type", "application/grpc"),
                                     ("te", "trailers"), ("x-hand", "made")])
        message = b"\x0a\x05hello"
        client.conn.send_data(1, b"\x00" + len(message).to_bytes(4, "big") + message, end_stream=True)
        client.flush()
        headers: dict[str, str] = {}
        trailers: dict[str, str] = {}
        data = b""
        ended = False
        while not ended:
            for event in client.events():
                if isinstance(event, h2.events.ResponseReceived):
                    headers = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    client.conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = dict(event.headers)
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
    finally:
        client.close()
    assert headers[":status"] == "200" and headers["content-type"] == "application/grpc"
    assert trailers["grpc-status"] == "0"
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == len(data) - 5
    lines = decode_string_field(data[5:]).splitlines()
    assert "Hostname=echo-v2-7c9b6d5d8f-q8w7e" in lines and "RequestHeader=x-hand:made" in lines
    assert "Echo=hello" in lines


# -- HTTP/2 mechanics ---------------------------------------------------------------------------------


def test_http2_streams_are_answered_concurrently_on_one_connection(mesh: Mesh) -> None:
    async def burst() -> list[httpx.Response]:
        transport = httpx.AsyncHTTPTransport(http1=False, http2=True, local_address=mesh.client_ip)
        async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=10) as client:
            return list(await asyncio.gather(*(
                client.get(mesh.url(mesh.basic, f"/concurrent/{index}?delay=500ms")) for index in range(20))))

    started = time.monotonic()
    responses = asyncio.run(burst())
    elapsed = time.monotonic() - started
    assert [r.json()["path"] for r in responses] == [f"/concurrent/{i}?delay=500ms" for i in range(20)]
    assert {r.http_version for r in responses} == {"HTTP/2"}
    assert elapsed < 3  # one after another would take 10 s


def test_http2_response_body_respects_the_peer_flow_control_window(mesh: Mesh) -> None:
    client = H2Client(mesh.basic, initial_window=1000)
    try:
        authority = f"{mesh.basic.address}:{mesh.basic.ports[0]}"
        client.conn.send_headers(1, [(":method", "GET"), (":scheme", "http"), (":authority", authority),
                                     (":path", "/big"), ("x-padding", "p" * 20000)], end_stream=True)
        client.flush()
        length = 0
        received = 0
        ended = False
        while (events := client.events(quiet=0.5)):
            for event in events:
                if isinstance(event, h2.events.ResponseReceived):
                    length = int(dict(event.headers)["content-length"])
                elif isinstance(event, h2.events.DataReceived):
                    received += len(event.data)
                ended = ended or isinstance(event, h2.events.StreamEnded)
        assert length > 20000
        assert received == 1000 and not ended  # the server stopped at the window
        client.conn.increment_flow_control_window(length, stream_id=1)
        client.conn.increment_flow_control_window(length)
        client.flush()
        while not ended:
            for event in client.events():
                if isinstance(event, h2.events.DataReceived):
                    received += len(event.data)
                ended = ended or isinstance(event, h2.events.StreamEnded)
        assert received == length
    finally:
        client.close()


def test_h2c_upgrade_from_http1_answers_on_stream_one(mesh: Mesh) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    settings = conn.initiate_upgrade_connection()
    with socket.create_connection((mesh.basic.address, mesh.basic.ports[0]), timeout=10) as sock:
        sock.sendall(b"GET /upgraded HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                     b"Upgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        sock.sendall(conn.data_to_send())
        body = b""
        events = conn.receive_data(rest) if rest else []
        while not any(isinstance(event, h2.events.StreamEnded) for event in events):
            body += b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
            sock.sendall(conn.data_to_send())
            events = conn.receive_data(sock.recv(65536))
        body += b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    document = json.loads(body)
    assert (document["path"], document["proto"], document["host"]) == ("/upgraded", "HTTP/2.0", "echo")


# -- HTTP/1 mechanics and robustness ------------------------------------------------------------------


def raw_exchange(target: EchoWorkload, request: bytes, *, port_index: int = 0) -> bytes:
    """Send bytes, read until the server closes the connection."""
    with socket.create_connection((target.address, target.ports[port_index]), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


@pytest.mark.parametrize("request_bytes", [
    b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",                       # space in the request-target
    b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",          # header line without a colon
    b"GET / HTTP/1.1\r\nBad Name: x\r\nHost: x\r\n\r\n",            # space in a header name
    b"GET / HTTP/1.1\r\n\r\n",                                      # HTTP/1.1 without Host
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",                # two Host headers
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",   # bad Content-Length
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
    b"GET /\r\n\r\n",                                               # HTTP/0.9
], ids=["target", "colon", "name", "no-host", "two-hosts", "content-length", "chunk", "http09"])
def test_malformed_request_gets_400_and_the_connection_closes(mesh: Mesh, request_bytes: bytes) -> None:
    reply = raw_exchange(mesh.basic, request_bytes)
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close" in reply


def test_oversized_request_head_gets_431(mesh: Mesh) -> None:
    reply = raw_exchange(mesh.basic, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 431 ")


def test_server_survives_clients_that_disconnect_mid_request(mesh: Mesh) -> None:
    for partial in (b"GET / HTTP/1.1\r\nHost: x\r\n", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab",
                    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"):
        with socket.create_connection((mesh.basic.address, mesh.basic.ports[0]), timeout=10) as sock:
            sock.sendall(partial)
    for proto in PROTOS:  # and that give up on a delayed answer
        with mesh.client(proto) as client, pytest.raises(httpx.TimeoutException):
            client.get(mesh.url(mesh.basic, "/?delay=1s"), timeout=0.2)
    with mesh.client("HTTP/1.1") as client:
        assert client.get(mesh.url(mesh.basic, "/after")).json()["path"] == "/after"


def test_chunked_body_is_read_and_keep_alive_serves_pipelined_requests(mesh: Mesh) -> None:
    with socket.create_connection((mesh.advanced.address, mesh.advanced.ports[0]), timeout=10) as sock:
        sock.sendall(b"POST /first HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
                     b"GET /second HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    first, second = reply.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert b"URL=/first\n" in first and b"Method=POST\n" in first
    assert b"RequestHeader=Transfer-Encoding" not in first  # Go moves it out of the header map
    assert b"URL=/second\n" in second and b"Connection: close\r\n" in second


def test_content_length_body_is_discarded_and_the_connection_reused(mesh: Mesh) -> None:
    with mesh.client("HTTP/1.1") as client:
        posted = client.post(mesh.url(mesh.basic, "/upload"), content=b"x" * 3_000_000)
        after = client.get(mesh.url(mesh.basic, "/after-upload"))
    assert posted.json()["headers"]["Content-Length"] == ["3000000"]
    assert after.json()["path"] == "/after-upload"


def test_raw_tcp_bytes_are_echoed_until_the_peer_closes(mesh: Mesh) -> None:
    with socket.create_connection((mesh.advanced.address, mesh.advanced.ports[1]), timeout=10) as sock:
        sock.sendall(b"\x00\x01binary hello\n")
        assert sock.recv(100) == b"\x00\x01binary hello\n"
        sock.sendall(b"second message")
        assert sock.recv(100) == b"second message"
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""


def test_raw_tcp_text_without_newline_is_echoed_after_a_short_wait(mesh: Mesh) -> None:
    with socket.create_connection((mesh.basic.address, mesh.basic.ports[1]), timeout=10) as sock:
        sock.sendall(b"hello")
        assert sock.recv(100) == b"hello"


# -- identity, logging, lifecycle ---------------------------------------------------------------------


def test_workloads_on_different_addresses_answer_with_their_own_pod_names(mesh: Mesh) -> None:
    with mesh.client("HTTP/1.1") as client:
        first = client.get(mesh.url(mesh.basic, "/")).json()
        second = client.get(mesh.url(mesh.other, "/")).json()
    assert (first["pod"], first["namespace"]) == ("echo-v1-5d8f7c9b6d-x2kqz", NAMESPACE)
    assert (second["pod"], second["namespace"]) == ("echo-v1-6f7d8c9b5a-m3n4p", "gateway-conformance-mesh-consumer")


@pytest.mark.parametrize("proto", PROTOS)
def test_every_echoed_request_is_logged_with_the_pod_prefix(mesh: Mesh, proto: str) -> None:
    marker = uuid.uuid4().hex
    with mesh.client(proto) as client:
        client.get(mesh.url(mesh.other, f"/mirror?gateway-api-conformance-request-id={marker}"))
    line = wait_for(lambda: [line for line in mesh.log if marker in line])[0]
    assert line.startswith(
        f"[gateway-conformance-mesh-consumer/echo-v1-6f7d8c9b5a-m3n4p] Echoing back request made to "
        f"/mirror?gateway-api-conformance-request-id={marker} to client ({mesh.client_ip}:")
    assert line.endswith(")")


def test_apply_adds_and_removes_workloads_and_keeps_unchanged_ones_serving() -> None:
    loop = LoopThread()
    host = start_host(loop, [])
    kept = workload("kept-1", "basic")
    added = workload("added-1", "advanced")
    try:
        loop.run(host.apply([kept]))
        with socket.create_connection((kept.address, kept.ports[0]), timeout=10) as sock:
            request = f"GET / HTTP/1.1\r\nHost: {kept.address}\r\n\r\n".encode()
            sock.sendall(request)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
            loop.run(host.apply([kept, added]))
            assert host.listening() == sorted([f"{kept.address}:{kept.ports[0]}", f"{added.address}:{added.ports[0]}"])
            sock.sendall(request)  # the same keep-alive connection is still served
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
        with httpx.Client(trust_env=False) as client:
            assert "Hostname=added-1" in client.get(f"http://{added.address}:{added.ports[0]}/").text
            loop.run(host.apply([added]))
            assert host.listening() == [f"{added.address}:{added.ports[0]}"]
            with pytest.raises(httpx.ConnectError):
                client.get(f"http://{kept.address}:{kept.ports[0]}/")
    finally:
        loop.run(host.close())
        loop.stop()


def test_a_port_that_cannot_be_bound_is_reported_and_the_others_serve() -> None:
    loop = LoopThread()
    host = start_host(loop, [])
    good = workload("good-1", "basic")
    blocked_address = unique_address()
    with socket.socket() as squatter:
        squatter.bind((blocked_address, 0))
        squatter.listen()
        blocked_port = squatter.getsockname()[1]
        blocked = EchoWorkload(NAMESPACE, "blocked-1", blocked_address, (blocked_port,), "basic")
        try:
            loop.run(host.apply([good, blocked]))
            assert host.failed() == [f"{blocked_address}:{blocked_port}"]
            assert host.listening() == [f"{good.address}:{good.ports[0]}"]
            (failed_workload, failed_port, reason), = host.failures()
            assert (failed_workload.pod, failed_port) == ("blocked-1", blocked_port) and reason
        finally:
            loop.run(host.close())
            loop.stop()


def write_spec(path: Path, workloads: list[EchoWorkload]) -> None:
    path.write_text(json.dumps({"workloads": [
        {"namespace": w.namespace, "pod": w.pod, "address": w.address, "ports": list(w.ports),
         "flavor": w.flavor, "service_version": w.service_version} for w in workloads]}))


def read_ready(path: Path, generation: int) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return document if document.get("generation") == generation else None

    return wait_for(ready, timeout=20)


def test_program_serves_the_spec_reloads_on_sighup_and_exits_on_sigterm(tmp_path: Path) -> None:
    first = workload("echo-v1-prog-a", "basic")
    second = workload("echo-v2-prog-b", "advanced", version="v2")
    blocked_address = unique_address()
    squatter = socket.socket()
    squatter.bind((blocked_address, 0))
    squatter.listen()
    blocked = EchoWorkload(NAMESPACE, "blocked-prog", blocked_address, (squatter.getsockname()[1],), "basic")
    spec, ready = tmp_path / "spec.json", tmp_path / "ready.json"
    write_spec(spec, [first, blocked])
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(
        [sys.executable, "-m", "waypost.local.echo", "--spec", str(spec), "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )
    try:
        document = read_ready(ready, 1)
        assert document["pid"] == process.pid
        assert document["listening"] == [f"{first.address}:{first.ports[0]}"]
        assert document["failed"] == [f"{blocked.address}:{blocked.ports[0]}"]
        with httpx.Client(trust_env=False, timeout=10) as client:
            assert client.get(f"http://{first.address}:{first.ports[0]}/hello?id=prog").json()["pod"] == first.pod

            write_spec(spec, [second])
            process.send_signal(signal.SIGHUP)
            document = read_ready(ready, 2)
            assert document["listening"] == [f"{second.address}:{second.ports[0]}"] and document["failed"] == []
            reply = client.get(f"http://{second.address}:{second.ports[0]}/").text.splitlines()
            assert "Hostname=echo-v2-prog-b" in reply and "ServiceVersion=v2" in reply
            with pytest.raises(httpx.ConnectError):
                client.get(f"http://{first.address}:{first.ports[0]}/")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        squatter.close()
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert "[gateway-conformance-mesh/echo-v1-prog-a] Echoing back request made to /hello?id=prog to client (" \
        in stdout
    assert "blocked-prog" in stderr and f"{blocked.address}:{blocked.ports[0]}" in stderr


def test_program_rejects_a_bad_spec_with_the_field_named(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"workloads": [{"namespace": "a", "pod": "p", "address": "127.0.0.1",
                                               "ports": [80], "flavor": "fancy"}]}))
    with pytest.raises(ValueError, match=r"workloads\[0\]\.flavor"):
        load_spec(str(spec))
    completed = subprocess.run([sys.executable, "-m", "waypost.local.echo", "--spec", str(spec)],
                               capture_output=True, text=True, timeout=30, cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert completed.returncode == 2 and "flavor" in completed.stderr


# -- pure helpers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("500ms", 0.5), ("1.5h", 5400.0), ("1m30s", 90.0), ("0", 0.0), ("-2s", -2.0), ("250us", 0.00025),
])
def test_go_durations_parse_like_time_parse_duration(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "message"), [
    ("", 'time: invalid duration ""'), ("1", 'time: missing unit in duration "1"'),
    ("3 s", 'time: unknown unit " s" in duration "3 s"'), ("abc", 'time: invalid duration "abc"'),
])
def test_bad_go_durations_fail_with_go_messages(text: str, message: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_go_duration(text)
    assert str(error.value) == message


@pytest.mark.parametrize(("name", "canonical"), [
    ("x-header-add", "X-Header-Add"), ("CONTENT-TYPE", "Content-Type"), ("x_y", "X_y"), ("bad name", "bad name"),
])
def test_header_names_are_canonicalised_like_go(name: str, canonical: str) -> None:
    assert canonical_header_key(name) == canonical


@pytest.mark.parametrize(("data", "kind"), [
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "h2"), (b"PRI * HTTP", None), (b"GET / HTTP/1.1\r\n", "http1"),
    (b"GET / HT", None), (b"\x16\x03\x01", "tcp"), (b"hello world\n", "tcp"), (b"GET /\r\n", "http1"),
])
def test_first_bytes_decide_the_protocol(data: bytes, kind: str | None) -> None:
    assert sniff(data) == kind


def test_echo_messages_round_trip_through_the_protobuf_wire_format() -> None:
    encoded = encode_string_field("héllo")
    assert encoded == b"\x0a\x06h\xc3\xa9llo"
    # unknown fields of every wire type are skipped
    assert decode_string_field(b"\x10\x96\x01" + b"\x19" + b"\x00" * 8 + encoded + b"\x25\x00\x00\x00\x00") == "héllo"
    assert decode_string_field(b"") == ""
