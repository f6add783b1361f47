"""envoy.evaluate: Envoy's RBAC, filter-chain, route and jwt_authn semantics on hand-written and generated dicts."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from waypost.api import load_text
from waypost.envoy import rbac
from waypost.envoy.evaluate import (
    Attributes,
    Evaluator,
    Proxy,
    Request,
    Unsupported,
    _Conn,
    jwt_authn,
    normalize_path,
    permission_matches,
    principal_matches,
    rbac_engine,
    rbac_filter,
    select_filter_chain,
)

PEER = "io.istio.peer_principal"


def attrs(**kw) -> Attributes:
    base = {"destination_ip": "10.0.0.1", "destination_port": 80, "remote_ip": "10.1.0.5",
            "filter_state": {PEER: "spiffe://cluster.local/ns/app/sa/client"},
            "headers": ((":method", "GET"), (":path", "/admin/x?q=1"), (":authority", "svc"), ("x-a", "1"), ("x-a", "2")), "http": True}
    base.update(kw)
    return Attributes(**base)


@pytest.mark.parametrize(("permission", "expected"), [
    ({"any": True}, True),
    ({"header": {"name": ":method", "string_match": {"exact": "GET"}}}, True),
    ({"header": {"name": "x-a", "string_match": {"exact": "1,2"}}}, True),  # values joined with ','
    ({"header": {"name": "x-missing", "string_match": {"prefix": ""}}}, False),
    ({"header": {"name": ":authority", "string_match": {"exact": "SVC", "ignore_case": True}}}, True),
    ({"url_path": {"path": {"prefix": "/admin"}}}, True),
    ({"url_path": {"path": {"safe_regex": {"regex": "/admin(;[^/]*)?"}}}}, False),  # full match, no query
    ({"url_path": {"path": {"exact": "/admin/x"}}}, True),
    ({"destination_port": 80}, True),
    ({"destination_port_range": {"start": 81, "end": 90}}, False),
    ({"destination_ip": {"address_prefix": "10.0.0.0", "prefix_len": 24}}, True),
    ({"requested_server_name": {"exact": "x"}}, False),
    ({"not_rule": {"destination_port": 80}}, False),
    ({"and_rules": {"rules": [{"destination_port": 80}, {"url_path": {"path": {"suffix": "/x"}}}]}}, True),
    ({"or_rules": {"rules": [{"destination_port": 81}, {"destination_port": 80}]}}, True),
    ({"uri_template": {"name": "t", "typed_config": {"@type": rbac.T_URI_TEMPLATE, "path_template": "/admin/*"}}}, True),
    ({"uri_template": {"name": "t", "typed_config": {"@type": rbac.T_URI_TEMPLATE, "path_template": "/**"}}}, True),
    ({"uri_template": {"name": "t", "typed_config": {"@type": rbac.T_URI_TEMPLATE, "path_template": "/admin"}}}, False),
])
def test_permission_matchers(permission, expected):
    assert permission_matches(permission, attrs()) is expected


@pytest.mark.parametrize(("principal", "expected"), [
    ({"filter_state": {"key": PEER, "string_match": {"exact": "spiffe://cluster.local/ns/app/sa/client"}}}, True),
    ({"filter_state": {"key": PEER, "string_match": {"safe_regex": {"regex": "spiffe://[^/]+/ns/other/sa/[^/]+"}}}}, False),
    ({"direct_remote_ip": {"address_prefix": "10.1.0.0", "prefix_len": 16}}, True),
    ({"remote_ip": {"address_prefix": "10.2.0.0", "prefix_len": 16}}, False),
    ({"not_id": {"any": True}}, False),
    ({"and_ids": {"ids": [{"any": True}, {"not_id": {"direct_remote_ip": {"address_prefix": "10.9.0.0", "prefix_len": 16}}}]}}, True),
    ({"or_ids": {"ids": [{"not_id": {"any": True}}, {"header": {"name": "x-a", "present_match": True}}]}}, True),
])
def test_principal_matchers(principal, expected):
    assert principal_matches(principal, attrs()) is expected


def test_metadata_matchers_read_the_jwt_payload():
    a = attrs(metadata={"envoy.filters.http.jwt_authn": {"payload": {"iss": "i", "groups": ["a", "b"], "aud": "x"}}})
    path = lambda *keys: [{"key": "payload"}] + [{"key": k} for k in keys]
    assert principal_matches({"metadata": {"filter": "envoy.filters.http.jwt_authn", "path": path("iss"), "value": {"string_match": {"exact": "i"}}}}, a)
    assert principal_matches({"metadata": {"filter": "envoy.filters.http.jwt_authn", "path": path("groups"), "value": {"list_match": {"one_of": {"string_match": {"exact": "b"}}}}}}, a)
    assert not principal_matches({"metadata": {"filter": "envoy.filters.http.jwt_authn", "path": path("groups"), "value": {"string_match": {"exact": "b"}}}}, a)
    assert not principal_matches({"metadata": {"filter": "envoy.filters.http.jwt_authn", "path": path("sub"), "value": {"string_match": {"safe_regex": {"regex": ".+"}}}}}, a)


def test_unknown_matchers_fail_loudly():
    with pytest.raises(Unsupported, match="authenticated"):
        principal_matches({"authenticated": {"principal_name": {"exact": "x"}}}, attrs())
    with pytest.raises(Unsupported, match="matcher"):
        permission_matches({"matcher": {}}, attrs())
    with pytest.raises(Unsupported, match="StringMatcher"):
        permission_matches({"header": {"name": "x-a", "string_match": {"glob": "*"}}}, attrs())
    with pytest.raises(Unsupported, match="uri_template"):
        permission_matches({"uri_template": {"name": "t", "typed_config": {"@type": rbac.T_URI_TEMPLATE, "path_template": "/a/{*}"}}}, attrs())
    with pytest.raises(Unsupported, match="condition"):
        rbac_engine({"policies": {"p": {"permissions": [{"any": True}], "principals": [{"any": True}], "condition": {}}}}, attrs())


def test_engine_actions_order_and_shadow():
    policies = {"b": {"permissions": [{"any": True}], "principals": [{"any": True}]}, "a": {"permissions": [{"destination_port": 80}], "principals": [{"any": True}]}}
    allow = rbac_engine({"policies": policies}, attrs())  # action ALLOW is the proto default, absent in dumps
    assert (allow.action, allow.matched, allow.allowed, allow.considered) == ("ALLOW", "a", True, ("a", "b"))
    assert rbac_engine({"action": "ALLOW"}, attrs()).allowed is False  # rules without policies deny everything
    deny = rbac_engine({"action": "DENY", "policies": policies}, attrs())
    assert (deny.matched, deny.allowed) == ("a", False)
    assert rbac_engine({"action": "DENY"}, attrs()).allowed is True
    assert rbac_engine({"action": "LOG", "policies": policies}, attrs()).allowed is True
    enforced, shadow = rbac_filter({"shadow_rules": {"action": "DENY", "policies": policies}}, attrs())
    assert enforced is None and shadow is not None and shadow.allowed is False  # shadow: reported, never enforced


def _policy(text: str):
    result = load_text("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: app}\nspec:\n" + text)
    assert not result.errors, [d.render() for d in result.errors]
    return result.resources[0]


def test_generated_http_rbac():
    p = _policy("  rules:\n  - from: [{source: {principals: [cluster.local/ns/app/sa/client], notNamespaces: [bad]}}]\n    to: [{operation: {methods: [GET], notPaths: ['/secret*']}}]\n")
    (f,) = rbac.http_filters([p])
    ok = attrs(headers=((":method", "GET"), (":path", "/public"), (":authority", "svc")))
    enforced, _ = rbac_filter(f["typed_config"], ok)
    assert enforced.matched == "ns[app]-policy[p]-rule[0]"
    secret = attrs(headers=((":method", "GET"), (":path", "/secret;x/y"), (":authority", "svc")))
    assert rbac_filter(f["typed_config"], secret)[0].allowed is False
    other = attrs(filter_state={PEER: "spiffe://cluster.local/ns/app/sa/other"}, headers=ok.headers)
    assert rbac_filter(f["typed_config"], other)[0].allowed is False


def test_generated_ztunnel_network_rbac_drops_http_allow_rules():
    p = _policy("  selector: {matchLabels: {app: backend}}\n  rules:\n  - from: [{source: {namespaces: [app]}}]\n    to: [{operation: {ports: ['80']}}]\n  - to: [{operation: {methods: [GET]}}]\n")
    (f,) = rbac.ztunnel_filters([p], "pod.")
    net = attrs(headers=(), http=False)
    result = rbac_filter(f["typed_config"], net)[0]
    assert (result.matched, result.considered) == ("ns[app]-policy[p]-group[0]", ("ns[app]-policy[p]-group[0]",))
    assert rbac_filter(f["typed_config"], attrs(headers=(), destination_port=81))[0].allowed is False


def test_filter_chain_match_is_most_specific_without_backtracking():
    listener = {"filter_chains": [
        {"name": "vip-any-source", "filter_chain_match": {"prefix_ranges": [{"address_prefix": "10.0.0.1", "prefix_len": 32}], "destination_port": 80}},
        {"name": "vip-client", "filter_chain_match": {"prefix_ranges": [{"address_prefix": "10.0.0.1", "prefix_len": 32}], "destination_port": 80, "source_prefix_ranges": [{"address_prefix": "10.1.0.5", "prefix_len": 32}]}},
        {"name": "port-only", "filter_chain_match": {"destination_port": 80}},
        {"name": "other-port", "filter_chain_match": {"prefix_ranges": [{"address_prefix": "10.0.0.1", "prefix_len": 32}], "destination_port": 81}},
    ], "default_filter_chain": {"name": "default"}}
    pick = lambda ip, port, src: select_filter_chain(listener, _Conn(ip, port, src))["name"]
    assert pick("10.0.0.1", 80, "10.1.0.5") == "vip-client"
    assert pick("10.0.0.1", 80, "10.1.0.6") == "vip-any-source"
    assert pick("10.0.0.2", 80, "10.1.0.5") == "port-only"
    assert pick("10.0.0.2", 82, "10.1.0.5") == "default"


def test_path_normalisation():
    hcm = {"normalize_path": True, "merge_slashes": True, "path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD"}
    assert normalize_path("/a/../admin?x=/..", hcm) == "/admin?x=/.."
    assert normalize_path("//admin%2F..%2Fadmin", hcm) == "/admin"
    assert normalize_path("/%61dmin/./x/", hcm) == "/admin/x/"
    assert normalize_path("/a/../admin", {}) == "/a/../admin"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _n(v: int) -> str:
    return _b64(v.to_bytes((v.bit_length() + 7) // 8, "big"))


def _token(alg: str, key, claims: dict, kid: str = "k") -> str:
    signing = f"{_b64(json.dumps({'alg': alg, 'kid': kid}).encode())}.{_b64(json.dumps(claims).encode())}"
    if alg == "RS256":
        sig = key.sign(signing.encode(), rsa_padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = decode_dss_signature(key.sign(signing.encode(), ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signing}.{_b64(sig)}"


def _jwt_config(jwk: dict, audiences=None) -> dict:
    provider = {"issuer": "iss", "local_jwks": {"inline_string": json.dumps({"keys": [jwk]})}, "payload_in_metadata": "payload"}
    if audiences:
        provider["audiences"] = audiences
    return {"providers": {"origins-0": provider}, "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [{"provider_name": "origins-0"}, {"allow_missing": {}}]}}}]}


def test_jwt_rs256_and_es256():
    rkey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rn = rkey.public_key().public_numbers()
    rsa_cfg = _jwt_config({"kty": "RSA", "kid": "k", "n": _n(rn.n), "e": _n(rn.e)}, ["aud1"])
    good = _token("RS256", rkey, {"iss": "iss", "sub": "s", "aud": ["aud1"], "exp": 2000})
    result = jwt_authn(rsa_cfg, [("authorization", f"Bearer {good}")], "/", now=1000)
    assert result.status is None and result.payload["sub"] == "s" and result.remove_header == "authorization"
    assert jwt_authn(rsa_cfg, [("authorization", f"Bearer {good}")], "/", now=3000).reason == "Jwt is expired"
    wrong_aud = _token("RS256", rkey, {"iss": "iss", "aud": "x"})
    assert jwt_authn(rsa_cfg, [("authorization", f"Bearer {wrong_aud}")], "/", now=0).status == 403
    assert jwt_authn(rsa_cfg, [], "/", now=0).status is None  # missing: allowed through, no payload
    assert jwt_authn(rsa_cfg, [], f"/?access_token={good}", now=1000).payload is not None
    other = _token("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048), {"iss": "iss", "aud": "aud1"})
    assert jwt_authn(rsa_cfg, [("authorization", f"Bearer {other}")], "/", now=0).reason == "Jwt verification fails"
    unknown = _token("RS256", rkey, {"iss": "nobody", "aud": "aud1"})
    assert jwt_authn(rsa_cfg, [("authorization", f"Bearer {unknown}")], "/", now=0).status == 401
    ekey = ec.generate_private_key(ec.SECP256R1())
    en = ekey.public_key().public_numbers()
    ec_cfg = _jwt_config({"kty": "EC", "crv": "P-256", "kid": "k", "x": _n(en.x), "y": _n(en.y)})
    assert jwt_authn(ec_cfg, [("authorization", f"Bearer {_token('ES256', ekey, {'iss': 'iss'})}")], "/", now=0).payload == {"iss": "iss"}


def _custom_proxy() -> Proxy:
    """A listener whose HCM carries the CUSTOM (ext_authz) shape: shadow RBAC, then gated ext_authz."""
    rules = {"action": "ALLOW", "policies": {"istio-ext-authz-opa-ns[app]-policy[ext]-rule[0]": {"permissions": [{"url_path": {"path": {"prefix": "/ext"}}}], "principals": [{"any": True}]}}}
    hcm = {
        "@type": "HCM", "route_config": {"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
        "http_filters": [
            {"name": "envoy.filters.http.rbac", "typed_config": {"shadow_rules": rules, "shadow_rules_stat_prefix": "istio_ext_authz_"}},
            {"name": "envoy.filters.http.ext_authz", "typed_config": {"filter_enabled_metadata": {"filter": "envoy.filters.http.rbac", "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}], "value": {"string_match": {"prefix": "istio-ext-authz"}}}}},
            {"name": "envoy.filters.http.router", "typed_config": {}},
        ],
    }
    listener = {"name": "l", "address": {"socket_address": {"address": "10.0.0.1", "port_value": 80}}, "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}
    return Proxy.of("waypoint~app~w", [listener], [], [])


def test_custom_policies_call_the_external_authorizer_only_when_a_rule_matches():
    evaluator = Evaluator([_custom_proxy()])
    called = evaluator.evaluate(Request("10.1.0.5", "10.0.0.1", 80, path="/ext/x"))
    assert called.outcome.verdict == "unknown" and "external authorizer opa decides" in called.outcome.reason
    skipped = evaluator.evaluate(Request("10.1.0.5", "10.0.0.1", 80, path="/other"))
    assert (skipped.outcome.verdict, skipped.outcome.status) == ("allowed", 200)
    (check,) = skipped.paths[0].hops[0].checks
    assert check.kind == "CUSTOM" and "not called" in check.detail


def test_offline_translation_end_to_end():
    from pathlib import Path

    from waypost.cli import authz_check as ac

    mesh = ac.offline_mesh([str(Path(__file__).resolve().parent.parent / "golden" / "cli" / "mesh.yaml")])
    outcome = lambda src, url, method="GET": ac.run(mesh, src, url, method, [])[0].outcome
    assert outcome("shop/web", "http://api/items").verdict == "allowed"
    assert (outcome("shop/web", "http://api/admin").status, outcome("shop/web", "http://api/admin").policy) == (403, "ns[shop]-policy[no-admin]-rule[0]")
    assert outcome("shop/web", "http://api/public/x", "DELETE").status == 403
    assert outcome("shop/web", "http://api/public/x", "PUT").verdict == "allowed"
    denied = outcome("shop/web", "http://db/")
    assert denied.verdict == "denied" and denied.status is None


def test_virtual_service_routes_are_selected_as_envoy_selects_them():
    """The route matchers a VirtualService produces (plain prefix, ignoreUriCase, withoutHeaders, present
    headers) evaluate as Envoy matches them, on the config the translation generates."""
    from waypost.api import load_text
    from waypost.envoy import translate
    from waypost.envoy.evaluate import select_route
    from waypost.mesh import AddressPlan, build
    from tests.manifests import ambient_with_waypoint, echo_service

    text = ambient_with_waypoint("vs") + echo_service("vs") + """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: svc, namespace: vs}
