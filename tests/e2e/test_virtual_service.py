"""VirtualService in a waypoint (issue 10; catalogue rows C16, C17, C19), with real Envoy and real traffic.

Also the mixing rule: where an HTTPRoute routes a service port, the HTTPRoute wins whatever the order of
creation, the VirtualService is marked Conflicted, and `waypost analyze` reports an error.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import waypost
from tests.manifests import ambient_with_waypoint

pytestmark = pytest.mark.e2e

SINK = f"127.254.{os.getpid() % 250 + 1}.9"


def versioned(namespace: str, service: str, *versions: str) -> str:
    """A Service on port 80 in front of one echo Deployment per version (labels app, version)."""
    out = (
        f"\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: {service}, namespace: {namespace}}}\n"
        f"spec: {{selector: {{app: {service}}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n"
    )
    for v in versions:
        out += (
            f"---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {service}-{v}, namespace: {namespace}}}\n"
            f"spec:\n  selector: {{matchLabels: {{app: {service}, version: {v}}}}}\n"
            f"  template: {{metadata: {{labels: {{app: {service}, version: {v}}}}}, spec: {{containers: [{{name: c, image: waypost/echo, ports: [{{containerPort: 8080}}]}}]}}}}\n"
        )
    return out


MESH = ambient_with_waypoint("vs") + versioned("vs", "reviews", "v1", "v2") + f"""
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: sink, namespace: vs}}
spec:
  hosts: [sink.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8081}}]
  resolution: STATIC
  endpoints: [{{address: {SINK}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: vs}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: vs}}
