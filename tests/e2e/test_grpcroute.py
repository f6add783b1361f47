"""GRPCRoute in the waypoint: method and header matches, header filters, weights, kind precedence."""

from __future__ import annotations

import pytest

from tests.manifests import ambient_with_waypoint

pytestmark = pytest.mark.e2e

MESH = ambient_with_waypoint("g")
for version in ("v1", "v2"):
    MESH += f"""
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo-{version}, namespace: g}}
spec:
  selector: {{matchLabels: {{app: echo, version: {version}}}}}
  template:
    metadata: {{labels: {{app: echo, version: {version}}}}}
    spec: {{containers: [{{name: e, image: registry.k8s.io/gateway-api/echo-advanced:v0.1.0, ports: [{{name: grpc, containerPort: 7070}}]}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo-{version}, namespace: g}}
spec:
  selector: {{app: echo, version: {version}}}
  ports: [{{name: grpc, port: 7070}}]
"""
for name in ("echo", "split"):
    MESH += f"""
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: g}}
spec:
  selector: {{app: echo}}
  ports: [{{name: grpc, port: 7070, appProtocol: kubernetes.io/h2c}}]
"""
MESH += """
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: by-header, namespace: g}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 7070}]
  rules:
  - matches:
    - method: {service: proto.EchoTestService, method: Echo}
      headers: [{name: x-version, value: two}]
    backendRefs: [{name: echo-v2, port: 7070}]
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-set, value: by-route}], remove: [x-remove]}
    backendRefs: [{name: echo-v1, port: 7070}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: loses, namespace: g}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 7070}]
  rules: [{backendRefs: [{name: echo-v2, port: 7070}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: weights, namespace: g}
spec:
  parentRefs: [{group: "", kind: Service, name: split}]
  rules:
  - backendRefs:
    - {name: echo-v1, port: 7070, weight: 70}
    - {name: echo-v2, port: 7070, weight: 30}
    - {name: echo-v3, port: 7070, weight: 0}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    from tests.conftest import RunningMesh, waypost

    root = tmp_path_factory.mktemp("grpcroute")
    (root / "mesh.yaml").write_text(MESH)
    waypost("up", "-f", str(root / "mesh.yaml"), "--detach", "--state-dir", str(root / "state"), check=True)
    yield RunningMesh(root / "state")
    waypost("down", "--state-dir", str(root / "state"))


def call(mesh, target, **kw):
    from waypost.local.client import send_grpc

    return send_grpc(mesh.state, "g/client", target, **kw)


def hostname(response) -> str:
    assert response.grpc_status == 0, response
    return next(line.split("=", 1)[1] for line in response.message.splitlines() if line.startswith("Hostname="))


def test_method_and_header_match(mesh):
    assert hostname(call(mesh, "echo:7070", metadata=[("x-version", "two")])).startswith("echo-v2-")
    assert hostname(call(mesh, "echo:7070")).startswith("echo-v1-")


def test_request_header_modifier_on_metadata(mesh):
    reply = call(mesh, "echo:7070", metadata=[("x-set", "client"), ("x-remove", "x")])
    lines = reply.message.splitlines()
    assert "RequestHeader=x-set:by-route" in lines  # gRPC metadata keys are lower-case
    assert not any(line.lower().startswith("requestheader=x-remove") for line in lines)


def test_grpcroute_wins_over_httproute_on_the_same_port(mesh):
    status = next(c for c in mesh.state["conditions"] if c["kind"] == "HTTPRoute" and c["name"] == "loses")
    assert status["parents"][0]["conditions"][0]["reason"] == "Conflicted"


def test_weights_split_calls_and_weight_zero_missing_backend_gets_none(mesh):
    counts = {"echo-v1": 0, "echo-v2": 0}
    total = 200
    for _ in range(total):
        name = hostname(call(mesh, "split:7070"))  # a call to the weight-0, missing echo-v3 would fail here
        counts["echo-v1" if name.startswith("echo-v1-") else "echo-v2"] += 1
    # 70/30 split; binomial sd for n=200 is about 6.5, allow 4 sd.
    assert abs(counts["echo-v1"] - 140) <= 26, counts


def test_cli_sends_grpc(mesh):
    import json

    out = json.loads(mesh.cli("request", "--from", "g/client", "-H", "x-version: two", "-o", "json", "grpc://echo:7070").stdout)
    assert out["status"] == 200 and "Hostname=echo-v2-" in out["body"]
