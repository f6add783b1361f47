"""ServiceEntry bound to a waypoint (the egress pattern): routes and policies attach to it by parentRef/targetRef."""

from __future__ import annotations

import json
import os

import pytest

from tests.e2e.servers import serving
from tests.manifests import ambient_with_waypoint, header_route, service_entry

pytestmark = pytest.mark.e2e

ADDRESS = f"127.253.{os.getpid() % 250 + 1}.1"


MESH = (
    ambient_with_waypoint("egress", namespace_uses_waypoint=False)
    + service_entry("egress", "ext", ["api.example.com"], 80, target_port=8081, endpoints=(ADDRESS,), waypoint="waypoint")
    + header_route("egress", "ext", "ext", "x-via", "egress-waypoint", "{group: networking.istio.io, kind: ServiceEntry, name: ext, port: 80}")
) + """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-blocked, namespace: egress}
spec:
  targetRefs: [{group: networking.istio.io, kind: ServiceEntry, name: ext}]
  action: DENY
  rules: [{to: [{operation: {paths: [/blocked]}}]}]
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
