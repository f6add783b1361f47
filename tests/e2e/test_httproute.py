"""HTTPRoute in the waypoint, feature by feature, with real Envoy and real requests."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.manifests import ambient_namespace, ambient_with_waypoint, client

pytestmark = pytest.mark.e2e

BASE = ambient_with_waypoint("r") + ambient_namespace("c") + client("c")

for version in ("v1", "v2"):
    BASE += f"""
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo-{version}, namespace: r}}
spec:
  selector: {{matchLabels: {{app: echo, version: {version}}}}}
  template:
    metadata: {{labels: {{app: echo, version: {version}}}}}
    spec: {{containers: [{{name: e, image: waypost/echo, ports: [{{name: http, containerPort: 8080}}]}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo-{version}, namespace: r}}
spec:
  selector: {{app: echo, version: {version}}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"""

for svc in ("m", "h", "rd", "rw", "t", "rt", "w", "nb", "mi", "co", "cs", "g", "bad", "many"):
    BASE += f"""
---
apiVersion: v1
kind: Service
metadata: {{name: {svc}, namespace: r}}
spec:
  selector: {{app: echo}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"""

MANY_RULES = [(f"p{i}", f"{{path: {{type: PathPrefix, value: /p{i}}}}}") for i in range(8)] + [
    ("api", "{path: {type: PathPrefix, value: /api}}"),
    ("api-v1", "{path: {type: PathPrefix, value: /api/v1}}"),
    ("api-v1-post", "{path: {type: PathPrefix, value: /api/v1}, method: POST}"),
    ("exact", "{path: {type: Exact, value: /p1/exact}}"),
    ("regex", "{path: {type: RegularExpression, value: '/p[0-9]+x'}}"),
    ("header", "{headers: [{name: x-pick, value: me}]}"),
]


def route(name: str, svc: str, rules: str, ns: str = "r", parent: str | None = None) -> str:
    parent = parent or f'{{group: "", kind: Service, name: {svc}, namespace: r}}'
    return f"""
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {ns}}}
spec:
  parentRefs: [{parent}]
  rules:
{rules}
"""


ROUTES = (
    route(
        "matching",
        "m",
        """
  - matches: [{headers: [{name: Version, value: one}]}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{method: PATCH}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: Exact, value: /exact}}, {queryParams: [{name: animal, value: whale}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: RegularExpression, value: "/re/[0-9]+"}}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /v1}}]
    backendRefs: [{name: echo-v1, port: 80}]
""",
    )
    + route(
        "mods",
        "h",
        """
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Set, value: set-value}]
        add: [{name: X-Add, value: added}]
        remove: [X-Remove]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: X-Resp, value: from-route}]
    backendRefs:
    - name: echo-v1
      port: 80
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {add: [{name: X-Backend, value: v1}]}
""",
    )
    + route(
        "redirects",
        "rd",
        """
  - matches: [{path: {value: /host}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.com, statusCode: 301}}]
  - matches: [{path: {value: /scheme}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
  - matches: [{path: {value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, port: 8443}}]
""",
    )
    + route(
        "rewrite",
        "rw",
        """
  - matches: [{path: {value: /prefix}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: rewritten.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /rewritten}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {value: /strip}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {value: /full}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /replaced}}}]
    backendRefs: [{name: echo-v1, port: 80}]
""",
    )
    + route(
        "timeouts",
        "t",
        """
  - timeouts: {request: 300ms}
    backendRefs: [{name: echo-v1, port: 80}]
""",
    )
    + route(
        "retries",
        "rt",
        """
  - matches: [{path: {value: /retry}}]
    retry: {attempts: 3, codes: [500]}
    backendRefs: [{name: echo-v1, port: 80}]
""",
    )
    + route(
        "weights",
        "w",
        """
  - backendRefs:
    - {name: echo-v1, port: 80, weight: 1}
    - {name: does-not-exist, port: 80, weight: 1}
    - {name: echo-v2, port: 80, weight: 0}
""",
    )
    + route("nobackend", "nb", "  - matches: [{path: {value: /}}]\n")
    + route(
        "mirror",
        "mi",
        """
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 80}}}]
    backendRefs: [{name: echo-v1, port: 80}]
""",
    )
    + route(
        "cors",
        "co",
        """
  - filters:
    - type: CORS
      cors: {allowOrigins: ["https://*.example.com"], allowMethods: [GET, PUT], allowHeaders: [x-custom], maxAge: 60}
    backendRefs: [{name: echo-v1, port: 80}]
