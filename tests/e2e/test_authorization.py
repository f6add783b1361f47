"""AuthorizationPolicy end to end: who enforces it (waypoint or destination ztunnel), what it decides,
and which source identity the enforcer sees — the seed table of shared/spec/l7-features.md and rows
7–12 of istio-ambient-semantics.md §4.3, plus catalogue rows C23–C36.

Outcomes tell the enforcer apart: a waypoint denies HTTP with 403 `RBAC: access denied`; a destination
ztunnel closes the connection, which a direct client sees as a reset and a waypoint reports as 503.
"""

from __future__ import annotations

import json

import pytest

from waypost.local.client import RequestError

pytestmark = pytest.mark.e2e

CLIENT = "cluster.local/ns/app/sa/client"
WAYPOINT = "cluster.local/ns/app/sa/waypoint"


def base(service_waypoint: bool = True) -> str:
    label = "labels: {istio.io/use-waypoint: waypoint}" if service_waypoint else ""
    doc = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: app, labels: {{istio.io/dataplane-mode: ambient}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: outside}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: istio-system}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: app}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: v1
kind: Service
metadata: {{name: svc, namespace: app, {label}}}
spec:
  selector: {{app: backend}}
  ports: [{{name: http, port: 80, targetPort: 8080}}, {{name: tcp, port: 9000}}]
---
apiVersion: v1
kind: Service
metadata: {{name: other, namespace: app, labels: {{istio.io/use-waypoint: waypoint}}}}
spec:
  selector: {{app: other}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"""
    for name, ns, image, labels in (
        ("client", "app", "curl", "{app: client}"),
        ("intruder", "app", "curl", "{app: intruder}"),
        ("outsider", "outside", "curl", "{app: outsider}"),
        ("backend", "app", "waypost/echo", "{app: backend}"),
        ("other", "app", "waypost/echo", "{app: other}"),
    ):
        ports = ", ports: [{containerPort: 8080}, {containerPort: 9000}]" if image == "waypost/echo" else ""
        doc += f"""
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{matchLabels: {labels}}}
  template:
    metadata: {{labels: {labels}}}
    spec: {{serviceAccountName: {name}, containers: [{{name: c, image: {image}{ports}}}]}}
