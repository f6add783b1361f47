"""EnvoyFilter: Istio's validation (with its messages) and istiod's patch semantics on a waypoint's config.

The golden tests patch the waypoint of tests/golden/envoyfilter/mesh.yaml with one EnvoyFilter per case
and compare what changed (a structural diff against the unpatched config, plus the patch report) with
tests/golden/envoyfilter/<case>.json. Regenerate with WAYPOST_UPDATE_GOLDEN=1 and review the diff.
Every patched result must still encode as Envoy protos (waypost.xds.codec).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from waypost.api import load, load_paths, load_text
from waypost.api.envoyfilter import EnvoyFilter
from waypost.envoy import bootstrap as envoy_bootstrap
from waypost.envoy import envoyfilter as ef
from waypost.envoy import translate
from waypost.mesh import AddressPlan, build
from waypost.xds import codec
from waypost.xds.types import TYPE_CLUSTER, TYPE_LISTENER, TYPE_ROUTE

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "envoyfilter"
WAYPOINT = "waypoint~shop~waypoint"
PLAN = AddressPlan(77)
T_BOOTSTRAP = "type.googleapis.com/envoy.config.bootstrap.v3.Bootstrap"

LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


@lru_cache(maxsize=1)
def _fixture_json() -> str:
    result = load_paths([GOLDEN / "mesh.yaml"])
    assert not result.errors, [d.render() for d in result.errors]
    config = translate(build(result.resources, PLAN))[WAYPOINT]
    boot = envoy_bootstrap(WAYPOINT, config.kind, (config.address, 15000), (PLAN.control_plane, 15010))
    return json.dumps({"listeners": config.listeners, "clusters": config.clusters, "routes": config.routes, "bootstrap": boot})


def fixture() -> dict[str, Any]:
    return json.loads(_fixture_json())


def envoyfilter(patches: str, *, name: str = "f", namespace: str = "shop", priority: int = 0, created: str | None = None) -> EnvoyFilter:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if created:
        meta["creationTimestamp"] = created
    spec = {
        "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
        "priority": priority,
        "configPatches": yaml.safe_load(patches),
    }
    return EnvoyFilter.model_validate({"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter", "metadata": meta, "spec": spec})


def run(patches: str, **kwargs) -> ef.Patched:
    base = fixture()
    return ef.apply(base["listeners"], base["clusters"], base["routes"], ef.order([envoyfilter(patches)], "istio-system"), base["bootstrap"], **kwargs)


def encode_all(patched: ef.Patched) -> None:
    """Every resource of the result is a valid Envoy message (a bad merge fails here)."""
    for type_url, resources in ((TYPE_LISTENER, patched.listeners), (TYPE_CLUSTER, patched.clusters), (TYPE_ROUTE, patched.routes)):
        for resource in resources:
            codec.encode_resource(type_url, resource)
    if patched.bootstrap is not None:
        codec.encode_resource(T_BOOTSTRAP, patched.bootstrap)


# ------------------------------------------------------------------------------------- structural diff


def _named(items: list[Any]) -> bool:
    names = [i.get("name") for i in items if isinstance(i, dict)]
    return len(names) == len(items) and all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names)


def diff(before: Any, after: Any, path: str = "") -> list[dict[str, Any]]:
    """The changes from `before` to `after`, as paths (`[name=x]` for named list items) with old and new values."""
    if before == after:
        return []
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in sorted(set(before) | set(after)):
            sub = f"{path}.{key}" if path else key
            if key not in before:
                out.append({"path": sub, "added": after[key]})
            elif key not in after:
                out.append({"path": sub, "removed": True})  # the old value is in the unpatched config
            else:
                out.extend(diff(before[key], after[key], sub))
        return out
    if isinstance(before, list) and isinstance(after, list):
        if _named(before) and _named(after) and len(before) == len(after) and all(
            a["name"] == b["name"] or (a["name"] not in {x["name"] for x in after} and b["name"] not in {x["name"] for x in before})
            for a, b in zip(before, after)
        ):  # same names, or renamed in place: compare position by position
            return [d for a, b in zip(before, after) for d in diff(a, b, f"{path}[name={b['name']}]")]
        if _named(before) and _named(after):
            old = {i["name"]: i for i in before}
            new = {i["name"]: i for i in after}
            out = []
            if [n for n in new if n in old] != [n for n in old if n in new] or (set(new) - set(old) and list(new)[-len(set(new) - set(old)):] != [n for n in new if n not in old]):
                out.append({"path": path, "order": list(new)})
            for name, item in new.items():
                sub = f"{path}[name={name}]"
                out.extend([{"path": sub, "added": item}] if name not in old else diff(old[name], item, sub))
            out.extend({"path": f"{path}[name={name}]", "removed": True} for name in old if name not in new)
            return out
        if len(before) == len(after):
            return [d for i, (a, b) in enumerate(zip(before, after)) for d in diff(a, b, f"{path}[{i}]")]
    return [{"path": path, "before": before, "after": after}]


def render(patched: ef.Patched) -> dict[str, Any]:
    base = fixture()
    out: dict[str, Any] = {"report": [_report(r) for r in patched.report]}
    for kind in ("listeners", "clusters", "routes"):
        old = {r["name"]: r for r in base[kind]}
        new = {r["name"]: r for r in getattr(patched, kind)}
        changes = {}
        for name, resource in new.items():
            if name not in old:
                changes[name] = {"added": resource}
            elif resource != old[name]:
                changes[name] = diff(old[name], resource)
        for name in old:
            if name not in new:
                changes[name] = "removed"
        if changes:
            out[kind] = changes
    if patched.bootstrap != base["bootstrap"]:
        out["bootstrap"] = diff(base["bootstrap"], patched.bootstrap)
    return out


def _report(r: ef.PatchReport) -> dict[str, Any]:
    out: dict[str, Any] = {"patch": f"{r.envoyfilter}[{r.index}] {r.apply_to} {r.operation}", "matched": r.matched, "changed": r.changed}
    if r.errors:
        out["errors"] = list(r.errors)
    if r.notes:
        out["notes"] = list(r.notes)
    return out


# --------------------------------------------------------------------------------------- golden cases

_ORIGINAL_DST = {"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}
_TLS_INSPECTOR = "{name: envoy.filters.listener.tls_inspector, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}"
_CONN_LIMIT = "{name: envoy.filters.network.connection_limit, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit, stat_prefix: limit, max_connections: 10}}"
_TCP_CHAIN = "listener: {name: main_internal, filterChain: {name: 'echo.shop.svc.cluster.local:9000'}}"
_HTTP_CHAIN = "listener: {name: main_internal, filterChain: {name: 'echo.shop.svc.cluster.local:80', filter: {name: envoy.filters.network.http_connection_manager}}}"


def _http_chain_sub(sub: str) -> str:
    return (
        "listener: {name: main_internal, filterChain: {name: 'echo.shop.svc.cluster.local:80', "
        f"filter: {{name: envoy.filters.network.http_connection_manager, subFilter: {{name: {sub}}}}}}}}}"
    )


def _lua(name: str, code: str = "function envoy_on_request(h) end") -> str:
    return f"{{name: {name}, typed_config: {{'@type': {LUA}, default_source_code: {{inline_string: '{code}'}}}}}}"


CASES: dict[str, str] = {
    # --- LISTENER
    "listener_merge": """
