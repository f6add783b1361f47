"""`waypost waypoint apply|list|status|delete` against a running mesh, like istioctl's."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.manifests import ambient_namespace, client

pytestmark = pytest.mark.e2e

MESH = ambient_namespace("shop") + client("shop") + """
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  template: {metadata: {labels: {app: echo}}, spec: {containers: [{name: e, image: waypost/echo, ports: [{containerPort: 8080}]}]}}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec: {selector: {app: echo}, ports: [{name: http, port: 80, targetPort: 8080}]}
"""


def through_waypoint(mesh) -> bool:
    return "X-Request-Id" in json.loads(mesh.request("shop/client", "http://echo/").body)["headers"]


def test_waypoint_lifecycle_with_namespace_enrolment(start_mesh):
    mesh = start_mesh(MESH, name="wpcli")
    from tests.conftest import waypost

    generated = yaml.safe_load(waypost("waypoint", "generate", "-n", "shop", "--for", "service", check=True).stdout)
    assert generated["spec"]["listeners"] == [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]
    assert not through_waypoint(mesh)
    out = mesh.cli("waypoint", "apply", "-n", "shop", "--enroll-namespace").stdout
    assert "gateway.gateway.networking.k8s.io/waypoint created" in out and "namespace/shop configured" in out
    assert through_waypoint(mesh)
    listing = mesh.cli("waypoint", "list", "-n", "shop").stdout.splitlines()
    assert listing[0].split() == ["NAME", "REVISION", "PROGRAMMED", "TRAFFIC", "TYPE"]
    assert listing[1].split() == ["waypoint", "default", "True", "service"]
    assert "Programmed" in mesh.cli("waypoint", "status", "-n", "shop").stdout
    mesh.cli("waypoint", "delete", "-n", "shop")
    assert "No waypoints found." in mesh.cli("waypoint", "list", "-A").stdout
    assert not through_waypoint(mesh)  # the namespace still names it, but it is gone: L4 only
