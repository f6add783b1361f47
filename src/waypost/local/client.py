"""Sending a request as a workload of a running local mesh: its address, hence its identity.

The client binds the workload's pod IP as its source address, so the node ztunnel recognises it exactly
as it recognises the pod's own traffic, and dials the destination the URL names. Host names resolve the
way Kubernetes DNS does from the client's namespace.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

import httpx


class RequestError(ValueError):
    pass


@dataclass(frozen=True)
class Response:
    status: int
    http_version: str
    headers: list[tuple[str, str]]
    body: str

    def as_json(self) -> dict[str, Any]:
        grouped: dict[str, list[str]] = {}
        for name, value in self.headers:
            grouped.setdefault(name.lower(), []).append(value)
        return {"status": self.status, "headers": grouped, "body": self.body}


def find_workload(state: dict[str, Any], ref: str) -> dict[str, Any]:
    """`NS/NAME` where NAME is a pod (or WorkloadEntry) name or a Deployment name (its first pod)."""
    if "/" not in ref:
        raise RequestError(f"--from must be NAMESPACE/NAME, got {ref!r}")
    ns, name = ref.split("/", 1)
    workloads = [w for w in state.get("workloads", []) if w["namespace"] == ns]
    for w in workloads:
        if w["pod"] == name:
            return w
    owned = sorted((w for w in workloads if w.get("owner") == name), key=lambda w: w["pod"])
    if owned:
        return owned[0]
    known = ", ".join(sorted({w.get("owner") or w["pod"] for w in workloads})) or "none"
    raise RequestError(f"no workload {ref!r} in the mesh (workloads in {ns}: {known})")


def resolve_host(state: dict[str, Any], host: str, client_namespace: str) -> str:
    """Kubernetes DNS from the client's namespace: svc, svc.ns, svc.ns.svc, svc.ns.svc.cluster.local; or an IP."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    name = host.rstrip(".")
    for s in state.get("services", []):
        if s.get("kind") == "ServiceEntry" and s.get("hostname") == name:
            return s["vip"]  # a ServiceEntry host resolves everywhere, as Istio's DNS proxy answers it
    wildcards = [s for s in state.get("services", []) if s.get("kind") == "ServiceEntry" and (s.get("hostname") or "").startswith("*.")
                 and name.endswith(s["hostname"][1:])]
    if wildcards:  # the most specific wildcard host (*.a.example before *.example)
        return max(wildcards, key=lambda s: len(s["hostname"]))["vip"]
    suffix = ".svc.cluster.local"
    if name.endswith(suffix):
        name = name[: -len(suffix)]
    elif name.endswith(".svc"):
        name = name[: -len(".svc")]
    parts = name.split(".")
    if len(parts) == 1:
        svc, ns = parts[0], client_namespace
    elif len(parts) == 2:
        svc, ns = parts
    else:
        raise RequestError(f"cannot resolve host {host!r}: not a service name of this mesh")
    for s in state.get("services", []):
        if s["namespace"] == ns and s["name"] == svc:
            return s["vip"]
    raise RequestError(f"cannot resolve host {host!r}: no service {ns}/{svc}")



def resolve_url(state: dict[str, Any], source: str, url: str) -> tuple[dict[str, Any], str, SplitResult]:
    """The source workload, the address the URL's host resolves to from it, and the parsed URL."""
    workload = find_workload(state, source)
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http":
        raise RequestError(f"only http:// URLs are supported (got {parts.scheme}://)")
    if not parts.hostname:
        raise RequestError(f"URL {url!r} has no host")
    return workload, resolve_host(state, parts.hostname, workload["namespace"]), parts