- applyTo: LISTENER
  match: {context: SIDECAR_INBOUND, listener: {portNumber: 15008}}
  patch: {operation: MERGE, value: {per_connection_buffer_limit_bytes: 32768, listener_filters_timeout: 5s}}
""",
    "listener_merge_appends_lists": f"""
- applyTo: LISTENER
  match: {{listener: {{name: main_internal}}}}
  patch: {{operation: MERGE, value: {{listener_filters: [{_TLS_INSPECTOR}]}}}}
""",
    "listener_merge_and_replace_list": f"""
- applyTo: LISTENER
  match: {{listener: {{name: main_internal}}}}
  patch: {{operation: MERGE_AND_REPLACE_LIST, value: {{listener_filters: [{json.dumps(_ORIGINAL_DST)}]}}}}
""",
    "listener_remove": """
- applyTo: LISTENER
  match: {listener: {name: plain_originate}}
  patch: {operation: REMOVE}
""",
    "listener_add": f"""
- applyTo: LISTENER
  match: {{context: SIDECAR_INBOUND}}
  patch:
    operation: ADD
    value:
      name: extra
      address: {{socket_address: {{address: 127.77.1.1, port_value: 15099}}}}
      filter_chains: [{{filters: [{{name: envoy.filters.network.tcp_proxy, typed_config: {{'@type': {TCP_PROXY}, stat_prefix: extra, cluster: main_internal}}}}]}}]
- applyTo: LISTENER
  patch: {{operation: ADD, value: {{name: extra-any}}}}
""",
    # --- LISTENER_FILTER
    "listener_filter_add": f"""
- applyTo: LISTENER_FILTER
  match: {{listener: {{name: main_internal}}}}
  patch: {{operation: ADD, value: {_TLS_INSPECTOR}}}
""",
    "listener_filter_insert_first": f"""
- applyTo: LISTENER_FILTER
  match: {{listener: {{name: main_internal}}}}
  patch: {{operation: INSERT_FIRST, value: {_TLS_INSPECTOR}}}
""",
    "listener_filter_insert_before": f"""
- applyTo: LISTENER_FILTER
  match: {{listener: {{name: main_internal, listenerFilter: envoy.filters.listener.http_inspector}}}}
  patch: {{operation: INSERT_BEFORE, value: {_TLS_INSPECTOR}}}
""",
    "listener_filter_insert_after": f"""
- applyTo: LISTENER_FILTER
  match: {{listener: {{name: main_internal, listenerFilter: envoy.filters.listener.original_dst}}}}
  patch: {{operation: INSERT_AFTER, value: {_TLS_INSPECTOR}}}
""",
    "listener_filter_replace": f"""
- applyTo: LISTENER_FILTER
  match: {{listener: {{listenerFilter: envoy.filters.listener.http_inspector}}}}
  patch: {{operation: REPLACE, value: {_TLS_INSPECTOR}}}
""",
    "listener_filter_remove": """
- applyTo: LISTENER_FILTER
  match: {listener: {listenerFilter: envoy.filters.listener.http_inspector}}
  patch: {operation: REMOVE}
""",
    "listener_filter_merge": f"""
- applyTo: LISTENER_FILTER
  match: {{listener: {{name: main_internal}}}}
  patch: {{operation: ADD, value: {_TLS_INSPECTOR}}}
- applyTo: LISTENER_FILTER
  match: {{listener: {{listenerFilter: envoy.filters.listener.tls_inspector}}}}
  patch:
    operation: MERGE
    value: {{typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector, enable_ja3_fingerprinting: true}}}}
""",
    # --- FILTER_CHAIN
    "filter_chain_merge": """
- applyTo: FILTER_CHAIN
  match: {listener: {filterChain: {name: 'echo.shop.svc.cluster.local:9000'}}}
  patch: {operation: MERGE, value: {transport_socket_connect_timeout: 10s, metadata: {filter_metadata: {waypost: {patched: true}}}}}
""",
    "filter_chain_merge_transport_socket": """
- applyTo: FILTER_CHAIN
  match: {listener: {name: connect_terminate}}
  patch:
    operation: MERGE
    value:
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          session_timeout: 300s
          common_tls_context: {alpn_protocols: [http/1.1]}
      transport_socket_connect_timeout: 10s
""",
    "filter_chain_merge_and_replace_list": """
- applyTo: FILTER_CHAIN
  match: {listener: {filterChain: {destinationPort: 7070, applicationProtocols: "h2c,http/1.1"}}}
  patch: {operation: MERGE_AND_REPLACE_LIST, value: {filter_chain_match: {application_protocols: [h2c]}}}
""",
    "filter_chain_remove": """
- applyTo: FILTER_CHAIN
  match: {listener: {filterChain: {destinationPort: 9000}}}
  patch: {operation: REMOVE}
""",
    "filter_chain_add": f"""
- applyTo: FILTER_CHAIN
  match: {{listener: {{name: main_internal}}}}
  patch:
    operation: INSERT_FIRST
    value:
      name: extra
      filter_chain_match: {{destination_port: 9999}}
      filters: [{{name: envoy.filters.network.tcp_proxy, typed_config: {{'@type': {TCP_PROXY}, stat_prefix: extra, cluster: main_internal}}}}]
- applyTo: FILTER_CHAIN
  match: {{listener: {{name: main_internal}}}}
  patch: {{operation: ADD, value: {{name: no-filters}}}}
""",
    # --- NETWORK_FILTER
    "network_filter_add": f"""
- applyTo: NETWORK_FILTER
  match: {{{_TCP_CHAIN}}}
  patch: {{operation: ADD, value: {_CONN_LIMIT}}}
""",
    "network_filter_insert_before": f"""
