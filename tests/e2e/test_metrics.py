"""Istio's traffic metrics from real traffic, scraped and parsed with the Prometheus parser."""

from __future__ import annotations

import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from waypost.local.metrics import fetch, merge

from .test_authorization import base, policy

pytestmark = pytest.mark.e2e

ROUTE = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: svc, port: 80}]
  rules:
  - matches: [{path: {value: /ok}}, {path: {value: /denied}}]
    backendRefs: [{name: svc, port: 80}]
  - matches: [{path: {value: /dead}}]
    backendRefs: [{name: empty, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: app}
spec:
  selector: {app: nothing-here}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: raw, namespace: app}
spec:
  selector: {app: backend}
  ports: [{name: tcp, port: 9000}]
"""
DENY = policy("deny", "targetRefs: [{kind: Service, group: '', name: svc}]\naction: DENY\nrules: [{to: [{operation: {paths: [/denied]}}]}]")


def samples(text: str, name: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def proxy_admin(mesh, kind: str) -> str:
    return next(p["admin"] for p in mesh.state["proxies"] if p["kind"] == kind)


def test_waypoint_request_metrics_count_each_outcome_with_istio_labels(start_mesh):
    mesh = start_mesh(base() + ROUTE + DENY)
    started = time.monotonic()
    outcomes = {}
    for path, n in (("/ok", 3), ("/denied", 2), ("/dead", 1), ("/unmatched", 1)):
        for _ in range(n):
            outcomes[path] = mesh.request("app/client", f"http://svc{path}").status
    elapsed_ms = (time.monotonic() - started) * 1000
    assert outcomes == {"/ok": 200, "/denied": 403, "/dead": 503, "/unmatched": 404}
    deadline = time.monotonic() + 10
    while True:
        text = fetch(proxy_admin(mesh, "waypoint"))
        durations = samples(text, "istio_request_duration_milliseconds_count")
        if sum(s.value for s in durations) >= 7 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    counts = {(s.labels["response_code"], s.labels["response_flags"]): s.value for s in samples(text, "istio_requests_total")}
    assert counts == {("200", "-"): 3, ("403", "-"): 2, ("503", "UH"): 1, ("404", "NR"): 1}, counts
    ok = next(s for s in samples(text, "istio_requests_total") if s.labels["response_code"] == "200")
    backend = mesh.pods("app", "backend")[0]
    assert ok.labels == {
        "reporter": "waypoint",
        "source_workload": "client",
        "source_canonical_service": "client",
        "source_canonical_revision": "latest",
        "source_workload_namespace": "app",
        "source_principal": "spiffe://cluster.local/ns/app/sa/client",
        "source_app": "client",
        "source_version": "unknown",
        "source_cluster": "Kubernetes",
        "destination_workload": "backend",
        "destination_workload_namespace": "app",
        "destination_principal": backend["identity"],
        "destination_app": "backend",
        "destination_version": "unknown",
        "destination_service": "svc.app.svc.cluster.local",
        "destination_canonical_service": "backend",
        "destination_canonical_revision": "latest",
        "destination_service_name": "svc",
        "destination_service_namespace": "app",
        "destination_cluster": "Kubernetes",
        "request_protocol": "http",
        "response_code": "200",
        "response_flags": "-",
        "connection_security_policy": "mutual_tls",
    }
    total = sum(s.value for s in samples(text, "istio_request_duration_milliseconds_sum"))
    assert 0 < total <= elapsed_ms  # the proxy's view of each request fits in the client's
    # No endpoint was chosen for the denied, unroutable and endpoint-less requests: Istio's waypoint writes
    # `unknown` for every label of the destination workload; the service labels stay.
    destination_workload_labels = (
        "destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
        "destination_version", "destination_canonical_service", "destination_canonical_revision", "destination_cluster",
    )
    for s in samples(text, "istio_requests_total"):
        if s.labels["response_code"] == "200":
            continue
        assert {k: s.labels[k] for k in destination_workload_labels} == dict.fromkeys(destination_workload_labels, "unknown"), s.labels
        assert (s.labels["destination_service_name"], s.labels["source_workload"]) == ("svc", "client")
    # Plain HTTP gets no gRPC message series.
    assert not samples(text, "istio_request_messages_total") and not samples(text, "istio_response_messages_total")


def test_ztunnel_tcp_byte_counters_match_what_the_client_sent(start_mesh):
    mesh = start_mesh(base() + ROUTE)
    client = mesh.pods("app", "client")[0]["address"]
    payload = b"x" * 12345
    with socket.socket() as sock:
        sock.settimeout(5)
        sock.bind((client, 0))
        sock.connect((mesh.service("app", "raw")["vip"], 9000))
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload):
            received += sock.recv(65536)
    assert received == payload  # raw TCP echo
    deadline = time.monotonic() + 10
    while True:
        text = fetch(proxy_admin(mesh, "ztunnel"))
        closed = [s for s in samples(text, "istio_tcp_connections_closed_total") if s.labels["destination_workload"] == "backend"]
        if closed or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    labels = {"reporter": "destination", "source_workload": "client"}

    def value(name: str) -> float:
        return sum(s.value for s in samples(text, name) if all(s.labels.get(k) == v for k, v in labels.items()) and s.labels["destination_workload"] == "backend")

    assert value("istio_tcp_connections_opened_total") == 1
    assert value("istio_tcp_connections_closed_total") == 1
    assert value("istio_tcp_received_bytes_total") == len(payload)
    assert value("istio_tcp_sent_bytes_total") == len(payload)


def test_merge_labels_samples_with_their_proxy():
    a = "# TYPE istio_requests_total counter\nistio_requests_total{reporter=\"waypoint\"} 3\n"
    b = "# TYPE istio_requests_total counter\nistio_requests_total{reporter=\"destination\"} 1\n"
    merged = merge([("wp", a), ("zt", b)])
    got = {(s.labels["proxy"], s.labels["reporter"]): s.value for s in samples(merged, "istio_requests_total")}
    assert got == {("wp", "waypoint"): 3, ("zt", "destination"): 1}


def test_scrape_endpoints_cli_metrics_and_deny_reason_in_access_log(start_mesh):
    import urllib.request

    mesh = start_mesh(base() + ROUTE + DENY, name="endpoints")
    assert mesh.request("app/client", "http://svc/denied").status == 403
    assert mesh.request("app/client", "http://svc/ok").status == 200
    waypoint = next(p for p in mesh.state["proxies"] if p["kind"] == "waypoint")
    assert waypoint["metrics"] == f"http://{waypoint['address']}:15020/stats/prometheus"
    deadline = time.monotonic() + 10
    while True:
        own = urllib.request.urlopen(waypoint["metrics"], timeout=5).read().decode()
        merged = urllib.request.urlopen(mesh.state["metrics"], timeout=5).read().decode()
        if len(samples(own, "istio_requests_total")) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert {s.labels["response_code"] for s in samples(own, "istio_requests_total")} == {"200", "403"}
    assert {s.labels["proxy"] for s in samples(merged, "istio_requests_total")} == {waypoint["name"]}
    assert samples(mesh.cli("metrics").stdout, "istio_requests_total")
    deadline = time.monotonic() + 10
    while True:
        lines = mesh.cli("logs", waypoint["name"]).stdout.splitlines()
        denied = [line for line in lines if '"GET /denied' in line]
        if denied or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert denied and denied[0].endswith("# denied by AuthorizationPolicy app/deny, rule 0"), lines


def grpc_messages(mesh, source: str, service: str, messages: int) -> tuple[int, int]:
    """One call carrying `messages` request messages (h2c, as send_grpc); → (grpc-status, response messages)."""
    import h2.config
    import h2.connection
    import h2.events

    from waypost.local.client import find_workload
    from waypost.local.echo_grpc import ECHO_PATH, encode_string_field, frame, unframe

    workload = find_workload(mesh.state, source)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    with socket.socket() as sock:
        sock.settimeout(10)
        sock.bind((workload["address"], 0))
        sock.connect((mesh.service(workload["namespace"], service)["vip"], 7070))
        conn.initiate_connection()
        headers = [(":method", "POST"), (":scheme", "http"), (":authority", f"{service}:7070"), (":path", ECHO_PATH),
                   ("content-type", "application/grpc"), ("te", "trailers")]
        conn.send_headers(1, headers)
        conn.send_data(1, b"".join(frame(encode_string_field(f"m{i}")) for i in range(messages)), end_stream=True)
        sock.sendall(conn.data_to_send())
        body, fields, done = b"", {}, False
        while not done:
            chunk = sock.recv(65535)
            assert chunk, "connection closed before the call completed"
            for event in conn.receive_data(chunk):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    fields.update((str(k), str(v)) for k, v in event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    done = True
            sock.sendall(conn.data_to_send())
    return int(fields["grpc-status"]), len(unframe(body))


def test_grpc_calls_carry_protocol_grpc_status_and_message_counts(start_mesh):
    from waypost.local.client import send_grpc

    from .test_grpcroute import MESH as GRPC_MESH

    mesh = start_mesh(GRPC_MESH, name="grpc-metrics")
    for _ in range(3):
        assert send_grpc(mesh.state, "g/client", "echo:7070").grpc_status == 0
    # Three messages on the unary method: the echo server refuses the call (INTERNAL) and sends none back.
    assert grpc_messages(mesh, "g/client", "echo", 3) == (13, 0)
    admin = proxy_admin(mesh, "waypoint")
    deadline = time.monotonic() + 10
    while True:
        text = fetch(admin)
        requests = [s for s in samples(text, "istio_requests_total") if s.labels["destination_service_name"] == "echo"]
        if sum(s.value for s in requests) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    by_status = {s.labels["grpc_response_status"]: s for s in requests}
    assert {k: s.value for k, s in by_status.items()} == {"0": 3, "13": 1}
    assert by_status["0"].labels["request_protocol"] == "grpc"
    # The message counters carry istio_requests_total's labels and count what crossed the waypoint.
    for status, sent, received in (("0", 3, 3), ("13", 3, 0)):
        labels = by_status[status].labels
        got = [
            next(s.value for s in samples(text, name) if s.labels == labels)
            for name in ("istio_request_messages_total", "istio_response_messages_total")
        ]
        assert got == [sent, received], (status, got)