def send(
    state: dict[str, Any],
    source: str,
    url: str,
    *,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    body: str | None = None,
    http2: bool = False,
    timeout: float = 30.0,
) -> Response:
    workload, address, parts = resolve_url(state, source, url)
    port = parts.port or 80
    target = urlunsplit(("http", f"{address}:{port}", parts.path or "/", parts.query, ""))
    request_headers = list(headers or [])
    if not any(k.lower() == "host" for k, _ in request_headers):
        request_headers.append(("Host", parts.netloc))
    transport = httpx.HTTPTransport(local_address=workload["address"], http1=not http2, http2=http2, retries=0)
    with httpx.Client(transport=transport, timeout=timeout, follow_redirects=False) as client:
        try:
            r = client.request(method, target, headers=request_headers, content=body)
        except httpx.HTTPError as exc:
            raise RequestError(f"request failed: {type(exc).__name__}: {exc}") from None
        return Response(r.status_code, r.http_version, list(r.headers.multi_items()), r.text)


@dataclass(frozen=True)
class GrpcResponse:
    grpc_status: int
    grpc_message: str
    headers: list[tuple[str, str]]
    trailers: list[tuple[str, str]]
    message: str  # the response's string field 1 (the echo app's Key=Value text)

    def as_json(self) -> dict[str, Any]:
        grouped: dict[str, list[str]] = {}
        for name, value in self.headers + self.trailers:
            grouped.setdefault(name.lower(), []).append(value)
        # Like Istio's echo client: gRPC OK is reported as status 200.
        return {"status": 200 if self.grpc_status == 0 else self.grpc_status, "grpc_status": self.grpc_status, "headers": grouped, "body": self.message}


def _pb_string_field(text: str) -> bytes:
    data = text.encode()
    length = len(data)
    varint = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            break
    return b"\x0a" + bytes(varint) + data


def _pb_first_string(data: bytes) -> str:
    pos = 0
    while pos < len(data):
        key = data[pos]
        pos += 1
        shift = length = 0
        while True:
            b = data[pos]
            pos += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if key == 0x0A:
            return data[pos : pos + length].decode(errors="replace")
        pos += length
    return ""


def send_grpc(
    state: dict[str, Any],
    source: str,
    target: str,
    method: str = "/proto.EchoTestService/Echo",
    *,
    metadata: list[tuple[str, str]] | None = None,
    message: str = "",
    timeout: float = 10.0,
) -> GrpcResponse:
    """One unary gRPC call (h2c, prior knowledge) from a workload to `host[:port]`.

    The request and response have one string field (Istio's echo proto); grpcio cannot bind a source
    address, so this speaks HTTP/2 with the `h2` library over a socket bound to the workload's IP.
    """
    import socket

    import h2.config
    import h2.connection
    import h2.events

    workload = find_workload(state, source)
    host, _, port_text = target.partition(":")
    address = resolve_host(state, host, workload["namespace"])
    port = int(port_text or 80)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.bind((workload["address"], 0))
        sock.connect((address, port))
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"), (":scheme", "http"), (":authority", target), (":path", method),
            ("content-type", "application/grpc"), ("te", "trailers"),
        ] + [(k.lower(), v) for k, v in (metadata or [])]
        body = _pb_string_field(message)
        conn.send_headers(stream, headers)
        conn.send_data(stream, b"\x00" + len(body).to_bytes(4, "big") + body, end_stream=True)
        sock.sendall(conn.data_to_send())
        response_headers: list[tuple[str, str]] = []
        trailers: list[tuple[str, str]] = []
        data = b""
        done = False
        while not done:
            chunk = sock.recv(65535)
            if not chunk:
                raise RequestError("connection closed before the call completed")
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    response_headers = [(str(k), str(v)) for k, v in event.headers]
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = [(str(k), str(v)) for k, v in event.headers]
                elif isinstance(event, h2.events.StreamEnded):
                    done = True
                elif isinstance(event, h2.events.StreamReset):
                    raise RequestError(f"stream reset by peer (error code {event.error_code})")
            sock.sendall(conn.data_to_send())
    except OSError as exc:
        raise RequestError(f"gRPC call failed: {exc}") from None
    finally:
        sock.close()
    fields = dict(trailers) if trailers else dict(response_headers)  # trailers-only responses carry status in headers
    status = int(fields.get("grpc-status", "2"))
    text = _pb_first_string(data[5:]) if len(data) >= 5 else ""
    return GrpcResponse(status, fields.get("grpc-message", ""), response_headers, trailers, text)