- applyTo: NETWORK_FILTER
  match: {{listener: {{filterChain: {{name: 'echo.shop.svc.cluster.local:9000', filter: {{name: envoy.filters.network.tcp_proxy}}}}}}}}
  patch: {{operation: INSERT_BEFORE, value: {_CONN_LIMIT}}}
""",
    "network_filter_insert_after": f"""
- applyTo: NETWORK_FILTER
  match: {{listener: {{filterChain: {{name: 'echo.shop.svc.cluster.local:9000', filter: {{name: envoy.filters.network.rbac}}}}}}}}
  patch: {{operation: INSERT_AFTER, value: {_CONN_LIMIT}}}
""",
    "network_filter_insert_first": f"""
- applyTo: NETWORK_FILTER
  match: {{{_TCP_CHAIN}}}
  patch: {{operation: INSERT_FIRST, value: {_CONN_LIMIT}}}
""",
    "network_filter_replace": f"""
- applyTo: NETWORK_FILTER
  match: {{listener: {{filterChain: {{name: 'echo.shop.svc.cluster.local:9000', filter: {{name: envoy.filters.network.tcp_proxy}}}}}}}}
  patch:
    operation: REPLACE
    value: {{name: envoy.filters.network.tcp_proxy, typed_config: {{'@type': {TCP_PROXY}, stat_prefix: replaced, cluster: 'inbound-vip|9000|tcp|echo.shop.svc.cluster.local'}}}}
""",
    "network_filter_remove": """
- applyTo: NETWORK_FILTER
  match: {listener: {name: main_internal, filterChain: {filter: {name: envoy.filters.network.rbac}}}}
  patch: {operation: REMOVE}
""",
    "network_filter_merge": f"""
- applyTo: NETWORK_FILTER
  match: {{{_HTTP_CHAIN}}}
  patch:
    operation: MERGE
    value:
      typed_config:
        '@type': {HCM_TYPE}
        xff_num_trusted_hops: 5
        common_http_protocol_options: {{idle_timeout: 30s}}
""",
    "network_filter_merge_renames": f"""
- applyTo: NETWORK_FILTER
  match: {{listener: {{filterChain: {{name: 'echo.shop.svc.cluster.local:9000', filter: {{name: envoy.filters.network.tcp_proxy}}}}}}}}
  patch: {{operation: MERGE, value: {{name: waypost.tcp, typed_config: {{'@type': {TCP_PROXY}, idle_timeout: 60s}}}}}}
""",
    # A MERGE without a filter match meets filters of other types: istiod panics there; we report it.
    "network_filter_merge_type_mismatch": f"""
- applyTo: NETWORK_FILTER
  match: {{{_TCP_CHAIN}}}
  patch: {{operation: MERGE, value: {{typed_config: {{'@type': {TCP_PROXY}, idle_timeout: 60s}}}}}}
""",
    # --- HTTP_FILTER
    # Exactly istiod: ADD appends, after the router (Envoy refuses that listener: the router must be last).
    "http_filter_add": f"""
- applyTo: HTTP_FILTER
  match: {{{_HTTP_CHAIN}}}
  patch: {{operation: ADD, value: {_lua("waypost.add")}}}
""",
    "http_filter_add_filter_class": f"""
- applyTo: HTTP_FILTER
  match: {{{_HTTP_CHAIN}}}
  patch: {{operation: ADD, filterClass: STATS, value: {_lua("stats.one")}}}
- applyTo: HTTP_FILTER
  match: {{{_HTTP_CHAIN}}}
  patch: {{operation: ADD, filterClass: AUTHZ, value: {_lua("authz.one")}}}
- applyTo: HTTP_FILTER
  match: {{{_HTTP_CHAIN}}}
  patch: {{operation: ADD, filterClass: AUTHN, value: {_lua("authn.one")}}}
- applyTo: HTTP_FILTER
  match: {{{_HTTP_CHAIN}}}
  patch: {{operation: ADD, filterClass: AUTHN, value: {_lua("authn.two")}}}
""",
    "http_filter_insert_before": f"""
- applyTo: HTTP_FILTER
  match: {{{_http_chain_sub("envoy.filters.http.router")}}}
  patch: {{operation: INSERT_BEFORE, value: {_lua("waypost.before-router")}}}
""",
    "http_filter_insert_after": f"""
- applyTo: HTTP_FILTER
  match: {{{_http_chain_sub("envoy.filters.http.cors")}}}
  patch: {{operation: INSERT_AFTER, value: {_lua("waypost.after-cors")}}}
""",
    "http_filter_insert_first": f"""
- applyTo: HTTP_FILTER
  match: {{{_HTTP_CHAIN}}}
  patch: {{operation: INSERT_FIRST, value: {_lua("waypost.first")}}}
""",
    "http_filter_replace": f"""
- applyTo: HTTP_FILTER
  match: {{{_http_chain_sub("envoy.filters.http.cors")}}}
  patch:
    operation: REPLACE
    value: {{name: envoy.filters.http.buffer, typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer, max_request_bytes: 1024}}}}
""",
    "http_filter_remove": """
- applyTo: HTTP_FILTER
  match: {listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager, subFilter: {name: envoy.filters.http.cors}}}}}
  patch: {operation: REMOVE}
""",
    "http_filter_merge": f"""
- applyTo: HTTP_FILTER
  match: {{{_http_chain_sub("envoy.filters.http.router")}}}
  patch:
    operation: MERGE
    value: {{typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router, suppress_envoy_headers: true}}}}
""",
    # A map field merges per key: the provider `origins-0` is replaced whole, `extra` is added.
    "http_filter_merge_map_entries": f"""
- applyTo: HTTP_FILTER
  match: {{{_http_chain_sub("envoy.filters.http.jwt_authn")}}}
  patch:
    operation: MERGE
    value:
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
        providers:
          origins-0: {{issuer: replaced, local_jwks: {{inline_string: '{{"keys": []}}'}}}}
          extra: {{issuer: extra, local_jwks: {{inline_string: '{{"keys": []}}'}}}}
""",
    # --- ROUTE_CONFIGURATION (RDS and the inline route configs of workload chains)
    "route_configuration_merge": """
- applyTo: ROUTE_CONFIGURATION
  match: {context: SIDECAR_INBOUND, routeConfiguration: {portNumber: 80}}
  patch: {operation: MERGE, value: {response_headers_to_add: [{header: {key: x-rc, value: patched}}]}}
""",
    "route_configuration_merge_inline": """
- applyTo: ROUTE_CONFIGURATION
  match: {routeConfiguration: {name: '127.77.16.1:8080'}}
  patch: {operation: MERGE, value: {max_direct_response_body_size_bytes: 2048}}
