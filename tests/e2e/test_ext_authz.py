"""AuthorizationPolicy CUSTOM end to end: a waypoint asks a real external authorizer (HTTP and gRPC).

The authorizer is `waypost.local.extauthz` (Istio's sample authorizer semantics: `x-ext-authz: allow`
allows), started by the test as its own process on a loopback address outside the mesh and reached
through a ServiceEntry, as an out-of-cluster authorizer is with Istio. Providers are declared the way
Istio users declare them: MeshConfig `extensionProviders` in the ConfigMap `istio` of `istio-system`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.test_authorization import policy, tcp_echo
from waypost.local.client import RequestError

pytestmark = pytest.mark.e2e

AUTHZ = f"127.252.{os.getpid() % 250 + 1}.1"
HTTP_PORT, GRPC_PORT, DEAD_PORT = 18000, 19000, 18001


def mesh_config() -> str:
    return f"""
apiVersion: v1
kind: Namespace
metadata: {{name: istio-system}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    accessLogFile: /dev/stdout
    extensionProviders:
    - name: http-authz
      envoyExtAuthzHttp:
        service: ext-authz.example.internal
        port: {HTTP_PORT}
        includeRequestHeadersInCheck: [x-ext-authz]
        headersToUpstreamOnAllow: [x-ext-authz-check-result]
        headersToDownstreamOnDeny: [x-ext-authz-check-result]
    - name: grpc-authz
      envoyExtAuthzGrpc:
        service: istio-system/ext-authz.example.internal
        port: {GRPC_PORT}
    - name: down-closed
      envoyExtAuthzHttp: {{service: ext-authz.example.internal, port: {DEAD_PORT}, timeout: 2s}}
    - name: down-open
      envoyExtAuthzHttp: {{service: ext-authz.example.internal, port: {DEAD_PORT}, timeout: 2s, failOpen: true}}
    - name: down-503
      envoyExtAuthzHttp: {{service: ext-authz.example.internal, port: {DEAD_PORT}, timeout: 2s, statusOnError: "503"}}
    - name: nowhere
      envoyExtAuthzHttp: {{service: no-such-service.example.internal, port: 80}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext-authz, namespace: istio-system}}
spec:
  hosts: [ext-authz.example.internal]
  ports:
  - {{number: {HTTP_PORT}, name: http, protocol: HTTP}}
  - {{number: {GRPC_PORT}, name: grpc, protocol: GRPC}}
  - {{number: {DEAD_PORT}, name: http-dead, protocol: HTTP}}
  resolution: STATIC
  endpoints: [{{address: {AUTHZ}}}]
