"""CUSTOM authorization without processes: MeshConfig validation, provider resolution and the Envoy filters."""

from __future__ import annotations

import pytest

from tests.manifests import ambient_namespace, waypoint
from waypost.api import load_text
from waypost.api.meshconfig import MeshConfig, parse_mesh_config
from waypost.envoy import translate
from waypost.mesh.addresses import AddressPlan
from waypost.mesh.build import build

NS = ambient_namespace("app", "waypoint") + waypoint("app") + """
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: app}
spec: {selector: {app: backend}, ports: [{name: http, port: 80, targetPort: 8080}, {name: tcp, port: 9000}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend, namespace: app}
spec:
  selector: {matchLabels: {app: backend}}
  template: {metadata: {labels: {app: backend}}, spec: {containers: [{name: e, image: waypost/echo, ports: [{containerPort: 8080}]}]}}
---
apiVersion: v1
kind: Service
metadata: {name: authz, namespace: auth}
spec: {selector: {app: authz}, ports: [{name: http, port: 8000}, {name: grpc, port: 9000}, {name: tcp-plain, port: 9001}]}
"""


def config_map(mesh: str) -> str:
    body = "\n".join("    " + line for line in mesh.strip("\n").splitlines())
    return f"\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n{body}\n"


PROVIDERS = config_map("""
extensionProviders:
- name: http-authz
  envoyExtAuthzHttp:
    service: authz.auth.svc.cluster.local
    port: 8000
    timeout: 1.5s
    pathPrefix: /check
    statusOnError: "503"
    includeRequestHeadersInCheck: [x-ext-authz, "x-user-*"]
    includeAdditionalHeadersInCheck: {x-added: "1"}
    headersToUpstreamOnAllow: ["*-result"]
    headersToDownstreamOnDeny: [x-reason]
    includeRequestBodyInCheck: {maxRequestBytes: 4096, allowPartialMessage: true}
- name: grpc-authz
  envoyExtAuthzGrpc: {service: auth/authz.auth.svc.cluster.local, port: 9000, failOpen: true}
- name: grpc-on-plain
  envoyExtAuthzGrpc: {service: authz.auth.svc.cluster.local, port: 9001}
""")


def custom(name: str, provider: str, rules: str = "[{to: [{operation: {paths: [/admin/*]}}]}]", target: str = "kind: Service, group: '', name: backend") -> str:
    return (
        f"\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: app}}\n"
        f"spec:\n  targetRefs: [{{{target}}}]\n  action: CUSTOM\n  provider: {{name: {provider}}}\n  rules: {rules}\n"
    )


def waypoint_config(text: str):
    result = load_text(text, "t.yaml")
    assert not result.errors, [d.render() for d in result.errors]
    snapshot = build(result.resources, AddressPlan(7))
    configs = translate(snapshot)
    key = next(k for k in configs if "waypoint" in k)
    return snapshot, configs[key]


def chain_filters(config, suffix: str) -> list[dict]:
    listener = next(l for l in config.listeners if l["name"] == "main_internal")
    chain = next(ch for ch in listener["filter_chains"] if ch["name"].endswith(suffix))
    filters = chain["filters"]
    if filters[-1]["name"] == "envoy.filters.network.http_connection_manager":
        return filters[-1]["typed_config"]["http_filters"]
    return filters


# -- API validation (istio ValidateAuthorizationPolicy) -------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("action: CUSTOM\n  provider: {name: x}", "CUSTOM action without `rules` is meaningless"),
        ("action: CUSTOM\n  rules: [{}]", "`provider.name` must not be empty"),
        ("action: CUSTOM\n  provider: {name: x}\n  rules: [{from: [{source: {principals: [a]}}]}]", "From.Principals is currently not supported with CUSTOM action"),
        ("action: CUSTOM\n  provider: {name: x}\n  rules: [{from: [{source: {namespaces: [a]}}]}]", "From.Namespaces is currently not supported with CUSTOM action"),
        ("action: CUSTOM\n  provider: {name: x}\n  rules: [{when: [{key: 'request.auth.claims[iss]', values: [a]}]}]", "request.auth.claims[iss] is currently not supported with CUSTOM action"),
        ("action: ALLOW\n  provider: {name: x}\n  rules: [{}]", "`provider` must not be with non CUSTOM action, found ALLOW"),
    ],
)
def test_custom_policy_validation(spec, message):
    text = f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: app}}\nspec:\n  {spec}\n"
    result = load_text(text, "p.yaml")
    assert not result.resources
    assert any(message in d.message for d in result.errors), [d.render() for d in result.errors]