""",
    "route_configuration_merge_and_replace_list": """
- applyTo: ROUTE_CONFIGURATION
  match: {routeConfiguration: {name: 'echo.shop.svc.cluster.local:7070'}}
  patch:
    operation: MERGE_AND_REPLACE_LIST
    value: {virtual_hosts: [{name: only, domains: ['*'], routes: [{match: {prefix: /}, direct_response: {status: 418}}]}]}
""",
    "route_configuration_add_is_ignored": """
- applyTo: ROUTE_CONFIGURATION
  patch: {operation: ADD, value: {name: new}}
""",
    # --- VIRTUAL_HOST
    "virtual_host_merge": """
- applyTo: VIRTUAL_HOST
  match: {routeConfiguration: {vhost: {name: 'echo.shop.svc.cluster.local:80'}}}
  patch: {operation: MERGE, value: {request_headers_to_add: [{header: {key: x-vhost, value: patched}}], domains: [echo]}}
""",
    "virtual_host_merge_and_replace_list": """
- applyTo: VIRTUAL_HOST
  match: {routeConfiguration: {vhost: {name: 'echo.shop.svc.cluster.local:80', domainName: '*'}}}
  patch: {operation: MERGE_AND_REPLACE_LIST, value: {domains: [echo, 'echo.shop.svc.cluster.local']}}
""",
    "virtual_host_replace": """
- applyTo: VIRTUAL_HOST
  match: {routeConfiguration: {vhost: {name: 'echo.shop.svc.cluster.local:7070'}}}
  patch: {operation: REPLACE, value: {name: replaced, domains: ['*'], routes: [{match: {prefix: /}, direct_response: {status: 503}}]}}
""",
    "virtual_host_remove": """
- applyTo: VIRTUAL_HOST
  match: {routeConfiguration: {name: 'echo.shop.svc.cluster.local:7070'}}
  patch: {operation: REMOVE}
""",
    "virtual_host_add": """
- applyTo: VIRTUAL_HOST
  match: {routeConfiguration: {portNumber: 80, name: 'echo.shop.svc.cluster.local:80'}}
  patch: {operation: ADD, value: {name: extra, domains: [extra.example], routes: [{match: {prefix: /}, direct_response: {status: 204}}]}}
""",
    # --- HTTP_ROUTE
    "http_route_merge": """
- applyTo: HTTP_ROUTE
  match: {routeConfiguration: {vhost: {route: {name: v1}}}}
  patch: {operation: MERGE, value: {route: {timeout: 5s, retry_policy: {retriable_status_codes: [502]}}}}
""",
    "http_route_merge_and_replace_list": """
- applyTo: HTTP_ROUTE
  match: {routeConfiguration: {vhost: {route: {name: v1}}}}
  patch: {operation: MERGE_AND_REPLACE_LIST, value: {route: {retry_policy: {retriable_status_codes: [502]}}}}
""",
    "http_route_remove": """
- applyTo: HTTP_ROUTE
  match: {routeConfiguration: {portNumber: 80, vhost: {route: {name: v1}}}}
  patch: {operation: REMOVE}
""",
    "http_route_add": """
- applyTo: HTTP_ROUTE
  match: {routeConfiguration: {name: 'echo.shop.svc.cluster.local:80'}}
  patch: {operation: ADD, value: {name: added, match: {prefix: /added}, direct_response: {status: 200}}}
""",
    "http_route_insert_before": """
- applyTo: HTTP_ROUTE
  match: {routeConfiguration: {vhost: {route: {name: rest}}}}
  patch: {operation: INSERT_BEFORE, value: {name: inserted, match: {prefix: /inserted}, direct_response: {status: 200}}}
""",
    "http_route_insert_after": """
- applyTo: HTTP_ROUTE
  match: {routeConfiguration: {vhost: {route: {name: v1}}}}
  patch: {operation: INSERT_AFTER, value: {name: inserted, match: {prefix: /inserted}, direct_response: {status: 200}}}
""",
    "http_route_insert_first": """
- applyTo: HTTP_ROUTE
  match: {routeConfiguration: {vhost: {route: {name: rest}}}}
  patch: {operation: INSERT_FIRST, value: {name: first, match: {prefix: /first}, redirect: {path_redirect: /}}}
- applyTo: HTTP_ROUTE
  match: {routeConfiguration: {vhost: {route: {name: no-such-route}}}}
  patch: {operation: INSERT_FIRST, value: {name: never, match: {prefix: /never}, direct_response: {status: 200}}}
""",
    "http_route_action_match": """
- applyTo: HTTP_ROUTE
  match: {routeConfiguration: {name: 'echo.shop.svc.cluster.local:80', vhost: {route: {action: ROUTE}}}}
  patch: {operation: MERGE, value: {decorator: {operation: routed}}}
- applyTo: HTTP_ROUTE
  match: {routeConfiguration: {vhost: {route: {action: REDIRECT}}}}
  patch: {operation: REMOVE}
""",
    # --- CLUSTER: a waypoint's outbound clusters are patched in SIDECAR_OUTBOUND; its inbound ones never.
    "cluster_merge": """
- applyTo: CLUSTER
  match: {context: SIDECAR_OUTBOUND, cluster: {service: echo-v1.shop.svc.cluster.local, portNumber: 80}}
  patch: {operation: MERGE, value: {connect_timeout: 1s, circuit_breakers: {thresholds: [{max_connections: 100}]}}}
- applyTo: CLUSTER
  match: {context: SIDECAR_INBOUND, cluster: {}}
  patch: {operation: MERGE, value: {connect_timeout: 2s}}
""",
    "cluster_merge_transport_socket": """
- applyTo: CLUSTER
  match: {cluster: {name: 'outbound|80||echo.shop.svc.cluster.local'}}
  patch:
    operation: MERGE
    value:
      connect_timeout: 9s
      transport_socket:
        name: envoy.transport_sockets.internal_upstream
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport
          passthrough_metadata: [{kind: {host: {}}, name: waypost}]
""",
    "cluster_merge_and_replace_list": """
- applyTo: CLUSTER
  match: {cluster: {service: echo.shop.svc.cluster.local}}
  patch: {operation: MERGE_AND_REPLACE_LIST, value: {load_assignment: {endpoints: [{priority: 1}]}, dns_lookup_family: V4_ONLY}}
""",
    "cluster_remove": """
- applyTo: CLUSTER
  match: {cluster: {service: echo-v1.shop.svc.cluster.local}}
  patch: {operation: REMOVE}
""",
    "cluster_add": """
