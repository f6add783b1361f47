"""Live configuration of a running mesh: `apply`, `delete`, editing the watched manifests, `describe`.

Real Envoy, real echo workloads, real traffic. Each test starts its own mesh from the quickstart.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from waypost.local.state import pid_alive

pytestmark = pytest.mark.e2e

QUICKSTART = REPO / "examples" / "quickstart"

# echo-split with its two rules swapped: everything but /v1 goes to echo-v2.
SWAPPED_ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-split, namespace: quickstart}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v1}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - backendRefs: [{name: echo-v2, port: 80}]
"""

BAD_ROUTE = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken, namespace: quickstart}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{path: {type: Bogus, value: /}}]
"""

NEW_APP = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo-v3, namespace: quickstart}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo-v3}}
  template:
    metadata: {labels: {app: echo-v3}}
    spec:
      containers: [{name: echo, image: waypost/echo, ports: [{name: http, containerPort: 9090}]}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-v3, namespace: quickstart}
spec:
  selector: {app: echo-v3}
  ports: [{name: http, port: 8080, targetPort: 9090}]
"""

SECOND_WAYPOINT = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: second, namespace: quickstart}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""

ECHO_V1_SERVICE = """
apiVersion: v1
kind: Service
metadata: {{name: echo-v1, namespace: quickstart{labels}}}
spec:
  selector: {{app: echo, version: v1}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"""


