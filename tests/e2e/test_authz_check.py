"""`waypost x authz check` predicts exactly what real Envoy does: the seed table of test_authorization.py
and L7/JWT cases, each in its own namespace of a few shared meshes, predicted from the proxies' config
dumps and then sent for real.

Every row states the outcome it expects too, so a prediction that agreed with a broken data plane (or a
data plane that agreed with a broken prediction) would still fail.
"""

from __future__ import annotations

import time

import pytest

from tests.manifests import waypoint

from .test_authorization import policy
from .test_jwt import ISS1, ISS2, WRONG_KEY, jwks

pytestmark = pytest.mark.e2e


def tenant(ns: str, *, service_waypoint: bool = True, tcp: bool = False) -> str:
    """One seed-table namespace: services svc (http 80) and other, client/intruder/backend/other pods, and a
    waypoint used by both services (none at all without `service_waypoint`: the xDS server takes ~16 proxies)."""
    label = "labels: {istio.io/use-waypoint: waypoint}" if service_waypoint else ""
    doc = f"\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{istio.io/dataplane-mode: ambient}}}}\n"
    doc += waypoint(ns) if service_waypoint else ""
    doc += f"""
---
apiVersion: v1
kind: Service
metadata: {{name: svc, namespace: {ns}, {label}}}
spec:
  selector: {{app: backend}}
  ports: [{{name: http, port: 80, targetPort: 8080}}{", {name: tcp, port: 9000}" if tcp else ""}]
---
apiVersion: v1
kind: Service
metadata: {{name: other, namespace: {ns}, {label}}}
spec:
  selector: {{app: other}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"""
    for name, image in (("client", "curl"), ("intruder", "curl"), ("backend", "waypost/echo"), ("other", "waypost/echo")):
        ports = (", ports: [{containerPort: 8080}, {containerPort: 9000}]" if tcp else ", ports: [{containerPort: 8080}]") if image == "waypost/echo" else ""
        doc += f"""
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{serviceAccountName: {name}, containers: [{{name: c, image: {image}{ports}}}]}}
"""
    return doc


SHARED = """
---
apiVersion: v1
kind: Namespace
metadata: {name: outside}
---
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: outsider, namespace: outside}
spec:
  selector: {matchLabels: {app: outsider}}
  template: {metadata: {labels: {app: outsider}}, spec: {serviceAccountName: outsider, containers: [{name: c, image: curl}]}}
"""


def client(ns: str) -> str:
    return f"cluster.local/ns/{ns}/sa/client"


def wp(ns: str) -> str:
    return f"cluster.local/ns/{ns}/sa/waypoint"


def allow_from(principal: str, selector: bool = True) -> str:
    sel = "selector: {matchLabels: {app: backend}}\n" if selector else ""
    return f"{sel}rules: [{{from: [{{source: {{principals: ['{principal}']}}}}]}}]"


def l7(ns: str, target: str) -> str:
    return f"targetRefs: [{{{target}}}]\nrules:\n- from: [{{source: {{principals: ['{client(ns)}']}}}}]\n  to: [{{operation: {{methods: [GET]}}}}]"


GATEWAY = "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]"
SERVICE = "targetRefs: [{kind: Service, group: '', name: svc}]"
L7_RULES = """
rules:
- to: [{operation: {methods: [GET], paths: [/allowed]}}]
- from: [{source: {principals: ['cluster.local/ns/c31/sa/client']}}]
  to: [{operation: {methods: [GET], paths: [/allowed-identity]}}]
- from: [{source: {principals: [cluster.local/ns/c31/sa/someone-else]}}]
  to: [{operation: {methods: [GET], paths: [/denied-identity]}}]
- to: [{operation: {methods: [GET], paths: ['/allowed-wildcard*']}}]
- to: [{operation: {methods: [GET], paths: [/headers]}}]
  when: [{key: 'request.headers[x-test-header]', values: [match], notValues: [do-not-match]}]
- to: [{operation: {methods: [POST]}}]
- to: [{operation: {notPaths: ['/secret*'], methods: [PUT]}}]
"""