def test_custom_policy_with_request_fields_loads():
    text = custom("ok", "x", rules="[{from: [{source: {ipBlocks: [10.0.0.0/8]}}], to: [{operation: {methods: [GET], hosts: [a.com]}}], when: [{key: 'request.headers[x]', values: [y]}]}]")
    assert not load_text(text, "p.yaml").errors


# -- MeshConfig -------------------------------------------------------------------------------------------
def test_bad_mesh_config_map_is_refused_with_field_and_line():
    text = NS + config_map("""
extensionProviders:
- name: a
  envoyExtAuthzHttp:
    service: authz.auth.svc.cluster.local
    port: 0
- name: a
  envoyExtAuthzGrpc: {service: "bad host!", port: 9000, statusOnError: "999"}
""")
    result = load_text(text, "mesh.yaml")
    errors = {d.field: d for d in result.errors}
    assert all(d.kind == "ConfigMap" and d.namespace == "istio-system" and d.name == "istio" for d in errors.values())
    port = errors["data.mesh.extensionProviders[0].envoyExtAuthzHttp.port"]
    assert "port must be in the range [1, 65535], found: 0" in port.message
    assert text.splitlines()[port.line - 1].strip() == "port: 0"
    assert "invalid service 'bad host!'" in errors["data.mesh.extensionProviders[1].envoyExtAuthzGrpc.service"].message
    assert "unsupported statusOnError value 999" in errors["data.mesh.extensionProviders[1].envoyExtAuthzGrpc.statusOnError"].message
    # Everything else still loads; the refused ConfigMap is not among the resources.
    assert {r.KIND for r in result.resources} >= {"Service", "Gateway", "Deployment"}
    assert not any(r.KIND == "ConfigMap" for r in result.resources)


def test_duplicate_provider_names_and_unknown_types_are_refused():
    with pytest.raises(ValueError, match="extension provider name must be unique, found duplicate: a"):
        parse_mesh_config("extensionProviders:\n- {name: a, prometheus: {}}\n- {name: a, prometheus: {}}\n")
    with pytest.raises(ValueError, match="unknown extension provider type 'envoyExtAuthzHtp'"):
        parse_mesh_config("extensionProviders:\n- {name: a, envoyExtAuthzHtp: {service: x, port: 1}}\n")


def test_other_config_maps_and_unknown_mesh_fields_are_accepted():
    mesh = parse_mesh_config("defaultConfig: {holdApplicationUntilProxyStarts: true}\nenableTracing: false\n")
    assert mesh.extension_providers == [] and mesh.effective_root_namespace == "istio-system"
    result = load_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: other}\ndata: {mesh: 'not: [valid'}\n", "x.yaml")
    assert not result.errors  # only istio-system/istio is MeshConfig


def test_config_map_overrides_the_mesh_config_file():
    base = parse_mesh_config("rootNamespace: from-file\naccessLogEncoding: JSON\n")
    text = NS + config_map("rootNamespace: from-configmap\n")
    snapshot = build(load_text(text, "t.yaml").resources, AddressPlan(7), mesh_config=base)
    assert snapshot.root_namespace == "from-configmap"
    assert snapshot.mesh_config.access_log_encoding == "JSON"  # not set by the ConfigMap: the file's stays
    assert build(load_text(NS, "t.yaml").resources, AddressPlan(7), mesh_config=base).root_namespace == "from-file"
    assert MeshConfig().overlay(base).root_namespace == "from-file"


def test_root_namespace_from_mesh_config_governs_gatewayclass_policies():
    policy = (
        "\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: mesh-root}\n"
        "spec:\n  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]\n  action: DENY\n  rules: [{}]\n"
    )
    for root, reason in (("rootNamespace: mesh-root\n", "Accepted"), ("", "Invalid")):
        snapshot = build(load_text(NS + (config_map(root) if root else "") + policy, "t.yaml").resources, AddressPlan(7))
        (condition,) = snapshot.status_of("AuthorizationPolicy", "mesh-root", "p").conditions
        assert condition.reason == reason


def test_provider_resolution():
    snapshot, _ = waypoint_config(NS + PROVIDERS)
    by_name = {p.name: p for p in snapshot.authz_providers}
    assert by_name["http-authz"].service == "auth/authz" and by_name["http-authz"].error is None
    assert by_name["grpc-authz"].service == "auth/authz" and by_name["grpc-authz"].grpc
    missing = snapshot.authz_provider("nope")
    assert missing.error == "available providers are ['grpc-authz', 'grpc-on-plain', 'http-authz'] but found 'nope'"


