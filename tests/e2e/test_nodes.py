"""Pods on two nodes: each node gets its own ztunnel, which terminates HBONE for its own pods.

`spec.nodeName` in a pod template places the pods (as the scheduler would). The first node's ztunnel
captures every client's outbound traffic (loopback has one capture point); the inbound hop, its L4
policy and its destination metrics belong to the destination pod's node.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from waypost.local.client import RequestError

from tests.e2e.test_authorization import policy
from tests.manifests import ambient_namespace, client, echo_service, waypoint

pytestmark = pytest.mark.e2e

MESH = (
    ambient_namespace("nodes")
    + waypoint("nodes")
    + client("nodes", service_account="client")
    + echo_service("nodes", "far", app="far", node="node-1")
    + """
---
apiVersion: v1
kind: Service
metadata: {name: far-l7, namespace: nodes, labels: {istio.io/use-waypoint: waypoint}}
spec:
  selector: {app: far}
  ports: [{name: http, port: 80, targetPort: 8080}]
"""
)

# L4 policy for the far pods: only the waypoint may reach them (a selector policy: the destination ztunnel's).
ONLY_WAYPOINT = policy("only-waypoint", "selector: {matchLabels: {app: far}}\naction: ALLOW\n"
                       "rules: [{from: [{source: {principals: [cluster.local/ns/nodes/sa/waypoint]}}]}]", ns="nodes")


@pytest.fixture(scope="module")
def mesh(start_mesh_module):
    return start_mesh_module(MESH, name="nodes")


def proxy(mesh, name: str) -> dict:
    return next(p for p in mesh.state["proxies"] if p["name"] == name)


def inbound_connections(mesh, node: str) -> float:
    """Connections the node's ztunnel counted as the destination (reporter=destination) for the far pod."""
    text = urllib.request.urlopen(proxy(mesh, f"ztunnel~{node}")["metrics"], timeout=5).read().decode()
    return sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples
        if s.name == "istio_tcp_connections_opened_total" and s.labels.get("reporter") == "destination"
        and s.labels.get("destination_workload") == "far"
    )


def test_each_node_runs_a_ztunnel_and_pods_show_their_node(mesh):
    status = json.loads(mesh.cli("status", "-o", "json").stdout)
    ztunnels = sorted(p["name"] for p in status["proxies"] if p["kind"] == "ztunnel")
    assert ztunnels == ["ztunnel~node-0", "ztunnel~node-1"]
    assert all(p["ready"] for p in status["proxies"])
    addresses = {p["name"]: p["address"] for p in status["proxies"]}
    assert addresses["ztunnel~node-0"] != addresses["ztunnel~node-1"]
    rows = {line.split()[0]: line.split() for line in mesh.cli("get", "pods", "-n", "nodes", "-o", "wide").stdout.splitlines()[1:]}
    far = next(r for name, r in rows.items() if name.startswith("far-"))
    near = next(r for name, r in rows.items() if name.startswith("client-"))
    assert "node-1" in far and "node-0" in near


def test_the_far_node_terminates_hbone_for_its_pod(mesh):
    before = {node: inbound_connections(mesh, node) for node in ("node-0", "node-1")}
    response = mesh.request("nodes/client", "http://far/")
    assert response.status == 200 and json.loads(response.body)["pod"].startswith("far-")
    through_waypoint = mesh.request("nodes/client", "http://far-l7/")
    assert through_waypoint.status == 200 and "X-Request-Id" in json.loads(through_waypoint.body)["headers"]
    after = {node: inbound_connections(mesh, node) for node in ("node-0", "node-1")}
    assert after["node-1"] >= before["node-1"] + 2  # both connections ended at node-1's ztunnel
    assert after["node-0"] == before["node-0"] == 0  # node-0 holds no inbound for the far pod


def test_the_far_nodes_ztunnel_enforces_the_pods_l4_policy(mesh):
    path = mesh.state_dir / "only-waypoint.yaml"
    path.write_text(ONLY_WAYPOINT)
    mesh.cli("apply", "-f", str(path))
    try:
        assert mesh.request("nodes/client", "http://far-l7/").status == 200  # the waypoint's identity is allowed
        # the client's own identity is not: node-1's ztunnel closes it, and the client gets no answer (an EOF:
        # tunnels pass an upstream reset on as a close, see envoy.bootstrap.RUNTIME; Istio's tests accept both)
        with pytest.raises(RequestError, match="reset|disconnected without sending a response"):
            mesh.request("nodes/client", "http://far/")
        check = mesh.cli("x", "authz", "check", "--from", "nodes/client", "http://far/").stdout
        assert "destination ztunnel (ztunnel~node-1)" in check and "DENIED" in check.upper()
    finally:
        mesh.cli("delete", "-f", str(path))