TREE_RULES = """
rules:
- from: [{source: {principals: [cluster.local/ns/t1/sa/client]}}]
  to: [{operation: {methods: [GET], paths: ['*.html']}}]
- from: [{source: {principals: [cluster.local/ns/t1/sa/intruder, cluster.local/ns/t1/sa/client]}}]
  to: [{operation: {paths: ['/api/*']}}]
- from: [{source: {namespaces: [t1]}}]
  to: [{operation: {paths: [/public]}}]
- from: [{source: {principals: [cluster.local/ns/t1/sa/backend]}}]
"""
TREE_DENY_RULES = """
rules:
- from: [{source: {principals: [cluster.local/ns/t1/sa/client]}}]
  to: [{operation: {paths: ['/api/secret*']}}]
- from: [{source: {principals: [cluster.local/ns/t1/sa/intruder]}}]
  to: [{operation: {paths: ['/api/admin*']}}]
- from: [{source: {principals: [cluster.local/ns/t1/sa/other]}}]
- to: [{operation: {paths: [/blocked]}}]
"""


def request_authentication(ns: str) -> str:
    return (
        f"\n---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: {ns}}}\n"
        f"spec:\n  {GATEWAY}\n  jwtRules:\n  - issuer: {ISS1.name}\n    jwks: '{jwks(ISS1)}'\n    audiences: [svc-audience]\n"
        f"  - issuer: {ISS2.name}\n    jwks: '{jwks(ISS2)}'\n"
    )


MAIN = (
    SHARED
    + tenant("r1", service_waypoint=False) + policy("allow-client", allow_from(client("r1")), ns="r1")
    + tenant("r2") + policy("allow-client", allow_from(client("r2")), ns="r2")
    + tenant("r2b") + policy("allow-waypoint", allow_from(wp("r2b")), ns="r2b")
    + tenant("r3", service_waypoint=False) + policy("ns-wide", allow_from(client("r3"), selector=False), ns="r3")
    + tenant("r4") + policy("ns-wide", allow_from(client("r4"), selector=False), ns="r4")
    + tenant("r5") + policy("l7", l7("r5", "kind: Service, group: '', name: svc"), ns="r5")
    + tenant("r6") + policy("l7", l7("r6", "kind: Gateway, group: gateway.networking.k8s.io, name: waypoint"), ns="r6")
    + tenant("r9", service_waypoint=False) + policy("nowhere", SERVICE, ns="r9")
    + tenant("r10") + policy("deny-all-at-waypoint", SERVICE, ns="r10")
    + tenant("r10b") + policy("only-waypoint", allow_from(wp("r10b")), ns="r10b")
    + tenant("c31") + policy("l7-allow", GATEWAY + L7_RULES, ns="c31")
    + policy("explicit-deny", f"{GATEWAY}\naction: DENY\nrules: [{{to: [{{operation: {{paths: [/explicit-deny]}}}}]}}]", ns="c31")
    + policy("audit", f"{GATEWAY}\naction: AUDIT\nrules: [{{to: [{{operation: {{paths: [/allowed]}}}}]}}]", ns="c31")
    + tenant("c36", service_waypoint=False) + policy("l7-at-ztunnel", "selector: {matchLabels: {app: backend}}\nrules: [{to: [{operation: {methods: [GET], paths: [/allowed]}}]}]", ns="c36")
    + tenant("c26") + policy("hdr", f"{SERVICE}\nrules: [{{when: [{{key: 'request.headers[x-foo]', values: [x-bar]}}]}}]", ns="c26")
    + tenant("c25") + policy("only-else", "targetRefs: [{kind: Service, group: core, name: svc}]\nrules: [{from: [{source: {principals: [cluster.local/ns/something/sa/else]}}]}]", ns="c25")
    # C23/C24: L4 policies on a TCP port, at the waypoint's TCP chain and at the destination ztunnel.
    + tenant("c23", tcp=True) + policy("svc", f"{SERVICE}\nrules: [{{from: [{{source: {{principals: ['{client('c23')}']}}}}]}}]", ns="c23")
    + policy("pod", allow_from(wp("c23")), ns="c23")
    + tenant("c24", tcp=True) + policy("svc", f"{SERVICE}\nrules: [{{from: [{{source: {{principals: [cluster.local/ns/something/sa/else]}}}}]}}]", ns="c24")
    # Rules that name their callers: the waypoint's RBAC filters are match trees keyed on the caller
    # (envoy.rbac_matcher), with a rule for anyone (namespaces) in every caller's bucket.
    + tenant("t1") + policy("allow", f"{SERVICE}\n{TREE_RULES}", ns="t1")
    + policy("deny", f"{SERVICE}\naction: DENY\n{TREE_DENY_RULES}", ns="t1")
    + tenant("jwt") + request_authentication("jwt")
    + policy("require", f"{GATEWAY}\nrules:\n- from: [{{source: {{requestPrincipals: ['{ISS1.name}/sub-1']}}}}]\n- to: [{{operation: {{paths: [/healthz]}}}}]\n"
             f"- from: [{{source: {{requestPrincipals: ['*']}}}}]\n  to: [{{operation: {{paths: ['/claims/*']}}}}]\n  when: [{{key: 'request.auth.claims[groups]', values: [admins]}}]", ns="jwt")
)
ROOT_ALLOW_NOTHING = SHARED + tenant("r12") + tenant("r12b") + policy("allow-nothing", "{}", ns="istio-system") + policy("allow-waypoint", allow_from(wp("r12b"), selector=False), ns="r12b")
ROOT_GATEWAYCLASS = SHARED + tenant("r7") + policy("allow-nothing", "targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]", ns="istio-system")