def test_ambiguous_and_missing_services_make_the_provider_unusable():
    other = "\n---\napiVersion: v1\nkind: Service\nmetadata: {name: authz, namespace: auth2}\nspec: {ports: [{port: 8000}]}\n"
    text = NS + other + config_map("""
extensionProviders:
- name: dup
  envoyExtAuthzHttp: {service: authz.auth.svc.cluster.local, port: 8000}
- name: gone
  envoyExtAuthzHttp: {service: auth/nothing.example.com, port: 80}
""")
    snapshot = build(load_text(text, "t.yaml").resources, AddressPlan(7))
    providers = {p.name: p for p in snapshot.authz_providers}
    assert providers["dup"].error is None  # the FQDN names one namespace only
    assert "could not find service auth/nothing.example.com" in providers["gone"].error


# -- translation --------------------------------------------------------------------------------------
def test_http_chain_filters_and_order():
    text = NS + PROVIDERS + custom("ext", "http-authz") + (
        "\n---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: app}\n"
        "spec:\n  targetRefs: [{kind: Service, group: '', name: backend}]\n  jwtRules: [{issuer: me, jwks: '{\"keys\": []}'}]\n"
        "\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: app}\n"
        "spec:\n  targetRefs: [{kind: Service, group: '', name: backend}]\n  action: DENY\n  rules: [{to: [{operation: {paths: [/x]}}]}]\n"
    )
    snapshot, config = waypoint_config(text)
    filters = chain_filters(config, "backend.app.svc.cluster.local:80")
    names = [f["name"] for f in filters]
    # Istio's order: CUSTOM (RBAC shadow + ext_authz) → jwt_authn → RBAC DENY → ... → router.
    assert names[:4] == ["envoy.filters.http.rbac", "envoy.filters.http.ext_authz", "envoy.filters.http.jwt_authn", "envoy.filters.http.rbac"]
    shadow = filters[0]["typed_config"]
    assert "rules" not in shadow and shadow["shadow_rules_stat_prefix"] == "istio_ext_authz_"
    assert list(shadow["shadow_rules"]["policies"]) == ["istio-ext-authz-http-authz-ns[app]-policy[ext]-rule[0]"]
    ext = filters[1]["typed_config"]
    assert ext["filter_enabled_metadata"] == {
        "filter": "envoy.filters.http.rbac", "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
        "value": {"string_match": {"prefix": "istio-ext-authz-http-authz"}},
    }
    assert ext["status_on_error"] == {"code": 503} and ext["failure_mode_allow"] is False
    assert ext["with_request_body"] == {"max_request_bytes": 4096, "allow_partial_message": True, "pack_as_bytes": False}
    service = ext["http_service"]
    assert service["server_uri"] == {"uri": "http://authz.auth.svc.cluster.local", "cluster": "outbound|8000||authz.auth.svc.cluster.local", "timeout": "1.5s"}
    assert service["path_prefix"] == "/check"
    assert service["authorization_request"] == {"headers_to_add": [{"key": "x-added", "value": "1"}]}
    assert service["authorization_response"]["allowed_upstream_headers"] == {"patterns": [{"suffix": "-result", "ignore_case": True}]}
    assert ext["allowed_headers"] == {"patterns": [{"exact": "x-ext-authz", "ignore_case": True}, {"prefix": "x-user-", "ignore_case": True}]}
    assert any(c["name"] == "outbound|8000||authz.auth.svc.cluster.local" for c in config.clusters)
    # An HTTP provider is not applied on TCP chains (Envoy's network ext_authz is gRPC only); the DENY
    # policy is (§5.7: its HTTP-only path is ignored there, so it denies every TCP connection).
    tcp = chain_filters(config, "backend.app.svc.cluster.local:9000")
    assert [f["name"] for f in tcp] == ["envoy.filters.network.rbac", "envoy.filters.network.tcp_proxy"]
    assert tcp[0]["typed_config"]["rules"]["action"] == "DENY"


