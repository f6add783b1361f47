"""End to end: real Envoy ztunnel and waypoint, real echo workloads, real HTTP on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO

from tests.manifests import ambient_namespace, client, waypoint

pytestmark = pytest.mark.e2e

QUICKSTART = REPO / "examples" / "quickstart"

# One ambient namespace with a waypoint; Services with, without, and with a bogus waypoint.
MESH = (
    ambient_namespace("shop")
    + waypoint("shop")
    + client("shop", image="curlimages/curl", service_account="client")
    + """
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
      - name: echo
        image: registry.k8s.io/gateway-api/echo-basic:v1.0.0
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: shop}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: routed, namespace: shop, labels: {istio.io/use-waypoint: waypoint}}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 8000, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: bogus, namespace: shop, labels: {istio.io/use-waypoint: no-such-waypoint}}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
"""
)


def echo_body(response) -> dict:
    assert response.status == 200, response
    return json.loads(response.body)


def saw_request_id(response) -> bool:
    return "X-Request-Id" in echo_body(response)["headers"]


@pytest.fixture
def shop(start_mesh):
    return start_mesh(MESH, name="shop")


def test_service_without_waypoint_is_l4_only(shop):
    body = echo_body(shop.request("shop/client", "http://plain/"))
    assert body["pod"].startswith("echo-")
    assert "X-Request-Id" not in body["headers"]  # nothing parsed HTTP on the way


def test_service_with_waypoint_is_processed_at_l7(shop):
    response = shop.request("shop/client", "http://routed:8000/hello")
    body = echo_body(response)
    assert "X-Request-Id" in body["headers"]
    assert body["path"] == "/hello"
    assert body["namespace"] == "shop"


def test_waypoint_balances_per_request_over_endpoints(shop):
    pods = {echo_body(shop.request("shop/client", "http://routed.shop:8000/", http2=True))["pod"] for _ in range(20)}
    assert pods == {p["pod"] for p in shop.pods("shop", "echo")}


def test_pod_ip_traffic_skips_a_service_waypoint(shop):
    pod = shop.pods("shop", "echo")[0]
    body = echo_body(shop.request("shop/client", f"http://{pod['address']}:8080/"))
    assert body["pod"] == pod["pod"]
    assert "X-Request-Id" not in body["headers"]


def test_not_ready_waypoint_leaves_traffic_flowing_l4(shop):
    assert not saw_request_id(shop.request("shop/client", "http://bogus/"))
    bound = next(c for c in shop.state["conditions"] if c["kind"] == "Service" and c["name"] == "bogus")
    assert bound["conditions"][0]["reason"] == "WaypointIsNotReady"
    assert shop.service("shop", "bogus")["waypoint"] is None


def test_httproute_splits_quickstart_by_path(start_mesh):
    mesh = start_mesh(QUICKSTART, name="quickstart")
    assert echo_body(mesh.request("quickstart/client", "http://echo/v1"))["pod"].startswith("echo-v1-")
    assert echo_body(mesh.request("quickstart/client", "http://echo/v2"))["pod"].startswith("echo-v2-")
    assert echo_body(mesh.request("quickstart/client", "http://echo/v2/deeper"))["pod"].startswith("echo-v2-")
    # PathPrefix matches whole segments: /v2example is not under /v2.
    assert echo_body(mesh.request("quickstart/client", "http://echo/v2example"))["pod"].startswith("echo-v1-")
    assert saw_request_id(mesh.request("quickstart/client", "http://echo.quickstart.svc.cluster.local/v2"))


def test_cli_request_prints_curl_style_and_json(start_mesh):
    mesh = start_mesh(QUICKSTART, name="cli")
    text = mesh.cli("request", "--from", "quickstart/client", "http://echo/v2").stdout
    assert text.startswith("HTTP/1.1 200")
    assert '"pod": "echo-v2-' in text
    parsed = json.loads(mesh.cli("request", "--from", "quickstart/client", "-H", "X-Test: 1", "-o", "json", "http://echo/v1").stdout)
    assert parsed["status"] == 200
    assert json.loads(parsed["body"])["headers"]["X-Test"] == ["1"]
    status = json.loads(mesh.cli("status", "-o", "json").stdout)
    assert {p["kind"] for p in status["proxies"]} == {"ztunnel", "waypoint"}
    assert all(p["ready"] for p in status["proxies"])
    assert status["control_plane"]["pid"] > 0


def test_workload_waypoint_serves_pod_addressed_traffic(start_mesh):
    mesh = start_mesh(
        MESH
        + """
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: pod-waypoint, namespace: shop, labels: {istio.io/waypoint-for: workload}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: lonely, namespace: shop, labels: {app: lonely, istio.io/use-waypoint: pod-waypoint}}
spec:
  containers:
  - name: echo
    image: waypost/echo
    ports: [{name: http, containerPort: 9000}]