def bearer(token: str) -> list[str]:
    return [f"Authorization: Bearer {token}"]


NOW = int(time.time())
# (mesh, source, url, method, headers, expected: "200" | "403" | "401" | "503" | "reset")
CASES = [
    ("main", "r1/client", "http://svc/", "GET", [], "200"),
    ("main", "r1/intruder", "http://svc/", "GET", [], "reset"),
    ("main", "r2/client", "http://svc/", "GET", [], "503"),
    ("main", "r2b/client", "http://svc/", "GET", [], "200"),
    ("main", "r2b/intruder", "http://svc/", "GET", [], "200"),
    ("main", "r3/client", "http://svc/", "GET", [], "200"),
    ("main", "r3/intruder", "http://svc/", "GET", [], "reset"),
    ("main", "r4/client", "http://svc/", "GET", [], "503"),
    ("main", "r5/client", "http://svc/", "GET", [], "200"),
    ("main", "r5/client", "http://svc/", "POST", [], "403"),
    ("main", "r5/intruder", "http://svc/", "GET", [], "403"),
    ("main", "r6/client", "http://svc.r6.svc.cluster.local/", "GET", [], "200"),
    ("main", "r6/client", "http://svc/", "POST", [], "403"),
    ("main", "r6/intruder", "http://other/", "GET", [], "403"),
    ("main", "r5/intruder", "http://other/", "GET", [], "200"),
    ("main", "r9/intruder", "http://svc/", "GET", [], "200"),
    ("main", "r10/client", "http://svc/", "GET", [], "403"),
    ("main", "outside/outsider", "http://svc.r10/", "GET", [], "200"),
    ("main", "outside/outsider", "http://svc.r10b/", "GET", [], "reset"),
    ("main", "r10b/client", "http://svc/", "GET", [], "200"),
    ("main", "r10/intruder", "pod:r10/backend:8080", "GET", [], "200"),  # row 11: pod IP skips the service waypoint
    ("main", "r10/intruder", "http://svc/", "GET", [], "403"),
    ("main", "c31/client", "http://svc/deny", "GET", [], "403"),
    ("main", "c31/client", "http://svc/allowed", "GET", [], "200"),
    ("main", "c31/client", "http://svc/allowed-identity", "GET", [], "200"),
    ("main", "c31/client", "http://svc/allowed-wildcardtest", "GET", [], "200"),
    ("main", "c31/client", "http://svc/headers", "GET", ["x-test-header: match"], "200"),
    ("main", "c31/client", "http://svc/denied-identity", "GET", [], "403"),
    ("main", "c31/client", "http://svc/explicit-deny", "POST", [], "403"),
    ("main", "c31/client", "http://svc/headers", "GET", ["x-test-header: do-not-match"], "403"),
    ("main", "c31/intruder", "http://svc/allowed-identity", "GET", [], "403"),
    ("main", "c31/client", "http://svc/a/../allowed", "GET", [], "200"),
    ("main", "c31/client", "http://svc/allowed;x=1", "GET", [], "200"),
    ("main", "c31/client", "http://svc//explicit-deny", "POST", [], "403"),
    ("main", "c31/client", "http://svc/explicit-deny%2F..%2Fexplicit-deny", "POST", [], "403"),
    ("main", "c31/client", "http://svc/public", "PUT", [], "200"),
    ("main", "c31/client", "http://svc/secret/x", "PUT", [], "403"),
    ("main", "c31/client", "http://svc/ALLOWED", "GET", [], "403"),
    ("main", "c36/client", "http://svc/allowed", "GET", [], "reset"),
    ("main", "c26/client", "http://svc/", "GET", ["x-foo: x-bar"], "200"),
    ("main", "c26/client", "http://svc/", "GET", ["x-foo: wrong-value"], "403"),
    ("main", "c25/client", "http://svc/", "GET", [], "403"),
    ("main", "c25/client", "http://other/", "GET", [], "200"),
    ("main", "c23/client", "http://svc:9000/", "GET", [], "200"),  # C23: the L4 rule admits the client at the waypoint
    ("main", "c23/intruder", "http://svc:9000/", "GET", [], "reset"),  # the waypoint's TCP RBAC closes
    ("main", "c24/client", "http://svc:9000/", "GET", [], "reset"),  # C24
    ("main", "t1/client", "http://svc/index.html", "GET", [], "200"),
    ("main", "t1/client", "http://svc/index.html?x=1", "GET", [], "200"),
    ("main", "t1/client", "http://svc/a?b.html", "GET", [], "403"),  # url_path: the query does not count
    ("main", "t1/client", "http://svc/index.html", "POST", [], "403"),
    ("main", "t1/intruder", "http://svc/index.html", "GET", [], "403"),
    ("main", "t1/intruder", "http://svc/api/x", "POST", [], "200"),
    ("main", "t1/client", "http://svc/api/x", "GET", [], "200"),
    ("main", "t1/client", "http://svc/api/secret/x", "GET", [], "403"),  # the DENY tree, client's bucket
    ("main", "t1/intruder", "http://svc/api/secret/x", "GET", [], "200"),  # no DENY rule for the intruder
    ("main", "t1/intruder", "http://svc/public?x", "GET", [], "200"),  # the rule for anyone in t1
    ("main", "t1/client", "http://svc/public", "GET", [], "200"),
    ("main", "t1/intruder", "http://svc/private", "GET", [], "403"),
    ("main", "t1/intruder", "http://svc/api/admin", "GET", [], "403"),  # the DENY tree, intruder's bucket
    ("main", "t1/client", "http://svc/api/admin", "GET", [], "200"),
    ("main", "t1/client", "http://svc/blocked", "GET", [], "403"),  # a DENY rule for anyone, in every bucket
    ("main", "jwt/client", "http://svc/", "GET", [], "403"),
    ("main", "jwt/client", "http://svc/healthz", "GET", [], "200"),
    ("main", "jwt/client", "http://svc/", "GET", bearer(ISS1.token(aud="svc-audience")), "200"),
    ("main", "jwt/client", "http://svc/", "GET", bearer(ISS1.token(sub="sub-2", aud="svc-audience")), "403"),
    ("main", "jwt/client", "http://svc/", "GET", bearer(ISS2.token()), "403"),
    ("main", "jwt/client", "http://svc/", "GET", bearer(ISS1.token(aud="svc-audience", key=WRONG_KEY)), "401"),
    ("main", "jwt/client", "http://svc/", "GET", bearer(ISS1.token(aud="svc-audience", exp=NOW - 3600)), "401"),
    ("main", "jwt/client", "http://svc/", "GET", bearer(ISS1.token(aud="svc-audience", nbf=NOW + 3600)), "401"),
    ("main", "jwt/client", "http://svc/", "GET", bearer(ISS1.token(aud="svc-audience", iss="someone-else")), "401"),
    ("main", "jwt/client", "http://svc/", "GET", bearer(ISS1.token(aud="other-audience")), "403"),
    ("main", "jwt/client", "http://svc/", "GET", bearer("not.a.jwt!!"), "401"),
    ("main", "jwt/client", "http://svc/claims/x", "GET", bearer(ISS2.token(extra={"groups": ["admins"]})), "200"),
    ("main", "jwt/client", "http://svc/claims/x", "GET", bearer(ISS2.token(extra={"groups": "admins"})), "200"),
    ("main", "jwt/client", "http://svc/claims/x", "GET", bearer(ISS2.token(extra={"groups": ["users"]})), "403"),
    ("main", "jwt/client", "http://svc/?access_token=" + ISS1.token(aud="svc-audience"), "GET", [], "200"),
    ("root", "r12/client", "http://svc/", "GET", [], "503"),
    ("root", "r12b/client", "http://svc/", "GET", [], "200"),
    ("root", "r12/client", "pod:r12/backend:8080", "GET", [], "reset"),
    ("gatewayclass", "r7/client", "http://svc/", "GET", [], "403"),
    ("gatewayclass", "r7/client", "http://other/", "GET", [], "403"),
]