- applyTo: CLUSTER
  match: {context: SIDECAR_INBOUND}
  patch: {operation: ADD, value: {name: extra, type: STATIC, connect_timeout: 1s, load_assignment: {cluster_name: extra}}}
- applyTo: CLUSTER
  patch: {operation: INSERT_BEFORE, value: {name: extra-any, type: STATIC}}
""",
    # --- EXTENSION_CONFIG: resolved into the filters that ask for it by ECDS
    "extension_config_add": f"""
- applyTo: HTTP_FILTER
  match: {{{_http_chain_sub("envoy.filters.http.router")}}}
  patch:
    operation: INSERT_BEFORE
    value: {{name: waypost.ecds, config_discovery: {{config_source: {{ads: {{}}}}, type_urls: ['{LUA}']}}}}
- applyTo: EXTENSION_CONFIG
  patch: {{operation: ADD, value: {_lua("waypost.ecds", "function envoy_on_response(h) end")}}}
- applyTo: EXTENSION_CONFIG
  patch: {{operation: MERGE, value: {{name: waypost.ecds}}}}
""",
    # --- BOOTSTRAP
    "bootstrap_merge": """
- applyTo: BOOTSTRAP
  patch:
    operation: MERGE
    value:
      stats_flush_interval: 5s
      static_resources: {clusters: [{name: extra, type: STATIC, connect_timeout: 1s}]}
""",
    "bootstrap_merge_and_replace_list": """
- applyTo: BOOTSTRAP
  match: {context: SIDECAR_INBOUND}
  patch:
    operation: MERGE_AND_REPLACE_LIST
    value: {bootstrap_extensions: [], overload_manager: {refresh_interval: 1s, resource_monitors: []}}
""",
    # istio/istio tests/integration/ambient/baseline_test.go TestWaypointEnvoyFilter, verbatim.
    "istio_waypoint_envoyfilter": f"""
- applyTo: HTTP_FILTER
  match:
    context: SIDECAR_INBOUND
    listener:
      filterChain:
        filter:
          name: "envoy.filters.network.http_connection_manager"
          subFilter:
            name: "envoy.filters.http.router"
  patch:
    operation: INSERT_BEFORE
    value:
      name: envoy.lua
      typed_config:
        "@type": "{LUA}"
        inlineCode: |
          function envoy_on_request(request_handle)
            request_handle:headers():add("x-lua-inbound", "hello world")
          end
- applyTo: VIRTUAL_HOST
  match:
    context: SIDECAR_INBOUND
  patch:
    operation: MERGE
    value:
      request_headers_to_add:
      - header:
          key: x-vhost-inbound
          value: "hello world"
- applyTo: CLUSTER
  match:
    context: SIDECAR_INBOUND
    cluster: {{}}
  patch:
    operation: MERGE
    value:
      http2_protocol_options: {{}}
""",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_patch_matches_golden(case):
    patched = run(CASES[case])
    encode_all(patched)
    text = json.dumps(render(patched), indent=2, sort_keys=True) + "\n"
    path = GOLDEN / f"{case}.json"
    if os.environ.get("WAYPOST_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"{path.name} is missing; run with WAYPOST_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"{path.name} differs; run with WAYPOST_UPDATE_GOLDEN=1 and review the diff"


def test_every_golden_file_has_a_case():
    assert sorted(p.stem for p in GOLDEN.glob("*.json")) == sorted(CASES)


def test_every_operation_on_every_apply_to_kind_is_covered():
    covered = set()
    for text in CASES.values():
        for cp in yaml.safe_load(text):
            covered.add((cp["applyTo"], cp["patch"]["operation"]))
    for kind, operations in ef.SUPPORTED.items():
        for operation in operations:
            assert (kind, operation) in covered or (kind, "INSERT_FIRST") in covered and operation == "ADD", (kind, operation)


# ------------------------------------------------------------------------------------ semantics, unit


def _names(items) -> list[str]:
    return [i.get("name") for i in items]


def _http_filters(patched: ef.Patched, chain: str = "echo.shop.svc.cluster.local:80") -> list[str]:
    listener = next(x for x in patched.listeners if x["name"] == "main_internal")
    fc = next(x for x in listener["filter_chains"] if x["name"] == chain)
    return _names(fc["filters"][0]["typed_config"]["http_filters"])


def test_inputs_are_not_modified():
    base = fixture()
    before = json.dumps(base, sort_keys=True)
    ef.apply(base["listeners"], base["clusters"], base["routes"], ef.order([envoyfilter(CASES["istio_waypoint_envoyfilter"])], "istio-system"), base["bootstrap"])
    assert json.dumps(base, sort_keys=True) == before


def test_camel_case_and_snake_case_values_patch_identically():
    snake = run("""
- applyTo: NETWORK_FILTER
  match: {listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager}}}}
  patch: {operation: MERGE, value: {typed_config: {'@type': %s, common_http_protocol_options: {idle_timeout: 30s}, xff_num_trusted_hops: 2}}}
""".replace("%s", HCM_TYPE))
    camel = run("""
- applyTo: NETWORK_FILTER
  match: {listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager}}}}
  patch: {operation: MERGE, value: {typedConfig: {'@type': %s, commonHttpProtocolOptions: {idleTimeout: 30s}, xffNumTrustedHops: 2}}}
""".replace("%s", HCM_TYPE))
    assert snake.listeners == camel.listeners
    assert snake.report[0].changed == camel.report[0].changed == 5  # four HCMs in main_internal, one in connect_terminate


def test_value_is_stored_canonical():
    f = envoyfilter("""
- applyTo: CLUSTER
  patch: {operation: MERGE, value: {connectTimeout: 1s, perConnectionBufferLimitBytes: 10, unknownField: x}}