"""


def services() -> str:
    doc = """
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: shop}
spec:
  selector: {matchLabels: {app: client}}
  template: {metadata: {labels: {app: client}}, spec: {serviceAccountName: client, containers: [{name: c, image: curl}]}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  template:
    metadata: {labels: {app: backend}}
    spec: {containers: [{name: c, image: waypost/echo, ports: [{containerPort: 8080}, {containerPort: 9000}]}]}
"""
    for name in ("http-checked", "grpc-checked", "closed", "open", "status", "missing", "multi", "plain"):
        doc += f"""
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec:
  selector: {{app: backend}}
  ports: [{{name: http, port: 80, targetPort: 8080}}, {{name: tcp, port: 9000}}]
"""
    return doc


def custom(name: str, service: str, provider: str, rules: str = "[{to: [{operation: {paths: [/protected/*]}}]}]") -> str:
    return policy(
        name,
        f"targetRefs: [{{kind: Service, group: '', name: {service}}}]\naction: CUSTOM\nprovider: {{name: {provider}}}\nrules: {rules}",
        ns="shop",
    )


MESH = (
    mesh_config()
    + services()
    + custom("ext-http", "http-checked", "http-authz")
    + policy("no-forbidden", "targetRefs: [{kind: Service, group: '', name: http-checked}]\naction: DENY\nrules: [{to: [{operation: {paths: [/protected/forbidden]}}]}]", ns="shop")
    + custom("ext-grpc", "grpc-checked", "grpc-authz", rules="[{to: [{operation: {paths: [/protected/*]}}]}, {to: [{operation: {ports: ['9000']}}]}]")
    + custom("ext-closed", "closed", "down-closed")
    + custom("ext-open", "open", "down-open")
    + custom("ext-status", "status", "down-503")
    + custom("ext-missing", "missing", "nowhere")
    + custom("ext-multi-a", "multi", "http-authz")
    + custom("ext-multi-b", "multi", "grpc-authz")
    + custom("ext-tcp-http", "plain", "http-authz", rules="[{to: [{operation: {ports: ['9000']}}]}]")
    # A CUSTOM policy by selector goes to ztunnel, which does not support CUSTOM: not enforced (Istio).
    + policy("ext-selector", "selector: {matchLabels: {app: backend}}\naction: CUSTOM\nprovider: {name: http-authz}\nrules: [{}]", ns="shop")
)


@pytest.fixture(scope="module")
def authorizer(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("extauthz")
    ready = workdir / "ready.json"
    log = workdir / "authz.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "waypost.local.extauthz", "--http", f"{AUTHZ}:{HTTP_PORT}", "--grpc", f"{AUTHZ}:{GRPC_PORT}",
             "--ready-file", str(ready), "--allow-service-account", "waypoint"],
            stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
        )
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    yield log
    proc.terminate()
    proc.wait(10)


def outcome(mesh, source: str, url: str, **kw) -> str:
    """The status code as text, or 'reset' when the connection was closed."""
    try:
        return str(mesh.request(source, url, timeout=5, **kw).status)
    except RequestError:
        return "reset"


def checks(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("[")]


@pytest.fixture(scope="module")
def mesh(start_mesh_module):
    return start_mesh_module(MESH, name="extauthz")


def test_http_provider_decides_matching_requests_only(authorizer, mesh):
    before = len(checks(authorizer))
    assert outcome(mesh, "shop/client", "http://http-checked.shop/public") == "200"
    assert len(checks(authorizer)) == before, "a request no CUSTOM rule selects must not reach the authorizer"

    denied = mesh.request("shop/client", "http://http-checked.shop/protected/a", timeout=5)
    assert denied.status == 403
    assert "denied by ext_authz" in denied.body
    assert denied.as_json()["headers"].get("x-ext-authz-check-result") == ["denied"]  # headersToDownstreamOnDeny

    allowed = mesh.request("shop/client", "http://http-checked.shop/protected/a", headers=[("x-ext-authz", "allow")], timeout=5)
    assert allowed.status == 200, allowed.body
    seen = json.loads(allowed.body)["headers"]
    assert seen.get("X-Ext-Authz-Check-Result") == ["allowed"]  # headersToUpstreamOnAllow
    lines = checks(authorizer)[before:]
    assert [line.split()[0] for line in lines] == ["[HTTP][denied]", "[HTTP][allowed]"], lines


def test_deny_still_applies_after_the_authorizer_allows(authorizer, mesh):
    # Order CUSTOM → DENY → ALLOW: an ext_authz allow does not override a DENY policy.
    r = mesh.request("shop/client", "http://http-checked.shop/protected/forbidden", headers=[("x-ext-authz", "allow")], timeout=5)
    assert r.status == 403 and r.body == "RBAC: access denied"


def test_grpc_provider(authorizer, mesh):
    before = len(checks(authorizer))
    assert outcome(mesh, "shop/client", "http://grpc-checked.shop/protected/x") == "403"
    assert outcome(mesh, "shop/client", "http://grpc-checked.shop/protected/x", headers=[("x-ext-authz", "allow")]) == "200"
    assert outcome(mesh, "shop/client", "http://grpc-checked.shop/elsewhere") == "200"
    lines = checks(authorizer)[before:]
    assert [line.split()[0] for line in lines] == ["[gRPCv3][denied]", "[gRPCv3][allowed]"], lines


def test_grpc_provider_on_tcp_traffic(authorizer, mesh):
    # Envoy's network ext_authz asks the gRPC authorizer about the connection. It has no HTTP headers,
    # so the sample authorizer decides by the peer principal, which an internal listener does not carry:
    # denied, and the connection is closed before any byte reaches the backend.
    before = len(checks(authorizer))
    assert tcp_echo_in(mesh, "grpc-checked", 9000) == b""
    lines = checks(authorizer)[before:]
    assert len(lines) == 1 and lines[0].startswith("[gRPCv3][denied]"), lines


def test_http_provider_is_not_applied_to_tcp(authorizer, mesh):
    # Istio: Envoy's network ext_authz speaks gRPC only, so an HTTP provider is skipped on TCP chains.
    before = len(checks(authorizer))
    assert tcp_echo_in(mesh, "plain", 9000) == b"ping"
    assert len(checks(authorizer)) == before


def test_unreachable_authorizer_fails_closed_unless_fail_open(mesh):
    assert outcome(mesh, "shop/client", "http://closed.shop/protected/a") == "403"
    assert outcome(mesh, "shop/client", "http://closed.shop/public") == "200"
    assert outcome(mesh, "shop/client", "http://open.shop/protected/a") == "200"
    assert outcome(mesh, "shop/client", "http://status.shop/protected/a") == "503"


def test_unusable_providers_deny_what_their_rules_match(mesh):
    # An unresolvable provider, or two providers on one chain: the rules become DENY rules (Istio).
    for service in ("missing", "multi"):
        r = mesh.request("shop/client", f"http://{service}.shop/protected/a", headers=[("x-ext-authz", "allow")], timeout=5)
        assert (r.status, r.body) == (403, "RBAC: access denied"), service
        assert outcome(mesh, "shop/client", f"http://{service}.shop/public") == "200"


def test_selector_custom_policy_is_not_enforced_by_ztunnel(mesh):
    status = next(c for c in mesh.state["conditions"] if c["kind"] == "AuthorizationPolicy" and c["name"] == "ext-selector")
    (condition,) = status["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == ("ZtunnelAccepted", "False", "UnsupportedValue")
    assert "CUSTOM" in condition["message"]
    waypoint_bound = next(c for c in mesh.state["conditions"] if c["kind"] == "AuthorizationPolicy" and c["name"] == "ext-http")
    assert waypoint_bound["conditions"][0]["reason"] == "Accepted"


def tcp_echo_in(mesh, service: str, port: int) -> bytes:
    return tcp_echo(mesh, "shop/client", service, port, namespace="shop")