spec:
  hosts: [svc]
  http:
  - name: debug-absent
    match: [{uri: {prefix: /only}, withoutHeaders: {x-debug: {}}}]
    directResponse: {status: 204}
  - name: any-case
    match: [{uri: {prefix: /API}, ignoreUriCase: true}]
    directResponse: {status: 202}
  - name: tagged
    match: [{headers: {x-tag: {}}}]
    directResponse: {status: 203}
  - name: rest
    route: [{destination: {host: svc}}]
"""
    loaded = load_text(text, "vs.yaml")
    assert not loaded.errors, [d.render() for d in loaded.errors]
    snapshot = build(loaded.resources, AddressPlan(61))
    waypoint = next(c for pid, c in translate(snapshot).items() if pid.startswith("waypoint~"))
    config = next(r for r in waypoint.routes if r["name"].startswith("svc.vs.svc.cluster.local:"))

    def chosen(path: str, *extra: tuple[str, str]) -> str:
        route, why = select_route(config, [(":authority", "svc.vs"), (":method", "GET"), *extra], path, {})
        assert route is not None, why
        return route["name"]

    assert chosen("/only/x") == "debug-absent"
    assert chosen("/only/x", ("x-debug", "1")) == "rest"  # withoutHeaders: present header, no match
    assert chosen("/api/items") == "any-case" and chosen("/ApI") == "any-case"
    assert chosen("/apix") == "any-case"  # a VirtualService prefix is a plain string prefix
    assert chosen("/other", ("x-tag", "")) == "tagged" and chosen("/other") == "rest"


@pytest.mark.parametrize("value", ["/r5/*", "/admin", "/a/b/c", "/a.b/c*", "/ab*", "*.png", "*/x", "/", "/*", "*", "/q?x", "*#f"])
def test_path_prefilter_matches_exactly_what_the_regex_matches(value):
    """rbac._path_permission puts a literal prefix/contains check on `:path` before the `url_path` match; the
    pair must accept the same paths as the `url_path` match alone (params, query strings, near misses, other
    paths). A literal with `?` or `#` gets no prefilter: `:path` holds the query there, `url_path` does not."""
    generated = rbac._path_permission(value)
    regex_only = {"url_path": {"path": {"safe_regex": {"regex": rbac.path_regex(value)}}}}
    if value in ("/r5/*", "/admin", "*.png", "/ab*"):
        assert generated["and_rules"]["rules"][0]["header"]["name"] == ":path"  # these carry a prefilter
    if value in ("/q?x", "*#f"):
        assert "and_rules" not in generated
    paths = ["/", "/r5", "/r5/", "/r5/x", "/r5;p/x", "/r50/x", "/r/5", "/admin", "/admin;x", "/admin/", "/admins", "/Admin",
             "/a/b/c", "/a;1/b;2/c;3", "/a/b/c/d", "/a.b/c", "/a.b;x/cd", "/aXb/c", "/ab", "/abc/d", "/x.png", "/x.png;v=1",
             "/x.png/y", "/png", "/y/x", "/x", "/r5/x?q=1", "/admin?x=/admin", "/a/b/c#f", "/q?x", "/q%3Fx", "/x?a#f", "/x#f"]
    for path in paths:
        a = attrs(headers=((":method", "GET"), (":path", path), (":authority", "svc")))
        assert permission_matches(generated, a) == permission_matches(regex_only, a), path