""")
    assert f.spec.config_patches[0].patch.value == {"connect_timeout": "1s", "per_connection_buffer_limit_bytes": 10}


def test_duration_is_replaced_whole_not_merged_field_wise():
    from google.protobuf import duration_pb2

    dst = duration_pb2.Duration(seconds=1, nanos=500_000_000)
    cluster_cls = ef._message_class("envoy.config.cluster.v3.Cluster")
    a, b = cluster_cls(), cluster_cls()
    a.connect_timeout.CopyFrom(dst)
    b.connect_timeout.seconds = 2
    ef.proto_merge(a, b)
    assert (a.connect_timeout.seconds, a.connect_timeout.nanos) == (2, 0)


def test_merge_sets_a_oneof_member_and_clears_its_siblings():
    merged = ef.merge_value("envoy.config.route.v3.Route", {"name": "r", "match": {"prefix": "/"}, "route": {"cluster": "c"}}, {"redirect": {"path_redirect": "/x"}})
    assert "route" not in merged and merged["redirect"] == {"path_redirect": "/x"}


def test_map_entries_are_replaced_per_key_and_lists_appended():
    dst = {"name": "c", "metadata": {"filter_metadata": {"a": {"x": 1, "y": 2}, "b": {"z": 3}}}, "health_checks": [{"timeout": "1s", "interval": "1s", "tcp_health_check": {}}]}
    src = {"metadata": {"filter_metadata": {"a": {"x": 9}}}, "health_checks": [{"timeout": "2s", "interval": "2s", "tcp_health_check": {}}]}
    merged = ef.merge_value("envoy.config.cluster.v3.Cluster", dst, src)
    assert merged["metadata"]["filter_metadata"] == {"a": {"x": 9}, "b": {"z": 3}}
    assert [h["timeout"] for h in merged["health_checks"]] == ["1s", "2s"]
    replaced = ef.merge_value("envoy.config.cluster.v3.Cluster", dst, src, replace_list=True)
    assert [h["timeout"] for h in replaced["health_checks"]] == ["2s"]


def test_typed_configs_of_different_types_do_not_merge():
    with pytest.raises(ValueError, match="the types differ"):
        ef.merge_any({"@type": TCP_PROXY, "stat_prefix": "a"}, {"@type": HCM_TYPE, "stat_prefix": "b"})


def test_unmerged_parts_keep_their_spelling():
    dst = {"name": "c", "connect_timeout": "5s", "type": "STATIC", "lb_policy": "ROUND_ROBIN"}  # ROUND_ROBIN is the default
    merged = ef.merge_value("envoy.config.cluster.v3.Cluster", dst, {"connect_timeout": "1s"})
    assert merged == {"name": "c", "connect_timeout": "1s", "type": "STATIC", "lb_policy": "ROUND_ROBIN"}


def test_parse_subset_key_like_istio():
    assert ef.parse_subset_key("outbound|80|v1|echo.shop.svc.cluster.local") == ("outbound", "v1", "echo.shop.svc.cluster.local", 80)
    assert ef.parse_subset_key("inbound-vip|80|http|echo.shop.svc.cluster.local") == ("inbound-vip", "http", "echo.shop.svc.cluster.local", 80)
    assert ef.parse_subset_key("main_internal") == ("", "", "", 0)
    assert ef.parse_subset_key("outbound_.80_.v1_.echo.shop") == ("outbound", "v1", "echo.shop", 80)


def test_route_port_reads_waypost_route_names():
    assert ef.route_port("echo.shop.svc.cluster.local:80") == 80
    assert ef.route_port("127.77.16.1:8080") == 8080
    assert ef.route_port("inbound|8080||") == 8080
    assert ef.route_port("connect_terminate") == 0


def test_order_is_priority_then_root_namespace_then_creation_time_then_name():
    patch = "[{applyTo: CLUSTER, patch: {operation: REMOVE}}, {applyTo: LISTENER, patch: {operation: REMOVE}}]"
    filters = [
        envoyfilter(patch, name="b", namespace="shop", created="2024-01-01T00:00:00Z"),
        envoyfilter(patch, name="a", namespace="shop", created="2024-01-02T00:00:00Z"),
        envoyfilter(patch, name="z", namespace="istio-system", created="2025-01-01T00:00:00Z"),
        envoyfilter(patch, name="early", namespace="shop", priority=-10),
        envoyfilter(patch, name="late", namespace="istio-system", priority=10),
        envoyfilter(patch, name="c", namespace="shop", created="2024-01-01T00:00:00Z"),
    ]
    keys = [p.key for p in ef.order(filters, "istio-system")]
    assert keys == [
        ("shop/early", 0), ("shop/early", 1), ("istio-system/z", 0), ("istio-system/z", 1), ("shop/b", 0), ("shop/b", 1),
        ("shop/c", 0), ("shop/c", 1), ("shop/a", 0), ("shop/a", 1), ("istio-system/late", 0), ("istio-system/late", 1),
    ]


def test_patches_apply_in_the_given_order():
    patched = run(f"""
- applyTo: HTTP_FILTER
  match: {{{_http_chain_sub("envoy.filters.http.router")}}}
  patch: {{operation: INSERT_BEFORE, value: {_lua("one")}}}
- applyTo: HTTP_FILTER
  match: {{{_http_chain_sub("one")}}}
  patch: {{operation: INSERT_AFTER, value: {_lua("two")}}}
- applyTo: HTTP_FILTER
  match: {{{_http_chain_sub("one")}}}
  patch: {{operation: MERGE, value: {{name: renamed}}}}
""")
    assert _http_filters(patched)[-4:] == ["envoy.filters.http.cors", "renamed", "two", "envoy.filters.http.router"]


@pytest.mark.parametrize(
    ("proxy", "applies"),
    [
        ({"proxyVersion": r"^1\.32.*"}, True),
        ({"proxyVersion": r"1\.3"}, True),  # RE2 MatchString searches
        ({"proxyVersion": r"^1\.31.*"}, False),
        ({"metadata": {"ISTIO_VERSION": "1.32.0"}}, False),  # waypost's proxies send no node metadata
        ({}, True),
    ],
)
def test_proxy_match(proxy, applies):
    patched = run(f"""
- applyTo: LISTENER
  match: {{proxy: {json.dumps(proxy)}, listener: {{name: plain_originate}}}}
  patch: {{operation: REMOVE}}