spec:
  hosts: [reviews]
  http:
  - name: custom-user
    match: [{{headers: {{user: {{exact: istio-custom-user}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - name: abort
    match: [{{uri: {{prefix: /abort}}}}]
    fault: {{abort: {{httpStatus: 503, percentage: {{value: 50}}}}}}
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - name: delay
    match: [{{uri: {{prefix: /delay}}}}]
    fault: {{delay: {{fixedDelay: 200ms, percentage: {{value: 50}}}}}}
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - name: split
    match: [{{uri: {{prefix: /split}}}}]
    route:
    - {{destination: {{host: reviews, subset: v1}}, weight: 75}}
    - {{destination: {{host: reviews, subset: v2}}, weight: 25, headers: {{response: {{set: {{x-split: v2}}}}}}}}
  - name: redirect
    match: [{{uri: {{exact: /old-page}}}}]
    redirect: {{uri: /new-page, authority: pages.example.com, redirectCode: 308}}
  - name: teapot
    match: [{{uri: {{prefix: /teapot}}, method: {{exact: GET}}}}]
    directResponse: {{status: 418, body: {{string: "short and stout"}}}}
  - name: rewrite
    match: [{{uri: {{prefix: /v1/api}}, ignoreUriCase: true}}]
    rewrite: {{uri: /api}}
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - name: no-debug
    match: [{{uri: {{prefix: /only-without}}, withoutHeaders: {{x-debug: {{}}}}}}]
    directResponse: {{status: 204}}
  - name: mirrored
    match: [{{uri: {{prefix: /mirrored}}}}]
    mirror: {{host: sink.example.com}}
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - name: unknown-subset
    match: [{{uri: {{prefix: /nosubset}}}}]
    route: [{{destination: {{host: reviews, subset: v9}}}}]
  - name: default
    headers: {{request: {{add: {{istio-custom-header: user-defined-value}}}}}}
    route: [{{destination: {{host: reviews, subset: v1}}}}]
"""


class Sink(BaseHTTPRequestHandler):
    seen: list[tuple[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802
        Sink.seen.append((self.path, self.headers.get("Host", "")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def sink():
    server = ThreadingHTTPServer((SINK, 8081), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Sink.seen
    server.shutdown()


@pytest.fixture(scope="module")
def mesh(start_mesh_module, sink):
    return start_mesh_module(MESH, name="vs")


def _pod(response) -> str:
    assert response.status == 200, response.body
    return json.loads(response.body)["pod"]


def test_subset_routing_sends_everything_to_v1_and_a_header_to_v2(mesh):
    """C17 and C19: the default route goes to subset v1, a `user` header match to subset v2."""
    plain = {_pod(mesh.request("vs/client", "http://reviews.vs/")) for _ in range(10)}
    assert plain and all(p.startswith("reviews-v1-") for p in plain), plain
    special = {_pod(mesh.request("vs/client", "http://reviews.vs/", headers=[("user", "istio-custom-user")])) for _ in range(10)}
    assert special and all(p.startswith("reviews-v2-") for p in special), special


def test_route_headers_are_added(mesh):
    """C16: headers.request.add reaches the application."""
    seen = json.loads(mesh.request("vs/client", "http://reviews.vs/").body)["headers"]
    assert seen.get("Istio-Custom-Header") == ["user-defined-value"], seen


def test_abort_fault_hits_about_the_configured_share(mesh):
    """Fault abort 50 %: of 200 requests, 100 ± 35 (5 standard deviations) get the injected 503."""
    statuses = [mesh.request("vs/client", "http://reviews.vs/abort").status for _ in range(200)]
    aborted = statuses.count(503)
    assert set(statuses) <= {200, 503}
    assert 65 <= aborted <= 135, aborted


def test_delay_fault_delays_about_the_configured_share(mesh):
    """Fault delay 200 ms at 50 %: of 60 requests, 30 ± 15 (4 standard deviations) take at least 200 ms."""
    slow = 0
    for _ in range(60):
        started = time.monotonic()
        assert mesh.request("vs/client", "http://reviews.vs/delay").status == 200
        slow += time.monotonic() - started >= 0.19
    assert 15 <= slow <= 45, slow


def test_weighted_split_with_per_destination_headers(mesh):
    """75/25 split between subsets; the v2 share carries its destination's response header."""
    v2 = 0
    for _ in range(120):
        r = mesh.request("vs/client", "http://reviews.vs/split")
        pod = _pod(r)
        on_v2 = pod.startswith("reviews-v2-")
        assert (dict(r.headers).get("x-split") == "v2") == on_v2
        v2 += on_v2
    assert 12 <= v2 <= 48, v2  # 30 expected, sd 4.7


def test_redirect_direct_response_and_rewrite(mesh):
    r = mesh.request("vs/client", "http://reviews.vs/old-page")
    assert r.status == 308 and dict(r.headers)["location"] == "http://pages.example.com/new-page"
    r = mesh.request("vs/client", "http://reviews.vs/teapot")
    assert r.status == 418 and r.body == "short and stout"
    assert mesh.request("vs/client", "http://reviews.vs/teapot", method="POST", body="x").status == 200  # method match
    seen = json.loads(mesh.request("vs/client", "http://reviews.vs/V1/API/items").body)
    assert seen["path"] == "/api/items"  # the prefix matched regardless of case, and was replaced


def test_without_headers_matches_only_when_the_header_is_absent(mesh):
    assert mesh.request("vs/client", "http://reviews.vs/only-without").status == 204
    assert mesh.request("vs/client", "http://reviews.vs/only-without", headers=[("x-debug", "1")]).status == 200


def test_mirror_copies_requests_to_the_mirror_host(mesh, sink):
    before = len(sink)
    for i in range(5):
        assert mesh.request("vs/client", f"http://reviews.vs/mirrored/{i}").status == 200
    deadline = time.monotonic() + 5
    while len(sink) < before + 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    got = sink[before:]
    assert sorted(p for p, _ in got) == [f"/mirrored/{i}" for i in range(5)]
    # Istio disables Envoy's "-shadow" host suffix: the mirror sees the original authority.
    assert {h for _, h in got} == {"reviews.vs"}


def test_a_subset_no_destination_rule_defines_gets_503(mesh):
    assert mesh.request("vs/client", "http://reviews.vs/nosubset").status == 503
    out = mesh.cli("get", "virtualservice", "reviews", "-n", "vs", "-o", "json")
    refs = next(c for c in json.loads(out.stdout)["status"]["conditions"] if c["type"] == "ResolvedRefs")
    assert refs["status"] == "False" and "subset v9 of host reviews.vs.svc.cluster.local" in refs["message"]


def test_status_says_what_the_waypoint_applies(mesh):
    out = mesh.cli("get", "virtualservice", "reviews", "-n", "vs", "-o", "json")
    conditions = {c["type"]: c for c in json.loads(out.stdout)["status"]["conditions"]}
    assert conditions["Accepted"]["status"] == "True"
    assert "reviews.vs.svc.cluster.local:80" in conditions["Accepted"]["message"]


MIXED = ambient_with_waypoint("mix") + versioned("mix", "first", "v1") + versioned("mix", "second", "v1")


def _virtual_service(name: str, created: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: mix, creationTimestamp: "{created}"}}
spec:
  hosts: [{name}]
  http: [{{headers: {{request: {{set: {{x-routed-by: virtualservice}}}}}}, route: [{{destination: {{host: {name}}}}}]}}]
"""


def _http_route(name: str, created: str) -> str:
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: mix, creationTimestamp: "{created}"}}
spec:
  parentRefs: [{{group: "", kind: Service, name: {name}, port: 80}}]
  rules: [{{filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-routed-by, value: httproute}}]}}}}], backendRefs: [{{name: {name}, port: 80}}]}}]
"""


def test_mixing_httproute_wins_in_both_orders_and_the_virtualservice_is_conflicted(start_mesh, tmp_path):
    mesh = start_mesh(MIXED, name="mix")
    # `first`: the VirtualService is older and applied first; `second`: the HTTPRoute is older and first.
    steps = [
        _virtual_service("first", "2026-01-01T00:00:00Z"),
        _http_route("second", "2026-01-01T00:00:00Z"),
        _http_route("first", "2026-02-01T00:00:00Z"),
        _virtual_service("second", "2026-02-01T00:00:00Z"),
    ]
    for i, step in enumerate(steps):
        file = tmp_path / f"step{i}.yaml"
        file.write_text(step)
        mesh.cli("apply", "-f", str(file))
    for name in ("first", "second"):
        seen = json.loads(mesh.request("mix/client", f"http://{name}.mix/").body)["headers"]
        assert seen.get("X-Routed-By") == ["httproute"], (name, seen)
        out = mesh.cli("get", "virtualservice", name, "-n", "mix", "-o", "json")
        conditions = {c["type"]: c for c in json.loads(out.stdout)["status"]["conditions"]}
        assert conditions["Accepted"]["status"] == "False" and conditions["Accepted"]["reason"] == "Conflicted"
        assert conditions["Conflicted"]["reason"] == "HTTPRouteTakesPrecedence"
        assert f"HTTPRoute mix/{name}" in conditions["Conflicted"]["message"]
    # Offline, the same manifests: analyze reports the mix as an error and exits non-zero.
    manifests = tmp_path / "all.yaml"
    manifests.write_text(MIXED + "\n---\n" + "\n---\n".join(steps))
    analysis = waypost("analyze", "-f", str(manifests))
    assert analysis.returncode != 0
    errors = [line for line in analysis.stdout.splitlines() if "WPT0009" in line]
    assert len(errors) == 2 and all(line.startswith("Error") for line in errors), analysis.stdout
    # Deleting the HTTPRoute hands the port to the VirtualService.
    mesh.cli("delete", "-f", str(tmp_path / "step2.yaml"))
    seen = json.loads(mesh.request("mix/client", "http://first.mix/").body)["headers"]
    assert seen.get("X-Routed-By") == ["virtualservice"], seen