@pytest.fixture(scope="module")
def meshes(tmp_path_factory):
    from tests.conftest import RunningMesh, waypost

    root = tmp_path_factory.mktemp("authz-check")
    started = {}
    try:
        for name, text in (("main", MAIN), ("root", ROOT_ALLOW_NOTHING), ("gatewayclass", ROOT_GATEWAYCLASS)):
            (root / f"{name}.yaml").write_text(text)
            state = root / f"{name}-state"
            started[name] = RunningMesh(state)
            waypost("up", "-f", str(root / f"{name}.yaml"), "--detach", "--no-watch", "--state-dir", str(state), check=True)
        yield started
    finally:
        for mesh in started.values():
            waypost("down", "--state-dir", str(mesh.state_dir))


def _expected(prediction, real) -> tuple[str, str]:
    predicted = "reset" if prediction.verdict == "denied" and prediction.status is None else "200" if prediction.verdict == "allowed" else str(prediction.status)
    actual = "reset" if real.status is None else str(real.status)
    return predicted, actual


def test_every_prediction_matches_real_envoy(meshes):
    from waypost.cli import authz_check as ac

    loaded = {name: ac.live_mesh(mesh.state) for name, mesh in meshes.items()}
    failures = []
    for mesh_name, source, url, method, headers, expected in CASES:
        mesh = meshes[mesh_name]
        if url.startswith("pod:"):
            ns, rest = url[4:].split("/")
            owner, port = rest.split(":")
            url = f"http://{mesh.pods(ns, owner)[0]['address']}:{port}/"
        evaluation, _, parsed = ac.run(loaded[mesh_name], source, url, method, headers)
        real = ac.send(mesh.state, source, url, method, parsed, timeout=5)
        predicted, actual = _expected(evaluation.outcome, real)
        agreed = ac.matches(evaluation.outcome, real)
        if predicted != expected or actual != expected or not agreed:
            failures.append(f"{mesh_name} {source} {method} {url[:80]}: expected {expected}, predicted {predicted} ({evaluation.outcome.reason}), real {actual} {real.body[:60]!r}")
    assert not failures, "\n".join(failures)