"""
    return doc


def policy(name: str, spec: str, ns: str = "app") -> str:
    indented = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return f"\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{indented}\n"


def outcome(mesh, source: str, url: str, **kw) -> str:
    """'200', '403' (waypoint RBAC), '503' (upstream refused), or 'reset' (connection closed by ztunnel)."""
    try:
        r = mesh.request(source, url, timeout=5, **kw)
    except RequestError:
        return "reset"
    if r.status == 403:
        assert r.body == "RBAC: access denied", r.body
    return str(r.status)


def seen_by_backend(mesh, source: str, url: str) -> dict:
    r = mesh.request(source, url, timeout=5)
    assert r.status == 200, (r.status, r.body)
    return json.loads(r.body)


def condition(mesh, name: str) -> dict:
    status = next(c for c in mesh.state["conditions"] if c["kind"] == "AuthorizationPolicy" and c["name"] == name)
    return status["conditions"][0]


# --- the seed table -------------------------------------------------------------------------------------
def test_row1_selector_policy_without_waypoint_is_enforced_by_ztunnel_seeing_the_client(start_mesh):
    mesh = start_mesh(base(service_waypoint=False) + policy("allow-client", f"selector: {{matchLabels: {{app: backend}}}}\nrules: [{{from: [{{source: {{principals: ['{CLIENT}']}}}}]}}]"))
    assert outcome(mesh, "app/client", "http://svc/") == "200"
    assert outcome(mesh, "app/intruder", "http://svc/") == "reset"  # L4 deny at the destination ztunnel
    assert "X-Request-Id" not in seen_by_backend(mesh, "app/client", "http://svc/")["headers"]  # no waypoint in path
    assert condition(mesh, "allow-client")["type"] == "ZtunnelAccepted"


def test_row2_selector_policy_with_waypoint_sees_the_waypoint_identity(start_mesh):
    mesh = start_mesh(base() + policy("allow-client", f"selector: {{matchLabels: {{app: backend}}}}\nrules: [{{from: [{{source: {{principals: ['{CLIENT}']}}}}]}}]"))
    # The waypoint re-originates HBONE with its own certificate: the ztunnel sees the waypoint, not the client.
    assert outcome(mesh, "app/client", "http://svc/") == "503"
    mesh2 = start_mesh(base() + policy("allow-waypoint", f"selector: {{matchLabels: {{app: backend}}}}\nrules: [{{from: [{{source: {{principals: ['{WAYPOINT}']}}}}]}}]"), name="row2b")
    assert outcome(mesh2, "app/client", "http://svc/") == "200"
    assert outcome(mesh2, "app/intruder", "http://svc/") == "200"


def test_row3_namespace_policy_without_waypoint(start_mesh):
    mesh = start_mesh(base(service_waypoint=False) + policy("ns-wide", f"rules: [{{from: [{{source: {{principals: ['{CLIENT}']}}}}]}}]"))
    assert outcome(mesh, "app/client", "http://svc/") == "200"
    assert outcome(mesh, "app/intruder", "http://svc/") == "reset"


def test_row4_namespace_policy_with_waypoint_sees_the_waypoint(start_mesh):
    mesh = start_mesh(base() + policy("ns-wide", f"rules: [{{from: [{{source: {{principals: ['{CLIENT}']}}}}]}}]"))
    assert outcome(mesh, "app/client", "http://svc/") == "503"


@pytest.mark.parametrize("target", ["kind: Service, group: '', name: svc", "kind: Gateway, group: gateway.networking.k8s.io, name: waypoint"])
def test_rows5_6_targetref_policy_is_enforced_by_the_waypoint_with_the_client_identity(start_mesh, target):
    mesh = start_mesh(base() + policy("l7", f"targetRefs: [{{{target}}}]\nrules:\n- from: [{{source: {{principals: ['{CLIENT}']}}}}]\n  to: [{{operation: {{methods: [GET]}}}}]"))
    assert outcome(mesh, "app/client", "http://svc/") == "200"
    assert outcome(mesh, "app/client", "http://svc/", method="POST") == "403"  # L7 rule enforced
    assert outcome(mesh, "app/intruder", "http://svc/") == "403"  # the waypoint knows the client identity
    c = condition(mesh, "l7")
    assert (c["type"], c["status"], c["reason"]) == ("WaypointAccepted", "True", "Accepted")


def test_row7_gatewayclass_policy_in_root_namespace_applies_to_every_waypoint(start_mesh):
    mesh = start_mesh(base() + policy("allow-nothing", "targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]", ns="istio-system"))
    assert outcome(mesh, "app/client", "http://svc/") == "403"
    assert outcome(mesh, "app/client", "http://other/") == "403"


def test_row9_targetref_to_a_service_without_waypoint_is_enforced_nowhere(start_mesh):
    mesh = start_mesh(base(service_waypoint=False) + policy("nowhere", "targetRefs: [{kind: Service, group: '', name: svc}]"))
    assert outcome(mesh, "app/intruder", "http://svc/") == "200"
    c = condition(mesh, "nowhere")
    assert (c["status"], c["reason"], c["message"]) == ("False", "AncestorNotBound", "Service app/svc is not bound to a waypoint")


def test_row10_uncaptured_client_bypasses_the_waypoint_and_only_ztunnel_policies_apply(start_mesh):
    mesh = start_mesh(base() + policy("deny-all-at-waypoint", "targetRefs: [{kind: Service, group: '', name: svc}]"))
    assert outcome(mesh, "app/client", "http://svc/") == "403"
    assert outcome(mesh, "outside/outsider", "http://svc.app/") == "200"  # plaintext, no waypoint: not enforced
    guarded = start_mesh(base() + policy("only-waypoint", f"selector: {{matchLabels: {{app: backend}}}}\nrules: [{{from: [{{source: {{principals: ['{WAYPOINT}']}}}}]}}]"), name="row10b")
    assert outcome(guarded, "outside/outsider", "http://svc.app/") == "reset"  # C35: the pod admits only the waypoint
    assert outcome(guarded, "app/client", "http://svc/") == "200"


def test_row11_pod_ip_traffic_skips_the_service_waypoint_policy(start_mesh):
    mesh = start_mesh(base() + policy("deny-all-at-waypoint", "targetRefs: [{kind: Service, group: '', name: svc}]"))
    pod = mesh.pods("app", "backend")[0]["address"]
    assert outcome(mesh, "app/intruder", f"http://{pod}:8080/") == "200"


def test_row12_root_namespace_allow_nothing_denies_the_waypoint_hop_until_allowed(start_mesh):
    mesh = start_mesh(base() + policy("allow-nothing", "{}", ns="istio-system"))
    assert outcome(mesh, "app/client", "http://svc/") == "503"  # C27: the ztunnel refuses the waypoint
    assert condition(mesh, "allow-nothing")["type"] == "ZtunnelAccepted"
    allowed = start_mesh(base() + policy("allow-nothing", "{}", ns="istio-system") + policy("allow-waypoint", f"rules: [{{from: [{{source: {{principals: ['{WAYPOINT}']}}}}]}}]"), name="row12b")
    assert outcome(allowed, "app/client", "http://svc/") == "200"  # C28


# --- catalogue rows -----------------------------------------------------------------------------------
L7_RULES = f"""
targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
rules:
- to: [{{operation: {{methods: [GET], paths: [/allowed]}}}}]
- from: [{{source: {{principals: ['{CLIENT}']}}}}]
  to: [{{operation: {{methods: [GET], paths: [/allowed-identity]}}}}]