""")
    assert ("plain_originate" not in _names(patched.listeners)) == applies
    assert (patched.report[0].matched == 1) == applies


def test_proxy_metadata_match_uses_the_given_metadata():
    patches = ef.order([envoyfilter("[{applyTo: LISTENER, match: {proxy: {metadata: {a: b}}}, patch: {operation: REMOVE}}]")], "istio-system")
    base = fixture()
    assert ef.apply(base["listeners"], [], [], patches, proxy_metadata={"a": "b"}).listeners == ()


@pytest.mark.parametrize("context", ["GATEWAY", "SIDECAR_OUTBOUND"])
def test_listener_patches_of_other_contexts_match_nothing(context):
    patched = run(f"[{{applyTo: LISTENER, match: {{context: {context}}}, patch: {{operation: REMOVE}}}}]")
    assert len(patched.listeners) == len(fixture()["listeners"])
    assert patched.report[0].matched == 0 and patched.report[0].notes


def test_waypoint_context_patches_are_never_applied():
    patched = run("[{applyTo: LISTENER, match: {context: WAYPOINT, waypoint: {portNumber: 80}}, patch: {operation: REMOVE}}]")
    assert len(patched.listeners) == len(fixture()["listeners"])
    assert patched.report[0].notes == ("istiod applies no patch with context WAYPOINT",)


def test_inbound_clusters_are_never_patched_and_outbound_ones_only_outside_sidecar_inbound():
    patched = run("[{applyTo: CLUSTER, patch: {operation: REMOVE}}]")
    assert [c for c in _names(patched.clusters) if c.startswith("outbound|")] == []
    assert len(patched.clusters) == len(fixture()["clusters"]) - 2
    patched = run("[{applyTo: CLUSTER, match: {context: SIDECAR_INBOUND}, patch: {operation: REMOVE}}]")
    assert patched.report[0].matched == 0


def test_listener_port_number_does_not_match_the_internal_listener():
    patched = run("[{applyTo: NETWORK_FILTER, match: {listener: {portNumber: 80, filterChain: {filter: {name: envoy.filters.network.rbac}}}}, patch: {operation: REMOVE}}]")
    assert patched.report[0].matched == 0


def test_adding_an_existing_cluster_name_is_reported():
    patched = run("[{applyTo: CLUSTER, match: {context: SIDECAR_INBOUND}, patch: {operation: ADD, value: {name: main_internal}}}]")
    assert "exists twice" in patched.report[0].errors[0]


def test_http_filter_merge_skips_filters_without_typed_config():
    patched = run(f"""
- applyTo: HTTP_FILTER
  match: {{{_http_chain_sub("envoy.filters.http.router")}}}
  patch: {{operation: INSERT_BEFORE, value: {{name: bare, config_discovery: {{config_source: {{ads: {{}}}}, type_urls: ['{LUA}']}}}}}}
- applyTo: HTTP_FILTER
  match: {{{_http_chain_sub("bare")}}}
  patch: {{operation: MERGE, value: {{name: renamed}}}}
""")
    assert "bare" in _http_filters(patched)
    assert (patched.report[1].matched, patched.report[1].changed) == (1, 0)


def test_extension_config_of_a_type_the_filter_does_not_accept_is_an_error():
    patched = run(f"""
- applyTo: HTTP_FILTER
  match: {{{_http_chain_sub("envoy.filters.http.router")}}}
  patch: {{operation: INSERT_BEFORE, value: {{name: ecds, config_discovery: {{config_source: {{ads: {{}}}}, type_urls: ['{LUA}']}}}}}}
- applyTo: EXTENSION_CONFIG
  patch: {{operation: ADD, value: {{name: ecds, typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer, max_request_bytes: 1}}}}}}
- applyTo: EXTENSION_CONFIG
  patch: {{operation: ADD, value: {_lua("ecds")}}}
