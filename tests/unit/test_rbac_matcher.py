"""envoy.rbac_matcher: the match tree an RBAC filter carries instead of its rules decides every request as
the rules would, naming the same policy.

Both sides are read by envoy.evaluate, which models Envoy's rules engine and its match-tree engine
separately (the e2e tests in test_authz_check hold those models to real Envoy): generated policy sets
and requests must get the same decision and the same matched policy name from both.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from waypost.api import load_text
from waypost.envoy import rbac, rbac_matcher
from waypost.envoy.evaluate import Attributes, rbac_engine, rbac_filter, rbac_tree_engine

from tests.e2e.test_authorization import policy
from tests.manifests import ambient_with_waypoint, echo_service

PEER = "io.istio.peer_principal"
CALLERS = ["cluster.local/ns/a/sa/x", "cluster.local/ns/a/sa/y", "cluster.local/ns/b/sa/x", "cluster.local/ns/b/sa/z"]
PRINCIPAL_VALUES = CALLERS + ["cluster.local/ns/a/*", "*/sa/x", "*"]
PATHS = ["/api/*", "/x", "*.html", "/a/b", "*", "/q?x", "/x/{*}", "*/b"]
REQUEST_PATHS = ["/api/v", "/api/v?x.html", "/x", "/x?y", "/x#f", "/x;p", "/a/b;c", "/q?x", "/index.html",
                 "/index.html?z", "/a?b.html", "/x/y", "/c/b", "/a/b?/b"]


def policies_yaml(draw_policies: list[dict]) -> str:
    docs = []
    for i, p in enumerate(draw_policies):
        docs.append(
            f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i}, namespace: a}}\n"
            f"spec:\n  targetRefs: [{{kind: Service, group: '', name: svc}}]\n  action: {p['action']}\n  rules: {p['rules']}\n"
        )
    return "---\n".join(docs)


def _flow(items: list[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in items) + "]"


@st.composite
def rule(draw) -> str:
    parts = []
    if draw(st.booleans()):
        source = {}
        if draw(st.integers(0, 3)):
            source["principals"] = draw(st.lists(st.sampled_from(PRINCIPAL_VALUES if draw(st.integers(0, 4)) == 0 else CALLERS), min_size=1, max_size=2, unique=True))
        if draw(st.integers(0, 4)) == 0:
            source["notPrincipals"] = draw(st.lists(st.sampled_from(CALLERS), min_size=1, max_size=1))
        if draw(st.integers(0, 4)) == 0:
            source["namespaces"] = draw(st.lists(st.sampled_from(["a", "b", "*"]), min_size=1, max_size=1))
        sources = [source] + ([{"principals": [draw(st.sampled_from(CALLERS))]}] if draw(st.integers(0, 3)) == 0 else [])
        parts.append("from: [" + ", ".join("{source: {" + ", ".join(f"{k}: {_flow(v)}" for k, v in s.items()) + "}}" for s in sources) + "]")
    if draw(st.booleans()):
        op = {}
        if draw(st.booleans()):
            op["paths"] = draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=2, unique=True))
        if draw(st.integers(0, 3)) == 0:
            op["notPaths"] = draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=1))
        if draw(st.booleans()):
            op["methods"] = draw(st.lists(st.sampled_from(["GET", "POST"]), min_size=1, max_size=1))
        if draw(st.integers(0, 3)) == 0:
            op["ports"] = [draw(st.sampled_from(["80", "81"]))]
        parts.append("to: [{operation: {" + ", ".join(f"{k}: {_flow(v)}" for k, v in op.items()) + "}}]")
    if draw(st.integers(0, 4)) == 0:
        key = draw(st.sampled_from(["request.headers[x-k]", "source.principal"]))
        values = [draw(st.sampled_from(["v1", "v*"]))] if key.startswith("request") else [draw(st.sampled_from(CALLERS))]
        parts.append(f"when: [{{key: '{key}', values: {_flow(values)}}}]")
    return "{" + ", ".join(parts) + "}"


@st.composite
def policy_set(draw) -> list[dict]:
    out = []
    for _ in range(draw(st.integers(1, 4))):
        rules = draw(st.lists(rule(), min_size=1, max_size=4))
        out.append({"action": draw(st.sampled_from(["ALLOW", "ALLOW", "DENY"])), "rules": "[" + ", ".join(rules) + "]"})
    return out


@st.composite
def request(draw) -> Attributes:
    caller = draw(st.sampled_from(CALLERS + ["cluster.local/ns/c/sa/w", None]))
    headers = [(":method", draw(st.sampled_from(["GET", "POST"]))), (":path", draw(st.sampled_from(REQUEST_PATHS))), (":authority", "svc")]
    if draw(st.booleans()):
        headers.append(("x-k", draw(st.sampled_from(["v1", "v2", "w"]))))
    return Attributes(
        destination_ip="10.0.0.1", destination_port=draw(st.sampled_from([80, 81])), remote_ip="10.1.0.5",
        filter_state={PEER: f"spiffe://{caller}"} if caller else {}, headers=tuple(headers), http=True,
    )


def _filters(yaml_text: str, tree: bool) -> list[dict]:
    loaded = load_text(yaml_text)
    assert not [d for d in loaded.diagnostics if d.severity == "error"], loaded.diagnostics
    return rbac.http_filters(list(loaded.resources), tree=tree)


@settings(max_examples=300, deadline=None)
@given(policy_set(), st.lists(request(), min_size=8, max_size=8))
def test_tree_decides_and_names_like_the_rules(policies, requests):
    text = policies_yaml(policies)
    for rules_filter in _filters(text, tree=False):
        matcher = rbac_matcher.compile_rules(rules_filter["typed_config"]["rules"], min_rules=1)
        if matcher is None:
            continue
        tree_config = {**{k: v for k, v in rules_filter["typed_config"].items() if k != "rules"}, "matcher": matcher}
        for a in requests:
            expected, _ = rbac_filter(rules_filter["typed_config"], a)
            got, _ = rbac_filter(tree_config, a)
            assert (got.allowed, got.matched, got.action) == (expected.allowed, expected.matched, expected.action), (text, a)


def _rules(policies: dict) -> dict:
    return {"action": "ALLOW", "policies": policies}


def _peer(value: str) -> dict:
    return {"filter_state": {"key": PEER, "string_match": {"exact": value}}}


GET = {"header": {"name": ":method", "string_match": {"exact": "GET"}}}


def test_a_bucket_lists_only_its_callers_rules_and_rules_for_anyone():
    policies = {
        "r0": {"permissions": [GET], "principals": [_peer("spiffe://p1")]},
        "r1": {"permissions": [GET], "principals": [{"or_ids": {"ids": [_peer("spiffe://p1"), _peer("spiffe://p2")]}}]},
        "r2": {"permissions": [{"header": {"name": ":method", "string_match": {"exact": "POST"}}}], "principals": [{"any": True}]},
    }
    tree = rbac_matcher.compile_rules(_rules(policies), min_rules=1)
    assert tree is not None
    buckets = tree["matcher_tree"]["exact_match_map"]["map"]
    names = {key: [m["on_match"]["action"]["typed_config"]["name"] for m in on["matcher"]["matcher_list"]["matchers"]] for key, on in buckets.items()}
    assert names == {"spiffe://p1": ["r0", "r1", "r2"], "spiffe://p2": ["r1", "r2"]}
    # in a bucket the caller is known: the principal checks are gone, only the method is left
    assert buckets["spiffe://p2"]["matcher"]["matcher_list"]["matchers"][0]["predicate"] == {
        "single_predicate": {"input": rbac_matcher.header_input(":method"), "value_match": {"exact": "GET"}}
    }
    rest = tree["on_no_match"]["matcher"]
    assert [m["on_match"]["action"]["typed_config"]["name"] for m in rest["matcher_list"]["matchers"]] == ["r2"]
    assert rest["on_no_match"]["action"]["typed_config"] == {"@type": rbac_matcher.T_ACTION, "name": "none", "action": "DENY"}


def test_a_rule_that_holds_for_its_caller_ends_the_bucket():
    policies = {"a": {"permissions": [{"any": True}], "principals": [_peer("spiffe://p1")]},
                "b": {"permissions": [GET], "principals": [{"any": True}]}}
    tree = rbac_matcher.compile_rules({"action": "DENY", "policies": policies}, min_rules=1)
    assert tree["matcher_tree"]["exact_match_map"]["map"]["spiffe://p1"] == {
        "action": {"name": "envoy.rbac.action", "typed_config": {"@type": rbac_matcher.T_ACTION, "name": "a", "action": "DENY"}}
    }


def test_what_the_tree_cannot_express_keeps_the_rules():
    ip = {"direct_remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}}
    assert rbac_matcher.compile_rules(_rules({"r": {"permissions": [{"any": True}], "principals": [{"and_ids": {"ids": [_peer("spiffe://p"), ip]}}]}}), min_rules=1) is None
    metadata = {"metadata": {"filter": "envoy.filters.http.jwt_authn", "path": [{"key": "payload"}], "value": {"present_match": True}}}
    assert rbac_matcher.compile_rules(_rules({"r": {"permissions": [{"any": True}], "principals": [{"and_ids": {"ids": [_peer("spiffe://p"), metadata]}}]}}), min_rules=1) is None
    # a few rules: the rules engine costs no more than the tree
    few = {f"r{i}": {"permissions": [GET], "principals": [_peer(f"spiffe://p{i}")]} for i in range(rbac_matcher.MIN_RULES)}
    assert rbac_matcher.compile_rules(_rules(few)) is not None
    assert rbac_matcher.compile_rules(_rules(dict(list(few.items())[1:]))) is None
    # no exact caller to dispatch on: nothing to gain
    assert rbac_matcher.compile_rules(_rules({"r": {"permissions": [GET], "principals": [{"any": True}]}}), min_rules=1) is None
    # AUDIT (LOG) filters keep their rules
    assert rbac_matcher.compile_rules({"action": "LOG", "policies": {"r": {"permissions": [GET], "principals": [_peer("spiffe://p")]}}}, min_rules=1) is None


def test_rules_for_anyone_repeated_in_too_many_buckets_keep_the_rules():
    keyed = {f"k{i}": {"permissions": [GET], "principals": [_peer(f"spiffe://p{i}")]} for i in range(10)}
    anyone = {f"z{i}": {"permissions": [GET], "principals": [{"any": True}]} for i in range(5)}  # 5 × 10 + 15 > 4 × 15
    assert rbac_matcher.compile_rules(_rules({**keyed, **dict(list(anyone.items())[:2])})) is not None
    assert rbac_matcher.compile_rules(_rules({**keyed, **anyone})) is None


def test_url_path_regexes_do_not_reach_into_the_query():
    for value, matching, other in [
        ("*.html", ["/index.html", "/index.html?x", "/a;b/x.html#f"], ["/a?b.html", "/a#b.html", "/index.htm"]),
        ("/api/*", ["/api/", "/api/x?y", "/api;v=1/x"], ["/apix", "/x?/api/"]),
        ("/x", ["/x", "/x?y", "/x;p", "/x#z"], ["/x/", "/xy", "/y?/x"]),
        ("*", ["/", "/a?b"], []),
    ]:
        regex = rbac_matcher.path_regex_on_path(rbac.path_regex(value))
        cut = rbac.path_regex(value)
        for path in matching + other:
            expected = re.fullmatch(cut, re.split("[?#]", path, maxsplit=1)[0]) is not None
            assert (re.fullmatch(regex, path) is not None) == expected, (value, path)
            assert expected == (path in matching), (value, path)


def test_waypoints_patched_by_an_envoyfilter_keep_the_rules_and_routes_istio_writes():
    rules = ("targetRefs: [{kind: Service, group: '', name: svc}]\nrules: [{from: [{source: {principals: [cluster.local/ns/a/sa/x]}}]},"
             " {from: [{source: {principals: [cluster.local/ns/a/sa/y]}}]}, {from: [{source: {principals: [cluster.local/ns/a/sa/z]}}]},"
             " {to: [{operation: {methods: [GET]}}]}]")
    routes = "".join(f"  - matches: [{{path: {{type: PathPrefix, value: /p{i}}}}}]\n    backendRefs: [{{name: svc, port: 80}}]\n" for i in range(8))
    mesh = ambient_with_waypoint("a") + echo_service("a") + policy("p", rules, ns="a") + (
        "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: a}\n"
        f"spec:\n  parentRefs: [{{group: '', kind: Service, name: svc}}]\n  rules:\n{routes}"
    )
    envoyfilter = """
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: f, namespace: a}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  configPatches:
  - applyTo: HTTP_FILTER
    match: {listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager, subFilter: {name: envoy.filters.http.rbac}}}}}
    patch: {operation: MERGE, value: {typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC, rules_stat_prefix: mine.}}}