""",
    )
    + route("producer", "cs", "  - backendRefs: [{name: echo-v1, port: 80}]\n")
    + route("consumer", "cs", "  - backendRefs: [{name: echo-v2, namespace: r, port: 80}]\n", ns="c")
    + route(
        "whole-waypoint",
        "g",
        "  - matches: [{path: {value: /gw}}]\n    backendRefs: [{name: echo-v2, port: 80}]\n",
        parent="{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}",
    )
    # Enough path rules for the waypoint to route `many` through a prefix match tree (route_matcher).
    + route("many", "many", "".join(
        f"  - matches: [{match}]\n    filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-rule, value: '{name}'}}]}}}}]\n"
        "    backendRefs: [{name: echo-v1, port: 80}]\n"
        for name, match in MANY_RULES
    ))
    + route(
        "invalid-regex",
        "bad",
        "  - matches: [{path: {type: RegularExpression, value: '(unclosed'}}]\n    backendRefs: [{name: echo-v1, port: 80}]\n",
    )
)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    from tests.conftest import RunningMesh, waypost

    root = tmp_path_factory.mktemp("httproute")
    (root / "mesh.yaml").write_text(BASE + ROUTES)
    state_dir = root / "state"
    waypost("up", "-f", str(root / "mesh.yaml"), "--detach", "--state-dir", str(state_dir), check=True)
    yield RunningMesh(state_dir)
    waypost("down", "--state-dir", str(state_dir))


def get(mesh, url, *, source="r/client", **kw):
    return mesh.request(source, url, **kw)


def pod_of(response) -> str:
    assert response.status == 200, (response.status, response.body)
    return json.loads(response.body)["pod"]


def seen(response) -> dict:
    assert response.status == 200, (response.status, response.body)
    return json.loads(response.body)


def header(response, name: str) -> list[str]:
    return [v for k, v in response.headers if k.lower() == name.lower()]


def test_header_method_query_path_matches(mesh):
    assert pod_of(get(mesh, "http://m/other", headers=[("version", "one")])).startswith("echo-v1-")
    # A longer path prefix outranks a header match (precedence step 2 before step 4).
    assert pod_of(get(mesh, "http://m/v2", headers=[("version", "one")])).startswith("echo-v2-")
    assert pod_of(get(mesh, "http://m/other", method="PATCH")).startswith("echo-v2-")
    assert pod_of(get(mesh, "http://m/other?animal=whale")).startswith("echo-v2-")
    assert pod_of(get(mesh, "http://m/exact")).startswith("echo-v2-")
    assert pod_of(get(mesh, "http://m/v2/x")).startswith("echo-v2-")
    assert pod_of(get(mesh, "http://m/re/42")).startswith("echo-v2-")
    assert pod_of(get(mesh, "http://m/v1")).startswith("echo-v1-")


def test_unmatched_request_gets_404_once_a_route_is_attached(mesh):
    assert get(mesh, "http://m/nothing").status == 404
    assert get(mesh, "http://m/exact/more").status == 404  # Exact does not match a longer path
    assert get(mesh, "http://m/re/abc").status == 404


def test_request_and_response_header_modifiers(mesh):
    r = get(mesh, "http://h/", headers=[("X-Set", "client"), ("X-Add", "client"), ("X-Remove", "gone")])
    headers = seen(r)["headers"]
    assert headers["X-Set"] == ["set-value"]
    assert headers["X-Add"] == ["client", "added"]  # add keeps the client's value first
    assert "X-Remove" not in headers
    assert headers["X-Backend"] == ["v1"]  # backendRef filter
    assert header(r, "x-resp") == ["from-route"]


def test_redirects_are_answered_by_the_waypoint(mesh):
    r = get(mesh, "http://rd/host")
    assert (r.status, header(r, "location")) == (301, ["http://example.com/host"])
    r = get(mesh, "http://rd/scheme")
    assert (r.status, header(r, "location")) == (302, ["https://rd/scheme"])
    r = get(mesh, "http://rd/old/page?q=1")
    assert (r.status, header(r, "location")) == (302, ["http://rd:8443/new/page?q=1"])


def test_url_rewrite(mesh):
    body = seen(get(mesh, "http://rw/prefix/a/b?x=1"))
    assert (body["path"], body["host"]) == ("/rewritten/a/b?x=1", "rewritten.example")
    assert seen(get(mesh, "http://rw/strip/three"))["path"] == "/three"
    assert seen(get(mesh, "http://rw/strip"))["path"] == "/"
    assert seen(get(mesh, "http://rw/full/anything"))["path"] == "/replaced"


def test_request_timeout_gives_504(mesh):
    assert get(mesh, "http://t/?delay=1s").status == 504
    assert get(mesh, "http://t/?delay=10ms").status == 200


def test_retry_on_listed_codes_only(mesh):
    token = uuid.uuid4().hex
    ok = get(mesh, f"http://rt/retry/x?uuid={token}&succeedAfter=2&responseCode=500")
    assert ok.status == 200  # two failures retried, third attempt succeeds
    token = uuid.uuid4().hex
    assert get(mesh, f"http://rt/retry/x?uuid={token}&succeedAfter=1&responseCode=503").status == 503


def test_invalid_backend_gets_500_for_its_share_and_weight_zero_gets_nothing(mesh):
    statuses = []
    for _ in range(60):
        r = get(mesh, "http://w/")
        statuses.append(r.status)
        if r.status == 200:
            assert json.loads(r.body)["pod"].startswith("echo-v1-")  # never the weight-0 echo-v2
    # Half the weight points at a missing Service: expect about 30 of 60 as 500 (binomial, ±5 sd).
    assert 10 <= statuses.count(500) <= 50 and statuses.count(500) + statuses.count(200) == 60
    status = next(c for c in mesh.state["conditions"] if c["kind"] == "HTTPRoute" and c["name"] == "weights")
    resolved = status["parents"][0]["conditions"][1]
    assert (resolved["status"], resolved["reason"]) == ("False", "BackendNotFound")


def test_rule_without_backends_gets_500(mesh):
    assert get(mesh, "http://nb/").status == 500


def test_request_mirror_sends_a_copy(mesh):
    marker = uuid.uuid4().hex
    assert pod_of(get(mesh, f"http://mi/mirror-{marker}")).startswith("echo-v1-")
    log = (mesh.state_dir / "logs" / "workloads.log")
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [l for l in log.read_text().splitlines() if f"mirror-{marker}" in l]
        if any("/echo-v2-" in l for l in lines):
            break
        time.sleep(0.1)
    assert any("/echo-v2-" in l for l in lines), lines  # the mirror backend logged the copy


def test_cors_preflight_and_simple_request(mesh):
    pre = get(mesh, "http://co/", method="OPTIONS", headers=[("Origin", "https://a.b.example.com"), ("Access-Control-Request-Method", "PUT")])
    assert pre.status in (200, 204)
    assert header(pre, "access-control-allow-origin") == ["https://a.b.example.com"]
    assert header(pre, "access-control-max-age") == ["60"]
    simple = get(mesh, "http://co/", headers=[("Origin", "https://x.example.com")])
    assert header(simple, "access-control-allow-origin") == ["https://x.example.com"]
    other = get(mesh, "http://co/", headers=[("Origin", "https://evil.test")])
    assert header(other, "access-control-allow-origin") == []


def test_consumer_route_applies_only_to_its_namespace(mesh):
    assert pod_of(get(mesh, "http://cs.r/")).startswith("echo-v1-")  # producer route
    assert pod_of(get(mesh, "http://cs.r/", source="c/client")).startswith("echo-v2-")  # consumer route


def test_route_attached_to_the_whole_waypoint(mesh):
    assert pod_of(get(mesh, "http://g/gw")).startswith("echo-v2-")
    assert get(mesh, "http://g/other").status == 404


def test_invalid_regex_is_a_status_condition_and_the_rest_keeps_working(mesh):
    status = next(c for c in mesh.state["conditions"] if c["kind"] == "HTTPRoute" and c["name"] == "invalid-regex")
    accepted = status["parents"][0]["conditions"][0]
    assert (accepted["status"], accepted["reason"]) == ("False", "UnsupportedValue")
    assert "regular expression" in accepted["message"]
    # No valid route of its own: the route attached to the whole waypoint serves the Service.
    assert pod_of(get(mesh, "http://bad/gw")).startswith("echo-v2-")


def test_many_path_rules_route_as_the_list_would(mesh):
    """`many` has 14 rules, so its waypoint looks paths up in a prefix tree; every request still gets the
    rule Gateway API precedence picks (longest path first, then method and header matches)."""
    routes = mesh.cli("proxy-config", "route", next(p["name"] for p in mesh.state["proxies"] if p["kind"] == "waypoint"), "-o", "json").stdout
    assert '"prefix_match_map"' in routes and '"many.r.svc.cluster.local:80"' in routes, routes[:2000]
    cases = [
        ("/p3", "GET", [], "p3"),
        ("/p3/x?y=/p5", "GET", [], "p3"),
        ("/p1/exact", "GET", [], "exact"),  # Exact outranks the PathPrefix /p1
        ("/p1/exact/more", "GET", [], "p1"),
        ("/p12x", "GET", [], "regex"),  # no /p12 segment rule: the tree's /p1 entry must not take it
        ("/p1x", "GET", [], "regex"),
        ("/api/v1/items", "POST", [], "api-v1-post"),
        ("/api/v1/items", "GET", [], "api-v1"),
        ("/api/v2", "GET", [], "api"),
        ("/apiv1", "GET", [("x-pick", "me")], "header"),
        ("/p7", "GET", [("x-pick", "me")], "p7"),  # a path match outranks a header match
    ]
    for path, method, headers, rule in cases:
        got = seen(get(mesh, f"http://many{path}", method=method, headers=headers))["headers"].get("X-Rule")
        assert got == [rule], (path, method, headers, got)
    assert get(mesh, "http://many/other").status == 404
    assert get(mesh, "http://many/p12").status == 404
    # the prediction reads the tree as Envoy does
    out = mesh.cli("x", "authz", "check", "--from", "r/client", "http://many/api/v1/x", "--send").stdout
    assert "ALLOWED" in out and "matches the prediction" in out, out
