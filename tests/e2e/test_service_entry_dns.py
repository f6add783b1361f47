"""ServiceEntry with DNS resolution (issue 10; catalogue rows C57, C62, C65): the proxies resolve the
endpoint names themselves, with and without an egress waypoint.

"External" here is a server of the test on 127.0.0.1, reached by the name `localhost`, which this machine
resolves without a DNS server.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.servers import serving
from tests.manifests import ambient_namespace, client, header_route, service_entry, waypoint

pytestmark = pytest.mark.e2e


def mesh_text(port: int) -> str:
    return (
        ambient_namespace("app")
        + client("app")
        # The egress waypoint lives in its own namespace and admits routes from every namespace (C59/C62).
        + ambient_namespace("egress")
        + waypoint("egress", "egress-gateway").replace(
            "listeners: [{name: mesh, port: 15008, protocol: HBONE}]",
            "listeners: [{name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: All}}}]",
        )
        + service_entry("app", "direct", ["direct.example.com"], 80, target_port=port, resolution="DNS", endpoints=("localhost",))
        + service_entry("app", "external", ["fake-egress.example.com"], 80, target_port=port, resolution="DNS_ROUND_ROBIN",
                        endpoints=("localhost",), waypoint="egress-gateway", waypoint_namespace="egress")
        + service_entry("app", "by-host", ["localhost"], 8080, target_port=port, resolution="DNS")
        + header_route("app", "external", "external", "x-egress", "waypoint", "{group: networking.istio.io, kind: ServiceEntry, name: external, port: 80}")
        # Several hosts: one mesh service per host; a parentRef to the entry attaches to every host.
        + service_entry("app", "multi", ["a.multi.example", "b.multi.example"], 80, target_port=port, resolution="DNS",
                        endpoints=("localhost",), waypoint="egress-gateway", waypoint_namespace="egress")
        + header_route("app", "multi", "multi", "x-multi", "yes", "{group: networking.istio.io, kind: Hostname, name: b.multi.example, port: 80}")
        # DYNAMIC_DNS (C66-C68): the waypoint resolves the name each request's Host header gives.
        + service_entry("app", "wild", ["*.localhost"], port, resolution="DYNAMIC_DNS", waypoint="egress-gateway", waypoint_namespace="egress")
        + header_route("app", "wild", "wild", "x-wild", "yes", f'{{group: networking.istio.io, kind: Hostname, name: "*.localhost", port: {port}}}')
        + service_entry("app", "unserved", ["*.unserved.example"], 80, resolution="DYNAMIC_DNS")
        + """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: app}
spec:
  targetRefs: [{group: networking.istio.io, kind: ServiceEntry, name: external}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
"""
    )


@pytest.fixture(scope="module")
def server():
    with serving("127.0.0.1") as echo:
        yield echo.server_address[1]


@pytest.fixture(scope="module")
def mesh(start_mesh_module, server):
    return start_mesh_module(mesh_text(server), name="sedns")


def test_dns_endpoint_without_waypoint_is_resolved_by_the_ztunnel(mesh):
    r = mesh.request("app/client", "http://direct.example.com/x")
    assert r.status == 200, r.body
    seen = json.loads(r.body)
    assert seen["path"] == "/x" and "x-egress" not in seen["headers"]  # L4 only: no waypoint on the way


def test_dns_service_entry_through_a_cross_namespace_egress_waypoint(mesh):
    """C62/C65: the ServiceEntry binds to a waypoint of another namespace; its route and policy apply."""
    entry = next(s for s in mesh.state["services"] if s["name"] == "external")
    assert entry["waypoint"] == "egress/egress-gateway"
    r = mesh.request("app/client", "http://fake-egress.example.com/hello")
    assert r.status == 200, r.body
    assert json.loads(r.body)["headers"]["x-egress"] == "waypoint"  # L7: the waypoint's route ran
    assert mesh.request("app/client", "http://fake-egress.example.com/hello", method="POST", body="x").status == 403


def test_dns_without_endpoints_resolves_the_host_itself(mesh):
    r = mesh.request("app/client", "http://localhost:8080/by-host")
    assert r.status == 200, r.body
    assert json.loads(r.body)["path"] == "/by-host"


def test_every_host_of_a_service_entry_gets_its_parent_routes(mesh):
    """One mesh service per host, each with its own VIP; the route names the entry, so both hosts use it,
    and its backendRef names one host (Istio's kind Hostname, C64)."""
    hosts = {s["hostname"]: s["vip"] for s in mesh.state["services"] if s["name"] == "multi"}
    assert set(hosts) == {"a.multi.example", "b.multi.example"} and len(set(hosts.values())) == 2
    for host in hosts:
        r = mesh.request("app/client", f"http://{host}/{host}")
        assert r.status == 200, (host, r.body)
        seen = json.loads(r.body)
        assert seen["path"] == f"/{host}" and seen["headers"]["x-multi"] == "yes"


def test_dynamic_dns_resolves_the_requested_host_in_the_waypoint(mesh, server):
    """C66-C68: any name the wildcard matches is resolved per request (c-ares answers *.localhost with
    127.0.0.1, RFC 6761); the waypoint's route applies; a Host outside the wildcard gets 404."""
    for name in ("one.localhost", "two.three.localhost"):
        r = mesh.request("app/client", f"http://{name}:{server}/dyn")
        assert r.status == 200, (name, r.body)
        seen = json.loads(r.body)
        assert seen["path"] == "/dyn" and seen["headers"]["x-wild"] == "yes" and seen["headers"]["host"] == f"{name}:{server}"
    outside = mesh.request("app/client", f"http://one.localhost:{server}/dyn", headers=[("Host", f"evil.example:{server}")])
    assert outside.status == 404


def test_a_wildcard_entry_without_waypoint_says_so(mesh):
    status = next(c for c in mesh.state["conditions"] if c["kind"] == "ServiceEntry" and c["name"] == "unserved")
    missing = next(c for c in status["conditions"] if c["type"] == "istio.io/WaypointMissing")
    assert (missing["status"], missing["reason"]) == ("True", "NoWaypointForWildcardService")
