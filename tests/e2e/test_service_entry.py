"""ServiceEntry bound to a waypoint (the egress pattern): routes and policies attach to it by parentRef/targetRef."""

from __future__ import annotations

import json
import os

import pytest

from tests.e2e.servers import serving
from tests.manifests import ambient_with_waypoint

pytestmark = pytest.mark.e2e

ADDRESS = f"127.253.{os.getpid() % 250 + 1}.1"


MESH = ambient_with_waypoint("egress", namespace_uses_waypoint=False) + f"""
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext, namespace: egress, labels: {{istio.io/use-waypoint: waypoint}}}}
spec:
  hosts: [api.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8081}}]
  resolution: STATIC
  endpoints: [{{address: {ADDRESS}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: ext, namespace: egress}}
spec:
  parentRefs: [{{group: networking.istio.io, kind: ServiceEntry, name: ext}}]
  rules:
  - filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-via, value: egress-waypoint}}]}}}}]
    backendRefs: [{{group: networking.istio.io, kind: ServiceEntry, name: ext, port: 80}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-blocked, namespace: egress}}
spec:
  targetRefs: [{{group: networking.istio.io, kind: ServiceEntry, name: ext}}]
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/blocked]}}}}]}}]
"""


@pytest.fixture
def external_server():
    with serving(ADDRESS, 8081):
        yield


def test_service_entry_through_its_waypoint(start_mesh, external_server):
    mesh = start_mesh(MESH, name="se")
    entry = next(s for s in mesh.state["services"] if s["kind"] == "ServiceEntry")
    assert entry["hostname"] == "api.example.com" and entry["waypoint"] == "egress/waypoint"
    bound = next(c for c in mesh.state["conditions"] if c["kind"] == "ServiceEntry")
    assert bound["conditions"][0]["reason"] == "WaypointAccepted"
    r = mesh.request("egress/client", "http://api.example.com/hello")
    assert r.status == 200, r.body
    seen = json.loads(r.body)
    assert seen["path"] == "/hello" and seen["headers"]["x-via"] == "egress-waypoint"
    assert mesh.request("egress/client", "http://api.example.com/blocked").status == 403
    policy = next(c for c in mesh.state["conditions"] if c["kind"] == "AuthorizationPolicy")
    assert policy["conditions"][0]["reason"] == "Accepted"