def test_cli_check_names_the_deciding_policy_and_send_agrees(meshes):
    mesh = meshes["main"]
    out = mesh.cli("x", "authz", "check", "--from", "c31/client", "-X", "POST", "http://svc/explicit-deny", "--send").stdout
    assert "ns[c31]-policy[explicit-deny]-rule[0]  <- matched" in out, out
    assert "DENIED: 403" in out and "matches the prediction" in out, out
    out = mesh.cli("x", "authz", "check", "--from", "r2/client", "http://svc/", "--send").stdout
    assert "destination ztunnel" in out and "peer spiffe://cluster.local/ns/r2/sa/waypoint" in out, out
    assert "DENIED: 503" in out and "matches the prediction" in out, out
    # The match trees name the deciding rule as the rules engine would, in `authz check` and in the access log.
    out = mesh.cli("x", "authz", "check", "--from", "t1/client", "http://svc/api/secret/x", "--send").stdout
    assert "ns[t1]-policy[deny]-rule[0]  <- matched" in out and "DENIED: 403" in out and "matches the prediction" in out, out
    out = mesh.cli("x", "authz", "check", "--from", "t1/intruder", "http://svc/private", "--send").stdout
    assert "ns[t1]-policy[allow]-rule[1]" in out and "DENIED: 403" in out and "matches the prediction" in out, out
    t1 = next(p for p in mesh.state["proxies"] if p["name"] == "waypoint~t1~waypoint")
    dump = mesh.cli("proxy-config", "listener", t1["name"], "-o", "json").stdout
    assert dump.count('"exact_match_map"') >= 2, "t1's ALLOW and DENY filters should be match trees"
    deadline = time.monotonic() + 10
    while True:
        lines = mesh.cli("logs", t1["name"]).stdout.splitlines()
        secret = [line for line in lines if '"GET /api/secret/x' in line and " 403 " in line]
        private = [line for line in lines if '"GET /private' in line]
        if (secret and private) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert secret and secret[-1].endswith("# denied by AuthorizationPolicy t1/deny, rule 0"), lines
    assert private and private[-1].endswith("# denied: no ALLOW AuthorizationPolicy rule matched"), lines
    import json

    doc = json.loads(mesh.cli("x", "authz", "check", "--from", "r1/intruder", "http://svc/", "-o", "json").stdout)
    assert doc["outcome"]["verdict"] == "denied" and doc["outcome"]["status"] is None
    assert doc["outcome"]["policy"] is None and "network RBAC (ALLOW) denies" in doc["outcome"]["reason"]


def test_ztunnel_config_shows_the_running_mesh(meshes):
    mesh = meshes["main"]
    policies = mesh.cli("ztunnel-config", "policy", "-n", "r10b").stdout.splitlines()
    assert policies[0].split() == ["NAMESPACE", "POLICY", "NAME", "ACTION", "SCOPE"]
    assert policies[1].split() == ["r10b", "only-waypoint", "Allow", "WorkloadSelector"]
    workloads = mesh.cli("ztunnel-config", "workload", "-n", "outside").stdout.splitlines()
    assert workloads[1].split()[0] == "outside" and workloads[1].split()[-2:] == ["None", "TCP"]
    services = mesh.cli("ztunnel-config", "service", "-n", "r1").stdout.splitlines()
    assert [line.split()[1] for line in services[1:]] == ["other", "svc"]