""",
        name="workload-waypoint",
    )
    lonely = next(w for w in mesh.state["workloads"] if w["pod"] == "lonely")
    assert lonely["waypoint"] == "shop/pod-waypoint"
    assert saw_request_id(mesh.request("shop/client", f"http://{lonely['address']}:9000/"))


def test_two_meshes_run_side_by_side_and_down_leaves_nothing(start_mesh):
    first = start_mesh(QUICKSTART, name="one")
    second = start_mesh(QUICKSTART, name="two")
    assert first.state["block"] != second.state["block"]
    for mesh in (first, second):
        assert echo_body(mesh.request("quickstart/client", "http://echo/v2"))["pod"].startswith("echo-v2-")
    pids = [first.state["control_plane"]["pid"], *(p["pid"] for p in first.state["proxies"]), first.state["workloads_process"]["pid"]]
    first.cli("down")
    from waypost.local.state import pid_alive

    assert not [pid for pid in pids if pid_alive(pid)]
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if _mentions(p, str(first.state_dir))]
    # The other mesh is untouched.
    assert echo_body(second.request("quickstart/client", "http://echo/v1"))["pod"].startswith("echo-v1-")


def _mentions(cmdline: Path, text: str) -> bool:
    try:
        return text in cmdline.read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_foreground_up_stops_everything_on_ctrl_c(tmp_path):
    import signal
    import subprocess
    import time

    from tests.conftest import WAYPOST
    from waypost.local.state import pid_alive

    state_dir = tmp_path / "fg"
    proc = subprocess.Popen([*WAYPOST, "up", "-f", str(QUICKSTART), "--state-dir", str(state_dir)], stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        while "mesh is ready" not in "".join(lines):
            line = proc.stdout.readline()
            assert line, "up exited before the mesh was ready"
            lines.append(line)
        state = json.loads((state_dir / "state.json").read_text())
        children = [p["pid"] for p in state["proxies"]] + [state["workloads_process"]["pid"]]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        deadline = time.monotonic() + 5
        while any(pid_alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in children if pid_alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_get_shows_resources_with_computed_status(start_mesh):
    import yaml

    mesh = start_mesh(QUICKSTART, name="get")
    route = yaml.safe_load(mesh.cli("get", "httproute", "echo-split", "-n", "quickstart", "-o", "yaml").stdout)
    (parent,) = route["status"]["parents"]
    assert parent["parentRef"] == {"group": "", "kind": "Service", "namespace": "quickstart", "name": "echo", "port": 80}
    assert {c["type"]: c["status"] for c in parent["conditions"]} == {"Accepted": "True", "ResolvedRefs": "True", "ResolvedWaypoints": "True"}
    assert all(c["observedGeneration"] == 1 and c["lastTransitionTime"] for c in parent["conditions"])
    gateways = mesh.cli("get", "gateway", "-A").stdout.splitlines()
    assert gateways[0].split() == ["NAMESPACE", "NAME", "CLASS", "ADDRESS", "PROGRAMMED", "AGE"]
    assert gateways[1].split()[:5] == ["quickstart", "waypoint", "istio-waypoint", mesh.state["waypoints"][0]["address"], "True"]
    service = yaml.safe_load(mesh.cli("get", "svc", "echo", "-n", "quickstart", "-o", "yaml").stdout)
    assert service["spec"]["clusterIP"] == mesh.service("quickstart", "echo")["vip"]
    assert service["status"]["conditions"][0]["reason"] == "WaypointAccepted"
    assert "istio-waypoint" in mesh.cli("get", "gatewayclass").stdout
    assert mesh.cli("get", "httproute", "nope", "-n", "quickstart", check=False).returncode != 0


def test_proxy_config_shows_what_the_envoys_run(start_mesh):
    mesh = start_mesh(QUICKSTART, name="pc")
    routes = mesh.cli("proxy-config", "route", "waypoint").stdout.splitlines()
    assert routes[0].split()[:3] == ["NAME", "VHOST", "NAME"]
    assert any("echo.quickstart.svc.cluster.local:80" in line and "path_separated_prefix: /v2" in line for line in routes)
    clusters = mesh.cli("proxy-config", "cluster", "waypoint").stdout
    assert "echo-v2.quickstart.svc.cluster.local   80" in clusters
    secrets = mesh.cli("proxy-config", "secret", "ztunnel~node-0").stdout
    assert "spiffe://cluster.local/ns/quickstart/sa/client" in secrets and "ROOTCA" in secrets
    listeners = json.loads(mesh.cli("proxy-config", "listener", "waypoint", "-o", "json").stdout)
    assert {l["name"] for l in listeners} >= {"connect_terminate", "main_internal"}