""")
    assert "accepts only" in patched.report[1].errors[0]
    assert "already added" in patched.report[2].errors[0]


def test_bootstrap_patches_need_a_bootstrap():
    base = fixture()
    patches = ef.order([envoyfilter("[{applyTo: BOOTSTRAP, patch: {operation: MERGE, value: {stats_flush_interval: 5s}}}]")], "istio-system")
    result = ef.apply(base["listeners"], base["clusters"], base["routes"], patches)
    assert result.bootstrap is None and result.report[0].notes == ("no bootstrap to patch",)


def test_selects_waypoint_by_gateway_or_root_gateway_class_only():
    def made(namespace: str, refs: str) -> EnvoyFilter:
        return EnvoyFilter.model_validate(
            {"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter", "metadata": {"name": "f", "namespace": namespace},
             "spec": {"targetRefs": yaml.safe_load(refs)}}
        )

    gateway = "[{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]"
    gateway_class = "[{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]"
    assert made("shop", gateway).selects_waypoint("shop", "waypoint", "istio-system")
    assert not made("other", gateway).selects_waypoint("shop", "waypoint", "istio-system")
    assert made("istio-system", gateway_class).selects_waypoint("shop", "waypoint", "istio-system")
    assert not made("shop", gateway_class).selects_waypoint("shop", "waypoint", "istio-system")
    assert not made("shop", "[{kind: Service, group: '', name: echo}]").selects_waypoint("shop", "waypoint", "istio-system")


# ------------------------------------------------------------------------------------------ validation


def _load(spec: str, monkeypatch) -> load.LoadResult:
    monkeypatch.setitem(load.KINDS, (EnvoyFilter.GROUP, EnvoyFilter.KIND), EnvoyFilter)
    return load_text(f"apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {{name: f, namespace: shop}}\nspec:\n{spec}", "ef.yaml")


def _errors(spec: str, monkeypatch) -> list[tuple[str, str]]:
    return [(d.field, d.message) for d in _load(spec, monkeypatch).errors]


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ("  configPatches: [{patch: {operation: REMOVE}}]", "spec.configPatches[0].applyTo", "Envoy filter: missing applyTo"),
        ("  configPatches: [{applyTo: CLUSTER}]", "spec.configPatches[0].patch", "Envoy filter: missing patch"),
        ("  configPatches: [{applyTo: CLUSTER, patch: {value: {}}}]", "spec.configPatches[0].patch.operation", "Envoy filter: missing patch operation"),
        ("  configPatches: [{applyTo: CLUSTER, patch: {operation: MERGE}}]", "spec.configPatches[0].patch.value", "Envoy filter: missing patch value for non-remove operation"),
        ("  configPatches: [null]", "spec.configPatches[0]", "Envoy filter: null config patch"),
        (
            "  configPatches: [{applyTo: LISTENER, match: {proxy: {proxyVersion: '(?!1)'}}, patch: {operation: REMOVE}}]",
            "spec.configPatches[0].match.proxy.proxyVersion",
            "Envoy filter: invalid regex for proxy version, [error parsing regexp: invalid or unsupported Perl syntax: `(?!`]",
        ),
        (
            "  configPatches: [{applyTo: HTTP_FILTER, match: {cluster: {}}, patch: {operation: REMOVE}}]",
            "spec.configPatches[0].match",
            "Envoy filter: applyTo for listener class objects cannot have non listener match",
        ),
        (
            "  configPatches: [{applyTo: VIRTUAL_HOST, match: {listener: {}}, patch: {operation: REMOVE}}]",
            "spec.configPatches[0].match",
            "Envoy filter: applyTo for http route class objects cannot have non route configuration match",
        ),
        (
            "  configPatches: [{applyTo: CLUSTER, match: {listener: {}}, patch: {operation: REMOVE}}]",
            "spec.configPatches[0].match",
            "Envoy filter: applyTo for cluster class objects cannot have non cluster match",
        ),
        (
            "  configPatches: [{applyTo: NETWORK_FILTER, match: {listener: {filterChain: {filter: {}}}}, patch: {operation: REMOVE}}]",
            "spec.configPatches[0].match.listener.filterChain.filter.name",
            "Envoy filter: filter match has no name to match on",
        ),
        (
            "  configPatches: [{applyTo: NETWORK_FILTER, match: {listener: {filterChain: {filter: {name: x, subFilter: {name: y}}}}}, patch: {operation: REMOVE}}]",
            "spec.configPatches[0].match.listener.filterChain.filter.subFilter",
            "Envoy filter: subfilter match can be used with applyTo HTTP_FILTER only",
        ),
        (
            "  configPatches: [{applyTo: HTTP_FILTER, match: {listener: {filterChain: {filter: {name: x, subFilter: {name: y}}}}}, patch: {operation: REMOVE}}]",
            "spec.configPatches[0].match.listener.filterChain.filter.name",
            "Envoy filter: subfilter match requires filter match with envoy.filters.network.http_connection_manager",
        ),
        (
            "  configPatches: [{applyTo: HTTP_FILTER, match: {listener: {filterChain: {filter: {name: envoy.http_connection_manager, subFilter: {}}}}}, patch: {operation: REMOVE}}]",
            "spec.configPatches[0].match.listener.filterChain.filter.subFilter.name",
            "Envoy filter: subfilter match has no name to match on",
        ),
        (
            "  configPatches: [{applyTo: CLUSTER, patch: {operation: MERGE, value: {connect_timeout: 5}}}]",
            "spec.configPatches[0].patch.value",
            "Envoy filter: Failed to parse connect_timeout field: Duration JSON value not a string: 5 at Cluster.connect_timeout.",
        ),
        (
            "  configPatches: [{applyTo: NETWORK_FILTER, patch: {operation: ADD, value: {name: x, typed_config: {'@type': type.googleapis.com/envoy.config.filter.network.tcp_proxy.v2.TcpProxy}}}}]",
            "spec.configPatches[0].patch.value",
            (
                "referenced type unknown (hint: try using the v3 XDS API): Envoy filter: Can not find message descriptor by type_url: "
                "type.googleapis.com/envoy.config.filter.network.tcp_proxy.v2.TcpProxy at Filter.typed_config"
            ),
        ),
        (
            "  configPatches: [{applyTo: LISTENER, match: {context: SIDECAR_INBOUND, waypoint: {portNumber: 80}}, patch: {operation: REMOVE}}]",
            "spec.configPatches[0].match",
            "only support waypointMatch when context is WAYPOINT",
        ),
        (
            "  configPatches: [{applyTo: LISTENER, match: {context: WAYPOINT, waypoint: {portNumber: 0}}, patch: {operation: REMOVE}}]",
            "spec.configPatches[0].match.waypoint.portNumber",
            "port must be between 1-65535",
        ),
        (
            "  configPatches: [{applyTo: LISTENER, match: {listener: {}, cluster: {}}, patch: {operation: REMOVE}}]",
            "spec.configPatches[0].match",
            "must validate one and only one schema (oneOf): set at most one of listener, routeConfiguration, cluster or waypoint",
        ),
        ("  workloadSelector: {labels: {app: 'a*'}}", "spec.workloadSelector.labels", 'wildcard is not supported in selector: "app=a*"'),
        ("  workloadSelector: {labels: {'': a}}", "spec.workloadSelector.labels", 'empty key is not supported in selector: "=a"'),
        (
            "  workloadSelector: {labels: {app: a}}\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: w}]",
            "spec",
            "only one of targetRefs or workloadSelector can be set",
        ),
        (
            "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: w, namespace: other}]",
            "spec.targetRefs[0].namespace",
            "cross namespace referencing is not currently supported",
        ),
    ],
)
def test_istio_validation_messages(spec, field, message, monkeypatch):
    assert (field, message) in _errors(spec, monkeypatch)


def test_an_error_names_its_line(monkeypatch):
    result = _load("  configPatches:\n  - applyTo: CLUSTER\n    patch:\n      operation: MERGE\n      value: {connect_timeout: 5}\n", monkeypatch)
    (error,) = result.errors
    assert (error.line, error.field) == (9, "spec.configPatches[0].patch.value")


def test_waypoint_context_patches_skip_validation(monkeypatch):
    assert _errors("  configPatches: [{applyTo: INVALID, match: {context: WAYPOINT, waypoint: {portNumber: 80}}}]", monkeypatch) == []


def test_unknown_fields_are_dropped_with_a_warning(monkeypatch):
    result = _load("  configPatches: [{applyTo: CLUSTER, patch: {operation: MERGE, value: {connect_timeout: 1s, nope: 1}}}]", monkeypatch)
    assert result.errors == []
    (resource,) = result.resources
    assert resource.spec.config_patches[0].patch.value == {"connect_timeout": "1s"}
    assert any(path == "spec.configPatches[0].patch.value" and "nope" in message for path, message in resource.warnings())


def test_warnings_like_istio(monkeypatch):
    result = _load(
        "  workloadSelector: {}\n"
        "  configPatches:\n"
        "  - {applyTo: LISTENER, match: {listener: {filterChain: {filter: {name: envoy.tcp_proxy}}}}, patch: {operation: REMOVE}}\n"
        "  - {applyTo: HTTP_FILTER, patch: {operation: ADD, value: {name: no-config}}}\n",
        monkeypatch,
    )
    (resource,) = result.resources
    messages = [m for _, m in resource.warnings()]
    assert messages[0].startswith("EnvoyFilter exposes internal implementation details")
    assert "Envoy filter: workload selector specified without labels, will be applied to all services in namespace" in messages
    assert "Envoy filter: filter match has no effect when used with LISTENER" in messages
    assert 'using deprecated filter name "envoy.tcp_proxy"; use "envoy.filters.network.tcp_proxy" instead' in messages
    assert "using deprecated types by name without typed_config; no-config" in messages


def test_only_v1alpha3_is_served(monkeypatch):
    monkeypatch.setitem(load.KINDS, (EnvoyFilter.GROUP, EnvoyFilter.KIND), EnvoyFilter)
    result = load_text("apiVersion: networking.istio.io/v1\nkind: EnvoyFilter\nmetadata: {name: f}\nspec: {}\n")
    assert [d.field for d in result.errors] == ["apiVersion"]


def test_creation_time_orders_unset_first():
    assert envoyfilter("[]").creation_time == datetime.min.replace(tzinfo=UTC)
    assert envoyfilter("[]", created="2024-05-01T10:00:00Z").creation_time.year == 2024