"""
    from waypost.envoy import translate
    from waypost.mesh import AddressPlan, build

    def forms(text: str) -> tuple[set[str], set[str]]:
        """(RBAC filter bodies, the service's virtual host forms): "matcher" or "rules"/"routes"."""
        configs = translate(build(load_text(text).resources, AddressPlan(77)))
        found: list[str] = []

        def walk(x):
            if isinstance(x, dict):
                if str(x.get("@type", "")).endswith("http.rbac.v3.RBAC") and ("rules" in x or "matcher" in x):
                    found.append("matcher" if "matcher" in x else "rules")
                for v in x.values():
                    walk(v)
            elif isinstance(x, list):
                for v in x:
                    walk(v)

        walk([list(c.listeners) for c in configs.values()])
        hosts = {("matcher" if "matcher" in vh else "routes") for c in configs.values() for rc in c.routes
                 if rc["name"].startswith("svc.a.") for vh in rc["virtual_hosts"]}
        return set(found), hosts

    assert forms(mesh) == ({"matcher"}, {"matcher"})
    assert forms(mesh + envoyfilter) == ({"rules"}, {"routes"})


def test_evaluator_reads_the_tree_like_envoy():
    policies = {"deny-p1": {"permissions": [GET], "principals": [_peer("spiffe://p1")]}}
    tree = rbac_matcher.compile_rules({"action": "DENY", "policies": policies}, min_rules=1)
    a = Attributes(destination_ip=None, destination_port=80, remote_ip=None, filter_state={PEER: "spiffe://p1"}, headers=((":method", "GET"), (":path", "/")), http=True)
    assert rbac_tree_engine(tree, a) == rbac_engine({"action": "DENY", "policies": policies}, a)
    result = rbac_tree_engine(tree, a)
    assert (result.allowed, result.matched, result.action) == (False, "deny-p1", "DENY")
    other = Attributes(destination_ip=None, destination_port=80, remote_ip=None, filter_state={}, headers=((":method", "GET"),), http=True)
    assert rbac_tree_engine(tree, other).allowed and rbac_tree_engine(tree, other).matched is None