def test_grpc_provider_on_tcp_and_http_chains():
    _, config = waypoint_config(NS + PROVIDERS + custom("ext", "grpc-authz", rules="[{to: [{operation: {ports: ['9000'], methods: [GET]}}]}]"))
    tcp = chain_filters(config, "backend.app.svc.cluster.local:9000")
    assert [f["name"] for f in tcp] == ["envoy.filters.network.rbac", "envoy.filters.network.ext_authz", "envoy.filters.network.tcp_proxy"]
    # Built like DENY on TCP: the HTTP-only `methods` is ignored, the port still selects.
    (rule,) = tcp[0]["typed_config"]["shadow_rules"]["policies"].values()
    assert rule["permissions"] == [{"destination_port": 9000}]
    ext = tcp[1]["typed_config"]
    assert ext["failure_mode_allow"] is True and ext["grpc_service"]["envoy_grpc"] == {"cluster_name": "outbound|9000||authz.auth.svc.cluster.local", "authority": "authz.auth.svc.cluster.local"}
    assert ext["filter_enabled_metadata"]["filter"] == "envoy.filters.network.rbac"
    cluster = next(c for c in config.clusters if c["name"] == "outbound|9000||authz.auth.svc.cluster.local")
    assert "http2_protocol_options" in str(cluster["typed_extension_protocol_options"])


def test_grpc_provider_on_a_port_not_declared_grpc_gets_its_own_http2_cluster():
    _, config = waypoint_config(NS + PROVIDERS + custom("ext", "grpc-on-plain"))
    ext = chain_filters(config, "backend.app.svc.cluster.local:80")[1]["typed_config"]
    name = ext["grpc_service"]["envoy_grpc"]["cluster_name"]
    assert name == "outbound|9001|ext-authz-grpc|authz.auth.svc.cluster.local"
    cluster = next(c for c in config.clusters if c["name"] == name)
    assert "http2_protocol_options" in str(cluster["typed_extension_protocol_options"])


@pytest.mark.parametrize("second", [None, "grpc-authz"])
def test_unusable_provider_rules_become_deny_rules(second):
    text = NS + PROVIDERS + custom("ext", "http-authz" if second else "nope")
    if second:
        text += custom("ext2", second)
    _, config = waypoint_config(text)
    filters = chain_filters(config, "backend.app.svc.cluster.local:80")
    assert "envoy.filters.http.ext_authz" not in [f["name"] for f in filters]
    deny = [f["typed_config"]["rules"] for f in filters if f["name"] == "envoy.filters.http.rbac"]
    assert all(r["action"] == "DENY" for r in deny) and len(deny) == (2 if second else 1)
    assert all(name.endswith("-deny-due-to-bad-CUSTOM-action") for r in deny for name in r["policies"])


# -- the built-in authorizer (Istio's sample semantics) ------------------------------------------------------
def test_builtin_authorizer_grpc_and_http_decisions():
    from envoy.service.auth.v3 import external_auth_pb2

    from waypost.local.echo_app import EchoApp, EchoRequest
    from waypost.local.echo_grpc import frame, handle_grpc, unframe

    app = EchoApp(namespace="foo", pod="ext-authz-1", flavor="ext-authz")

    def grpc(headers: dict[str, str], principal: str = "") -> external_auth_pb2.CheckResponse:
        request = external_auth_pb2.CheckRequest()
        request.attributes.request.http.headers.update(headers)
        request.attributes.source.principal = principal
        result = handle_grpc(app, path="/envoy.service.auth.v3.Authorization/Check", metadata=[], body=frame(request.SerializeToString()),
                             body_overflow=False, port=9000, remote="127.0.0.1:1")
        assert result.status == 0, result.message
        ((_, raw),) = unframe(result.payload)
        return external_auth_pb2.CheckResponse.FromString(raw)

    assert grpc({"x-ext-authz": "allow"}).status.code == 0
    denied = grpc({"x-ext-authz": "nope"})
    assert denied.status.code == 7 and denied.denied_response.status.code == 403
    assert grpc({}, "spiffe://cluster.local/ns/foo/sa/a").status.code == 0  # the sample's allowed account
    assert grpc({}, "spiffe://cluster.local/ns/foo/sa/b").status.code == 7
    unknown = handle_grpc(app, path="/proto.EchoTestService/Echo", metadata=[], body=b"", body_overflow=False, port=9000, remote="127.0.0.1:1")
    assert unknown.status == 12

    def http(headers: dict[str, list[str]]):
        return app.handle(EchoRequest(method="GET", target="/x", host="h", proto="HTTP/1.1", headers=headers, port=8000, remote="127.0.0.1:1"))

    assert http({"X-Ext-Authz": ["allow"]}).status == 200
    refused = http({})
    assert refused.status == 403 and b"denied by ext_authz" in refused.body
    assert ("x-ext-authz-check-result", "denied") in refused.headers