def manifest(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def pod_of(mesh, url: str, **kwargs) -> str:
    response = mesh.request("quickstart/client", url, **kwargs)
    assert response.status == 200, response
    return json.loads(response.body)["pod"]


def went_through_waypoint(mesh, url: str) -> bool:
    response = mesh.request("quickstart/client", url)
    assert response.status == 200, response
    return "X-Request-Id" in json.loads(response.body)["headers"]


def proxy(state: dict, name: str) -> dict:
    return next(p for p in state["proxies"] if p["name"] == name)


def test_applied_route_changes_traffic_and_only_the_waypoint_gets_a_new_version(start_mesh, tmp_path):
    mesh = start_mesh(QUICKSTART, name="apply-route")
    before = mesh.state
    assert pod_of(mesh, "http://echo/other").startswith("echo-v1-")

    started = time.monotonic()
    out = mesh.cli("apply", "-f", manifest(tmp_path, "route.yaml", SWAPPED_ROUTE)).stdout
    print(f"apply → ACK of a route change: {(time.monotonic() - started) * 1000:.0f} ms (CLI wall time)")
    assert out.splitlines() == ["httproute.gateway.networking.k8s.io/echo-split configured"]

    # Enforced as soon as apply returns: no polling.
    assert pod_of(mesh, "http://echo/other").startswith("echo-v2-")
    assert pod_of(mesh, "http://echo/v1").startswith("echo-v1-")
    after = mesh.state
    assert (before["config_generation"], after["config_generation"], after["phase"]) == (1, 2, "ready")
    waypoint, ztunnel = "waypoint~quickstart~waypoint", "ztunnel~node-0"
    assert proxy(after, waypoint)["version"] == 2
    assert proxy(after, waypoint)["xds_versions"]["RouteConfiguration"] != proxy(before, waypoint)["xds_versions"]["RouteConfiguration"]
    assert proxy(after, ztunnel)["version"] == 1
    assert proxy(after, ztunnel)["xds_versions"] == proxy(before, ztunnel)["xds_versions"]
    assert proxy(after, ztunnel)["pid"] == proxy(before, ztunnel)["pid"]

    again = mesh.cli("apply", "-f", str(tmp_path / "route.yaml")).stdout
    assert again.splitlines() == ["httproute.gateway.networking.k8s.io/echo-split unchanged"]
    assert mesh.state["config_generation"] == 2


def test_invalid_apply_is_rejected_with_its_location_and_changes_nothing(start_mesh, tmp_path):
    mesh = start_mesh(QUICKSTART, name="apply-bad")
    path = manifest(tmp_path, "bad.yaml", BAD_ROUTE)
    proc = mesh.cli("apply", "-f", path, "-f", manifest(tmp_path, "good.yaml", SWAPPED_ROUTE), check=False)
    assert proc.returncode == 1
    assert f"{path}:7: error: HTTPRoute quickstart/broken: spec.rules[0].matches[0].path.type:" in proc.stderr
    assert "nothing was changed" in proc.stderr
    assert proc.stdout == ""
    assert mesh.state["config_generation"] == 1
    assert pod_of(mesh, "http://echo/other").startswith("echo-v1-")  # the good half was not applied either
    missing = mesh.cli("apply", "-f", str(tmp_path / "nope.yaml"), check=False)
    assert missing.returncode == 1 and "nope.yaml: error: no such file or directory" in missing.stderr


def test_deleting_the_route_brings_back_default_routing(start_mesh, tmp_path):
    mesh = start_mesh(QUICKSTART, name="delete-route")
    route = manifest(tmp_path, "route.yaml", SWAPPED_ROUTE)
    assert mesh.cli("delete", "-f", route).stdout.splitlines() == ["httproute.gateway.networking.k8s.io/echo-split deleted"]
    # Without a route the waypoint balances over every endpoint of the Service, per request.
    assert {pod_of(mesh, "http://echo/v2").split("-")[1] for _ in range(12)} == {"v1", "v2"}
    assert mesh.cli("get", "httproute", "-n", "quickstart").stdout.strip() == "No resources found"

    again = mesh.cli("delete", "-f", route, check=False)
    assert again.returncode == 1
    assert f'Error from server (NotFound): error when deleting "{route}": httproutes.gateway.networking.k8s.io "echo-split" not found' in again.stderr
    assert mesh.cli("delete", "-f", route, "--ignore-not-found").returncode == 0


def test_applied_workloads_answer_and_existing_addresses_stay_then_deleted_ones_close(start_mesh, tmp_path):
    mesh = start_mesh(QUICKSTART, name="apply-app")
    before = mesh.state
    addresses = lambda state: {w["pod"]: w["address"] for w in state["workloads"]} | {s["name"]: s["vip"] for s in state["services"]}  # noqa: E731
    app = manifest(tmp_path, "app.yaml", NEW_APP)
    assert mesh.cli("apply", "-f", app).stdout.splitlines() == ["deployment.apps/echo-v3 created", "service/echo-v3 created"]

    new_pods = mesh.pods("quickstart", "echo-v3")
    assert len(new_pods) == 2
    assert {pod_of(mesh, "http://echo-v3:8080/") for _ in range(8)} <= {p["pod"] for p in new_pods}
    assert pod_of(mesh, f"http://{new_pods[1]['address']}:9090/") == new_pods[1]["pod"]
    after = mesh.state
    assert {k: v for k, v in addresses(after).items() if k in addresses(before)} == addresses(before)
    assert proxy(after, "waypoint~quickstart~waypoint")["version"] == 1  # echo-v3 does not use the waypoint

    assert mesh.cli("delete", "-f", app).stdout.splitlines() == ["deployment.apps/echo-v3 deleted", "service/echo-v3 deleted"]
    assert not mesh.pods("quickstart", "echo-v3")
    for pod in new_pods:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((pod["app_address"], 9090), timeout=2).close()
    assert pod_of(mesh, "http://echo-v1/").startswith("echo-v1-")


def test_a_new_waypoint_takes_a_relabelled_service_and_gives_it_back(start_mesh, tmp_path):
    mesh = start_mesh(QUICKSTART, name="new-waypoint")
    assert not went_through_waypoint(mesh, "http://echo-v1/")
    gateway = manifest(tmp_path, "gateway.yaml", SECOND_WAYPOINT)
    labelled = manifest(tmp_path, "labelled.yaml", ECHO_V1_SERVICE.format(labels=", labels: {istio.io/use-waypoint: second}"))
    assert mesh.cli("apply", "-f", gateway, "-f", labelled).stdout.splitlines() == [
        "gateway.gateway.networking.k8s.io/second created",
        "service/echo-v1 configured",
    ]
    second = proxy(mesh.state, "waypoint~quickstart~second")
    assert second["ready"] and second["version"] == 2 and pid_alive(second["pid"])
    assert went_through_waypoint(mesh, "http://echo-v1/")
    assert mesh.service("quickstart", "echo-v1")["waypoint"] == "quickstart/second"

    mesh.cli("apply", "-f", manifest(tmp_path, "plain.yaml", ECHO_V1_SERVICE.format(labels="")))
    assert mesh.cli("delete", "-f", gateway).stdout.splitlines() == ["gateway.gateway.networking.k8s.io/second deleted"]
    assert not went_through_waypoint(mesh, "http://echo-v1/")
    assert "waypoint~quickstart~second" not in {p["name"] for p in mesh.state["proxies"]}
    deadline = time.monotonic() + 5
    while pid_alive(second["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(second["pid"])


def test_a_namespace_leaves_and_rejoins_the_mesh(start_mesh, tmp_path):
    # Enrolment moves each pod IP between its application and the ztunnel: the rollout must hand it over.
    mesh = start_mesh(QUICKSTART, name="enrol")
    plain = manifest(tmp_path, "plain.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: quickstart}\n")
    assert mesh.cli("apply", "-f", plain).stdout.strip() == "namespace/quickstart configured"
    assert not any(w["captured"] for w in mesh.state["workloads"])
    assert not went_through_waypoint(mesh, "http://echo/v2")  # no ztunnel, no waypoint: plain passthrough
    mesh.cli("apply", "-f", str(QUICKSTART))
    assert all(w["captured"] for w in mesh.state["workloads"])
    assert went_through_waypoint(mesh, "http://echo/v2")
    assert pod_of(mesh, "http://echo/v2").startswith("echo-v2-")


def test_editing_the_watched_manifests_takes_effect_and_a_broken_edit_is_refused(start_mesh):
    mesh = start_mesh(QUICKSTART.joinpath("mesh.yaml").read_text(), name="watched")
    watched = mesh.state_dir.parent / "watched-0.yaml"
    assert mesh.state["watching"] == [str(watched)]

    watched.write_text(watched.read_text().replace("value: /v2}", "value: /other}"))
    assert wait_for(lambda: pod_of(mesh, "http://echo/other").startswith("echo-v2-"), 5)
    # Envoy serves the new route as soon as it ACKs; state.json is written just after: wait for it too.
    assert wait_for(lambda: mesh.state["config_generation"] == 2, 5)

    good = watched.read_text()
    watched.write_text(good + "---\n" + BAD_ROUTE)
    assert wait_for(lambda: mesh.state.get("last_error") is not None, 5)
    error = mesh.state["last_error"]
    assert any(f"{watched}:" in line and "HTTPRoute quickstart/broken" in line for line in error["errors"]), error
    assert mesh.state["config_generation"] == 2 and mesh.state["phase"] == "ready"
    assert pod_of(mesh, "http://echo/other").startswith("echo-v2-")
    assert "was rejected" in mesh.cli("status").stderr

    watched.write_text(good)
    assert wait_for(lambda: mesh.state.get("last_error") is None, 5)


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_describe_shows_conditions_and_attachments(start_mesh):
    mesh = start_mesh(QUICKSTART, name="describe")
    route = mesh.cli("describe", "httproute", "echo-split", "-n", "quickstart").stdout
    assert "Name:         echo-split" in route and "Kind:         HTTPRoute" in route
    assert "Attaches to:\n  Service quickstart/echo port 80\n    TYPE" in route
    assert "Accepted            True     Accepted            Route was valid" in route
    assert "rule 0: Service quickstart/echo-v2 port 80" in route

    service = mesh.cli("describe", "service", "echo", "-n", "quickstart").stdout
    assert "Attaches to:\n  waypoint quickstart/waypoint" in service
    assert "Attached routes:\n  HTTPRoute quickstart/echo-split (port 80): Accepted=True ResolvedRefs=True" in service
    assert "istio.io/WaypointBound   True" in service
    assert f"VIP:          {mesh.service('quickstart', 'echo')['vip']}" in service
    backend = mesh.cli("describe", "svc", "echo-v2", "-n", "quickstart").stdout
    assert "Backend of:\n  HTTPRoute quickstart/echo-split" in backend

    gateway = mesh.cli("describe", "gateway", "waypoint", "-n", "quickstart").stdout
    assert "Attached:\n  Service quickstart/echo" in gateway
    missing = mesh.cli("describe", "httproute", "nope", "-n", "quickstart", check=False)
    assert missing.returncode == 1 and 'httproutes "nope" not found in namespace "quickstart"' in missing.stderr


def test_apply_needs_a_running_mesh(tmp_path):
    from tests.conftest import waypost

    proc = waypost("apply", "-f", str(QUICKSTART), "--state-dir", str(tmp_path / "none"))
    assert proc.returncode == 1 and "no running mesh" in proc.stderr