- from: [{{source: {{principals: [cluster.local/ns/app/sa/someone-else]}}}}]
  to: [{{operation: {{methods: [GET], paths: [/denied-identity]}}}}]
- to: [{{operation: {{methods: [GET], paths: ['/allowed-wildcard*']}}}}]
- to: [{{operation: {{methods: [GET], paths: [/headers]}}}}]
  when: [{{key: 'request.headers[x-test-header]', values: [match], notValues: [do-not-match]}}]
- to: [{{operation: {{methods: [POST]}}}}]
"""


def test_c31_to_c33_l7_rules_at_the_waypoint(start_mesh):
    mesh = start_mesh(
        base()
        + policy("l7-allow", L7_RULES)
        + policy("explicit-deny", "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\naction: DENY\nrules: [{to: [{operation: {paths: [/explicit-deny]}}]}]")
    )
    assert outcome(mesh, "app/client", "http://svc/deny") == "403"  # C31
    for path in ("/allowed", "/allowed-identity", "/allowed-wildcardtest"):  # C32
        assert outcome(mesh, "app/client", f"http://svc{path}") == "200", path
    assert outcome(mesh, "app/client", "http://svc/headers", headers=[("x-test-header", "match")]) == "200"
    assert outcome(mesh, "app/client", "http://svc/denied-identity") == "403"  # C33
    assert outcome(mesh, "app/client", "http://svc/explicit-deny", method="POST") == "403"  # DENY wins over the POST allow
    assert outcome(mesh, "app/client", "http://svc/headers", headers=[("x-test-header", "do-not-match")]) == "403"
    assert outcome(mesh, "app/intruder", "http://svc/allowed-identity") == "403"


def test_path_templates_at_the_waypoint(start_mesh):
    # `{*}` is one segment, `{**}` any number (last only): Envoy's uri_template `*`/`**` (§5.4).
    mesh = start_mesh(
        base()
        + policy("templates", "targetRefs: [{kind: Service, group: '', name: svc}]\nrules: [{to: [{operation: {paths: ['/items/{*}', '/static/{**}']}}]}]")
        + policy("no-admin", "targetRefs: [{kind: Service, group: '', name: svc}]\naction: DENY\nrules: [{to: [{operation: {paths: ['/items/{*}/admin']}}]}]")
    )
    for path, expected in (("/items/1", "200"), ("/items/1/2", "403"), ("/items/", "403"), ("/static/a/b/c.css", "200"),
                           ("/static/x", "200"), ("/other", "403"), ("/items/1/admin", "403")):
        assert outcome(mesh, "app/client", f"http://svc{path}") == expected, path


def test_c36_l7_allow_rules_at_ztunnel_allow_nothing(start_mesh):
    mesh = start_mesh(base(service_waypoint=False) + policy("l7-at-ztunnel", "selector: {matchLabels: {app: backend}}\nrules: [{to: [{operation: {methods: [GET], paths: [/allowed]}}]}]"))
    assert outcome(mesh, "app/client", "http://svc/allowed") == "reset"
    c = condition(mesh, "l7-at-ztunnel")
    assert c["reason"] == "UnsupportedValue" and "rules matching HTTP attributes are omitted" in c["message"]


def test_c23_c24_l4_policy_on_tcp_through_waypoint_and_ztunnel(start_mesh):
    allow = f"rules: [{{from: [{{source: {{principals: ['{CLIENT}', '{WAYPOINT}']}}}}]}}]"
    ok = start_mesh(base() + policy("svc", f"targetRefs: [{{kind: Service, group: '', name: svc}}]\n{allow}") + policy("pod", f"selector: {{matchLabels: {{app: backend}}}}\n{allow}"))
    assert tcp_echo(ok, "app/client", "svc", 9000) == b"ping"  # C23
    other = "rules: [{from: [{source: {principals: [cluster.local/ns/something/sa/else]}}]}]"
    denied = start_mesh(base() + policy("svc", f"targetRefs: [{{kind: Service, group: '', name: svc}}]\n{other}") + policy("pod", f"selector: {{matchLabels: {{app: backend}}}}\n{other}"), name="c24")
    assert tcp_echo(denied, "app/client", "svc", 9000) == b""  # C24: closed


def test_c26_when_header_condition(start_mesh):
    mesh = start_mesh(base() + policy("hdr", "targetRefs: [{kind: Service, group: '', name: svc}]\nrules: [{when: [{key: 'request.headers[x-foo]', values: [x-bar]}]}]"))
    assert outcome(mesh, "app/client", "http://svc/", headers=[("x-foo", "x-bar")]) == "200"
    assert outcome(mesh, "app/client", "http://svc/", headers=[("x-foo", "wrong-value")]) == "403"


def test_c25_service_targeted_policy_is_per_service(start_mesh):
    mesh = start_mesh(base() + policy("only-else", "targetRefs: [{kind: Service, group: core, name: svc}]\nrules: [{from: [{source: {principals: [cluster.local/ns/something/sa/else]}}]}]"))
    assert outcome(mesh, "app/client", "http://svc/") == "403"
    assert outcome(mesh, "app/client", "http://other/") == "200"


def tcp_echo(mesh, source: str, service: str, port: int, namespace: str = "app") -> bytes:
    """Sends b"ping" from the source pod to service:port and returns what comes back (b"" when refused/reset)."""
    import socket

    client = next(w for w in mesh.state["workloads"] if w["owner"] == source.split("/")[1])["address"]
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((client, 0))
    try:
        sock.connect((mesh.service(namespace, service)["vip"], port))
        sock.sendall(b"ping")
        data = b""
        while len(data) < 4:
            chunk = sock.recv(16)
            if not chunk:
                break
            data += chunk
        return data
    except OSError:
        return b""
    finally:
        sock.close()


def test_get_authorizationpolicy_shows_computed_status(start_mesh):
    import yaml

    mesh = start_mesh(base(service_waypoint=False) + policy("nowhere", "targetRefs: [{kind: Service, group: '', name: svc}]"))
    doc = yaml.safe_load(mesh.cli("get", "authorizationpolicy", "nowhere", "-n", "app", "-o", "yaml").stdout)
    (c,) = doc["status"]["conditions"]
    assert (c["type"], c["status"], c["reason"]) == ("WaypointAccepted", "False", "AncestorNotBound")
    table = mesh.cli("get", "ap", "-n", "app").stdout.splitlines()
    assert table[0].split() == ["NAME", "ACTION", "AGE"] and table[1].split()[:2] == ["nowhere", "ALLOW"]
