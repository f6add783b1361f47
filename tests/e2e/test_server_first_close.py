"""A server that answers and closes at once (HTTP/1.0 without Content-Length, a banner then close): the client
must get the whole answer, on the L4 path, on a TCP port through the waypoint and over HTTP through it.

This lost the answer before (bench/RESULTS.md, reading item 11): the CONNECT stream of such a connection
ends with END_STREAM and then a reset (RST_STREAM NO_ERROR), the source side's tunnel (the `originate`
internal listener in the ztunnel, `connect_originate` in the waypoint) turned that reset into a reset of
its downstream, and the tcp_proxy in front of it reset the client's connection with the answer unsent.
The bootstrap's runtime (`envoy.bootstrap.RUNTIME`) turns
`propagate_upstream_rst_through_tunneled_tcp_proxy` off. Each case runs five times: the waypoint case was a
race.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

import pytest

from tests.e2e.servers import serving
from tests.manifests import ambient_with_waypoint

pytestmark = pytest.mark.e2e

PORT = 9000
BODY = "".join(f"line {i} of an answer sent before the server closes\n" for i in range(60))
ANSWER = ("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n" + BODY).encode()


def _service(name: str, port_name: str, waypoint: bool) -> str:
    labels = ", labels: {istio.io/use-waypoint: waypoint}" if waypoint else ""
    return (f"\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: closing{labels}}}\n"
            f"spec: {{selector: {{app: closer}}, ports: [{{name: {port_name}, port: 80, targetPort: {PORT}}}]}}\n")


# The backend is a pod whose image is not the built-in echo, so nothing listens for it: the test serves
# its application address itself.
MESH = (
    ambient_with_waypoint("closing", namespace_uses_waypoint=False)
    + "\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: closer, namespace: closing}\nspec:\n"
    "  selector: {matchLabels: {app: closer}}\n"
    f"  template: {{metadata: {{labels: {{app: closer}}}}, spec: {{containers: [{{name: c, image: example/closer, ports: [{{containerPort: {PORT}}}]}}]}}}}\n"
    + _service("plain", "tcp", waypoint=False)  # ztunnel → ztunnel (L4)
    + _service("tcp-via-waypoint", "tcp", waypoint=True)  # a TCP port through the waypoint
    + _service("http-via-waypoint", "http", waypoint=True)  # HTTP through the waypoint
)


class _AnswerAndClose(BaseHTTPRequestHandler):
    """Writes the whole answer, then the connection closes (HTTP/1.0, no Content-Length)."""

    def do_GET(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's name
        self.wfile.write(ANSWER)
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def mesh(start_mesh_module):
    mesh = start_mesh_module(MESH, name="closing")
    (pod,) = mesh.pods("closing", "closer")
    with serving(pod["app_address"], PORT, _AnswerAndClose):
        yield mesh


def _fetch(mesh, service: str):
    return mesh.request("closing/client", f"http://{service}.closing.svc.cluster.local/", timeout=10)


def test_http_through_the_waypoint_gets_the_whole_answer(mesh):
    r = _fetch(mesh, "http-via-waypoint")
    assert r.status == 200 and r.body == BODY


def test_a_tcp_port_through_the_waypoint_gets_the_whole_answer(mesh):
    for _ in range(5):
        r = _fetch(mesh, "tcp-via-waypoint")
        assert r.status == 200 and r.body == BODY


def test_the_l4_path_gets_the_whole_answer(mesh):
    for _ in range(5):
        r = _fetch(mesh, "plain")
        assert r.status == 200 and r.body == BODY


def test_the_mesh_is_what_this_module_means(mesh):
    """The backend is a captured pod (HBONE to its ztunnel), and only the two *-via-waypoint Services use it."""
    (pod,) = mesh.pods("closing", "closer")
    assert pod["captured"] and pod["app_address"] != pod["address"]
    waypoints = {s["name"]: s["waypoint"] for s in mesh.state["services"] if s["namespace"] == "closing"}
    assert waypoints == {"plain": None, "tcp-via-waypoint": "closing/waypoint", "http-via-waypoint": "closing/waypoint"}, json.dumps(waypoints)
