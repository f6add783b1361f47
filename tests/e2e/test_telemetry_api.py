"""The Telemetry API and MeshConfig access-log settings on a waypoint: catalogue C53 (tag overrides on a
Service's metrics), a disabled metric, access logging disabled for one service, and JSON access logs."""

from __future__ import annotations

import json
import time

import pytest

from waypost.local.metrics import fetch

from .test_authorization import base
from .test_metrics import proxy_admin, samples

pytestmark = pytest.mark.e2e

TELEMETRY = """
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    accessLogEncoding: JSON
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: custom, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: svc}]
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT}
      tagOverrides:
        custom_dimension: {value: "'test'"}
        request_host: {value: "request.host"}
        source_principal: {operation: REMOVE}
    - match: {metric: REQUEST_SIZE}
      disabled: true
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: quiet, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: other}]
  accessLogging: [{providers: [{name: envoy}], disabled: true}]
"""


def wait_for(fn, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.3)


def test_telemetry_overrides_and_access_logs(start_mesh):
    mesh = start_mesh(base() + TELEMETRY, name="telemetry")
    for _ in range(3):
        assert mesh.request("app/client", "http://svc/").status == 200
    assert mesh.request("app/client", "http://other/").status == 200
    admin = proxy_admin(mesh, "waypoint")

    def svc_series():
        return [s for s in samples(fetch(admin), "istio_requests_total") if s.labels["destination_service_name"] == "svc"]

    (series,) = wait_for(svc_series)
    assert series.value == 3
    assert series.labels["custom_dimension"] == "test" and series.labels["reporter"] == "waypoint"  # C53
    assert series.labels["request_host"] == "svc"  # a CEL attribute
    assert "source_principal" not in series.labels
    text = fetch(admin)
    sizes = {s.labels["destination_service_name"] for s in samples(text, "istio_request_bytes_count")}
    assert sizes == {"other"}  # REQUEST_SIZE disabled for svc only
    other = next(s for s in samples(text, "istio_requests_total") if s.labels["destination_service_name"] == "other")
    assert "custom_dimension" not in other.labels and other.labels["source_principal"].startswith("spiffe://")

    waypoint = next(p for p in mesh.state["proxies"] if p["kind"] == "waypoint")
    log_file = mesh.state_dir / "logs" / f"{waypoint['name'].replace('~', '.')}.log"

    def entries():
        return [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]

    logged = wait_for(lambda: len(entries()) >= 3 and entries())
    assert {e["authority"] for e in logged} == {"svc"}  # JSON lines (MeshConfig accessLogEncoding), none for `other`
    assert all(e["response_code"] == 200 and e["method"] == "GET" for e in logged)
    quiet = next(c for c in mesh.state["conditions"] if (c["kind"], c["name"]) == ("Telemetry", "quiet"))
    assert quiet["conditions"][0]["reason"] == "Accepted"
    assert mesh.cli("logs", waypoint["name"]).stdout.count('"svc"') >= 3  # `waypost logs` shows JSON lines too
