"""HTTPRoute entries → Envoy RouteConfiguration for one service port in its waypoint.

Without an attached route the waypoint's default route applies (istio-ambient-semantics.md §3.5): all
requests go to the service's own endpoints, balanced per request, with no timeout and Istio's default
retry policy. Once a route attaches, only its rules apply, and unmatched requests get Envoy's 404.
Consumer routes come first; each is matched on the client's namespace (the mTLS peer identity, kept in
filter state by `connect_terminate`).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from waypost.mesh.model import (
    Cors,
    Fault,
    HeaderOps,
    HTTPRouteEntry,
    IstioRetry,
    MeshSnapshot,
    PathRewrite,
    Redirect,
    Service,
    ServicePort,
    ValueMatch,
    WeightedBackend,
    TRUST_DOMAIN,
)

from . import destination
from .common import PEER_PRINCIPAL_KEY

CORS_FILTER = "envoy.filters.http.cors"
T_CORS_POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"

# Istio's default retry policy for mesh HTTP routes (pilot/pkg/networking/core/route/retry/retry.go).
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
PREVIOUS_HOSTS = [
    {
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
    }
]
DEFAULT_RETRY = {
    "retry_on": DEFAULT_RETRY_ON,
    "num_retries": 2,
    "retriable_status_codes": [503],
    "retry_host_predicate": PREVIOUS_HOSTS,
    "host_selection_retry_max_attempts": "5",
}
ANY_DOMAIN = ["*"]  # shared: never changed in place
REDIRECT_CODES = {301: "MOVED_PERMANENTLY", 302: "FOUND", 303: "SEE_OTHER", 307: "TEMPORARY_REDIRECT", 308: "PERMANENT_REDIRECT"}


FAULT_FILTER = "envoy.filters.http.fault"
T_FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"


def cluster_name(backend: WeightedBackend | Any) -> str:
    # A backend that cannot be resolved keeps its share: the missing cluster answers 500.
    prefix = "outbound" if getattr(backend, "exists", True) else "missing"
    return f"{prefix}|{backend.port}|{getattr(backend, 'subset', '')}|{backend.service}"


def _string_match(m: ValueMatch) -> dict[str, Any]:
    if m.regex:
        return {"safe_regex": {"regex": m.value}}
    if m.how == "prefix":
        return {"prefix": m.value}
    return {"exact": m.value}


def _header_matcher(h: ValueMatch) -> dict[str, Any]:
    out: dict[str, Any] = {"name": h.name}
    if h.how == "present":
        out["present_match"] = True
    else:
        out["string_match"] = _string_match(h)
    if h.invert:
        # VirtualService withoutHeaders: a missing header counts as "" (Istio), so it does not match.
        out["invert_match"] = True
        if h.how != "present":
            out["treat_missing_header_as_empty"] = True
    return out


def _query_matcher(q: ValueMatch) -> dict[str, Any]:
    if q.how == "present":
        return {"name": q.name, "present_match": True}
    return {"name": q.name, "string_match": _string_match(q)}


def _match(entry: HTTPRouteEntry) -> dict[str, Any]:
    if entry.path_type == "Exact":
        match: dict[str, Any] = {"path": entry.path}
    elif entry.path_type == "RegularExpression":
        match = {"safe_regex": {"regex": entry.path}}
    elif entry.path == "/" or entry.path_type == "Prefix":
        # A VirtualService prefix is a plain string prefix (Istio): /v2 also matches /v2example.
        match = {"prefix": entry.path}
    else:
        # Gateway API prefixes match whole path segments: /v2 matches /v2 and /v2/x but not /v2example.
        match = {"path_separated_prefix": entry.path}
    if not entry.case_sensitive:
        match["case_sensitive"] = False
    headers = [_header_matcher(h) for h in entry.headers]
    if entry.method:
        headers.append(_method_matcher(entry.method))
    if headers:
        match["headers"] = headers
    if entry.query:
        match["query_parameters"] = [_query_matcher(q) for q in entry.query]
    if entry.consumer_namespace:
        match["filter_state"] = [consumer_matcher(entry.consumer_namespace)]
    return match


@functools.cache
def _method_matcher(method: str) -> dict[str, Any]:
    return {"name": ":method", "string_match": {"exact": method}}


def consumer_matcher(namespace: str) -> dict[str, Any]:
    return {"key": PEER_PRINCIPAL_KEY, "string_match": {"prefix": f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/"}}


def _header_ops(ops: HeaderOps, direction: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    add = [{"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"} for k, v in ops.set]
    add += [{"header": {"key": k, "value": v}, "append_action": "APPEND_IF_EXISTS_OR_ADD"} for k, v in ops.add]
    if add:
        out[f"{direction}_headers_to_add"] = add
    if ops.remove:
        out[f"{direction}_headers_to_remove"] = [n.lower() for n in ops.remove]
    return out


def _path_rewrite(rewrite: PathRewrite) -> dict[str, Any]:
    """Gateway API path modifiers as Envoy rewrites (the table in gateway-api.md §2.4, URLRewrite row);
    a VirtualService's uri rewrite is Envoy's prefix_rewrite as written, its uriRegexRewrite a regex_rewrite."""
    if rewrite.pattern is not None:
        return {"regex_rewrite": {"pattern": {"regex": rewrite.pattern}, "substitution": rewrite.value}}
    if rewrite.literal:
        return {"prefix_rewrite": rewrite.value}
    if rewrite.full:
        return {"regex_rewrite": {"pattern": {"regex": "^/.*$"}, "substitution": rewrite.value}}
    replacement = rewrite.value.rstrip("/")
    prefix = rewrite.matched_prefix.rstrip("/")
    if not prefix:
        # Matched prefix "/": keep the rest of the path after the new prefix.
        return {"regex_rewrite": {"pattern": {"regex": "^/"}, "substitution": f"{replacement}/"}}
    if not replacement:
        # Replacing with "" or "/": never produce an empty path or "//".
        return {"regex_rewrite": {"pattern": {"regex": f"^{re.escape(prefix)}/*"}, "substitution": "/"}}
    return {"prefix_rewrite": replacement}


def _redirect(r: Redirect) -> dict[str, Any]:
    out: dict[str, Any] = {"response_code": REDIRECT_CODES[r.status_code]}
    if r.scheme:
        out["scheme_redirect"] = r.scheme
    if r.hostname:
        out["host_redirect"] = r.hostname
    if r.port:
        out["port_redirect"] = r.port
    if r.strip_port:
        out["port_redirect"] = 0
    if r.path:
        if r.path.full:
            out["path_redirect"] = r.path.value
        else:
            out.update(_path_rewrite(r.path))
    return out


def _cors_policy(c: Cors) -> dict[str, Any]:
    origins = []
    for origin in c.allow_origins:
        if origin == "*":
            origins.append({"safe_regex": {"regex": ".*"}})
        elif "*" in origin:
            origins.append({"safe_regex": {"regex": ".*".join(re.escape(part) for part in origin.split("*"))}})
        else:
            origins.append({"exact": origin})
    origins += [_string_match(m) for m in c.origin_matches if m.how != "present"]
    origins += [{"safe_regex": {"regex": ".*"}} for m in c.origin_matches if m.how == "present"]
    policy: dict[str, Any] = {"@type": T_CORS_POLICY, "allow_origin_string_match": origins}
    if c.max_age is not None:
        policy["max_age"] = str(c.max_age)
    if c.allow_methods:
        policy["allow_methods"] = ",".join(c.allow_methods)
    if c.allow_headers:
        policy["allow_headers"] = ",".join(c.allow_headers)
    if c.expose_headers:
        policy["expose_headers"] = ",".join(c.expose_headers)
    if c.allow_credentials:
        policy["allow_credentials"] = True
    if c.kind == "VirtualService":
        # Istio's TranslateCORSPolicy: always enabled; preflights matching no origin go on to the app
        # unless unmatchedPreflights is IGNORE.
        policy["filter_enabled"] = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
        policy["forward_not_matching_preflights"] = c.forward_unmatched_preflights
    return policy


def _istio_retry(r: IstioRetry) -> dict[str, Any] | None:
    """A VirtualService `retries` stanza as Istio's retry.ConvertPolicy renders it."""
    if r.attempts == 0:
        return None
    policy: dict[str, Any] = {"retry_on": r.retry_on or DEFAULT_RETRY_ON, "num_retries": r.attempts}
    if r.codes:
        policy["retriable_status_codes"] = list(r.codes)
    if r.previous_hosts:
        policy["retry_host_predicate"] = PREVIOUS_HOSTS
    policy["host_selection_retry_max_attempts"] = "5"
    if r.per_try_timeout_ms:
        policy["per_try_timeout"] = f"{r.per_try_timeout_ms / 1000:g}s"
    if r.backoff_ms:
        policy["retry_back_off"] = {"base_interval": f"{r.backoff_ms / 1000:g}s"}
    return policy


def _retry(entry: HTTPRouteEntry) -> dict[str, Any] | None:
    if entry.istio_retry is not None:
        return _istio_retry(entry.istio_retry)
    if entry.retry is None:
        return DEFAULT_RETRY  # shared by every route that has it (configs are never changed in place)
    elif entry.retry.attempts == 0:
        return None
    else:
        # Gateway API retry: connection errors are retried too (GEP-1731); listed codes only.
        policy = {
            "retry_on": "connect-failure,refused-stream,unavailable,cancelled,reset" + (",retriable-status-codes" if entry.retry.codes else ""),
            "num_retries": entry.retry.attempts,
            "retry_host_predicate": PREVIOUS_HOSTS,
            "host_selection_retry_max_attempts": "5",
        }
        if entry.retry.codes:
            policy["retriable_status_codes"] = list(entry.retry.codes)
        if entry.retry.backoff_ms:
            policy["retry_back_off"] = {"base_interval": f"{entry.retry.backoff_ms / 1000:g}s"}
        if entry.backend_timeout_ms:
            policy["per_try_timeout"] = f"{entry.backend_timeout_ms / 1000:g}s"
    return policy


def _forward(entry: HTTPRouteEntry, live: list[WeightedBackend], hashing=None) -> dict[str, Any]:
    # An invalid backend's share: HTTP 500, or gRPC UNAVAILABLE (a 503 local reply) for GRPCRoute.
    # A VirtualService destination without a cluster (unknown host or subset): 503, as in Istio.
    not_found = "SERVICE_UNAVAILABLE" if entry.kind in ("GRPCRoute", "VirtualService") else "INTERNAL_SERVER_ERROR"
    action: dict[str, Any] = {"cluster_not_found_response_code": not_found}
    per_backend_filters = any(b.request_headers or b.response_headers for b in live)
    if len(live) == 1 and not per_backend_filters:
        action["cluster"] = cluster_name(live[0])
        policy = hashing(live[0]) if hashing is not None and live[0].exists else None
        if policy:
            action["hash_policy"] = policy  # the destination's DestinationRule balances by consistent hash
    else:
        clusters = []
        for b in live:
            item: dict[str, Any] = {"name": cluster_name(b), "weight": b.weight}
            item.update(_header_ops(b.request_headers, "request"))
            item.update(_header_ops(b.response_headers, "response"))
            clusters.append(item)
        action["weighted_clusters"] = {"clusters": clusters}
    # Timeouts: `request` bounds the whole exchange; `backendRequest` each attempt (per-try with a
    # retry stanza, else it is the route timeout). Unset means no timeout, as in Istio.
    timeout_ms = entry.timeout_ms
    if timeout_ms is None and entry.backend_timeout_ms is not None and entry.retry is None:
        timeout_ms = entry.backend_timeout_ms
    action["timeout"] = f"{(timeout_ms or 0) / 1000:g}s"
    retry = _retry(entry)
    if retry is not None:
        action["retry_policy"] = retry
    if entry.rewrite_host:
        action["host_rewrite_literal"] = entry.rewrite_host
    if entry.rewrite_path:
        action.update(_path_rewrite(entry.rewrite_path))
    if entry.mirrors:
        action["request_mirror_policies"] = [
            {"cluster": f"outbound|{m.port}|{m.subset}|{m.service}"}
            # Istio (DISABLE_SHADOW_HOST_SUFFIX, on by default) keeps the authority of VirtualService mirrors.
            | ({"disable_shadow_host_suffix_append": True} if entry.kind == "VirtualService" else {})
            | (
                {}
                if m.per_million >= 1_000_000
                else {"runtime_fraction": {"default_value": {"numerator": m.per_million, "denominator": "MILLION"}}}
            )
            for m in entry.mirrors
        ]
    return action


def route(entry: HTTPRouteEntry, hashing=None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": entry.route_name, "match": _match(entry)}
    live = [b for b in entry.backends if b.weight > 0]
    if entry.direct_status is not None:
        out["direct_response"] = {"status": entry.direct_status}
        if entry.direct_body is not None:
            out["direct_response"]["body"] = {"inline_string": entry.direct_body}
    elif entry.redirect is not None:
        out["redirect"] = _redirect(entry.redirect)
    elif not live:
        # No backendRefs, or every weight 0: the request cannot be forwarded (Gateway API: 500; gRPC UNAVAILABLE).
        out["direct_response"] = {"status": 503 if entry.kind == "GRPCRoute" else 500}
    else:
        out["route"] = _forward(entry, live, hashing)
    out.update(_header_ops(entry.request_headers, "request"))
    out.update(_header_ops(entry.response_headers, "response"))
    per_filter: dict[str, Any] = {}
    if entry.cors is not None:
        per_filter[CORS_FILTER] = _cors_policy(entry.cors)
    if entry.fault is not None:
        per_filter[FAULT_FILTER] = fault_config(entry.fault)
    if per_filter:
        out["typed_per_filter_config"] = per_filter
    return out


def _share(per_million: int) -> dict[str, Any]:
    return {"numerator": per_million, "denominator": "MILLION"}


def fault_config(f: Fault) -> dict[str, Any]:
    """A VirtualService fault as the fault filter's per-route config (Istio's translateFault)."""
    out: dict[str, Any] = {"@type": T_FAULT}
    if f.delay_ms is not None:
        out["delay"] = {"fixed_delay": f"{f.delay_ms / 1000:g}s", "percentage": _share(f.delay_per_million)}
    if f.abort_http is not None:
        out["abort"] = {"http_status": f.abort_http, "percentage": _share(f.abort_per_million)}
    elif f.abort_grpc is not None:
        out["abort"] = {"grpc_status": f.abort_grpc, "percentage": _share(f.abort_per_million)}
    return out


def fault_filter() -> dict[str, Any]:
    """The fault filter, on the chains whose routes inject faults; it acts only where a route configures it."""
    return {"name": FAULT_FILTER, "typed_config": {"@type": T_FAULT}}


def needed_clusters(entries: tuple[HTTPRouteEntry, ...]) -> list[tuple[str, int, str]]:
    needed = {(b.service, b.port, b.subset) for e in entries for b in e.backends if b.exists and b.weight > 0}
    needed |= {(m.service, m.port, m.subset) for e in entries for m in e.mirrors}
    return sorted(needed)


def route_configuration(
    snapshot: MeshSnapshot, service: Service, port: ServicePort, name: str, proxy_namespace: str | None = None
) -> tuple[dict[str, Any], list[tuple[str, int, str]]]:
    default_cluster = f"inbound-vip|{port.port}|http|{service.fqdn}"
    attached = snapshot.routes_for(service.key, port.port)
    proxy_namespace = proxy_namespace or service.namespace

    def hashing(backend: WeightedBackend) -> list[dict[str, Any]] | None:
        target = snapshot.service_by_fqdn(backend.service)
        if target is None:
            return None
        rule = snapshot.destination_rule(backend.service, proxy_namespace, target.namespace)
        return destination.hash_policy(rule, backend.port, backend.subset) if rule is not None else None

    # A DYNAMIC_DNS ServiceEntry forwards to whatever the Host header names: only hosts its wildcard
    # matches are routed, others get 404 (Istio's buildRouteVHostDomains, against Host header injection).
    domains = [service.fqdn, f"{service.fqdn}:{port.port}"] if service.dynamic_dns else ANY_DOMAIN
    if attached is None or not attached.entries:
        config = default_route_config(name, default_cluster, domains)
        own = destination.hash_policy(snapshot.destination_rule(service.fqdn, proxy_namespace, service.namespace), port.port)
        if own:
            route0 = config["virtual_hosts"][0]["routes"][0]
            config["virtual_hosts"][0]["routes"][0] = {**route0, "route": {**route0["route"], "hash_policy": own}}
        return config, []
    routes: list[dict[str, Any]] = []
    for namespace in attached.consumer_namespaces:
        group = [e for e in attached.consumers if e.consumer_namespace == namespace]
        routes.extend(route(e, hashing) for e in group)
        # A client namespace with consumer routes uses only those: its unmatched requests get 404.
        routes.append(
            {
                "name": f"consumer.{namespace}.unmatched",
                "match": {"prefix": "/", "filter_state": [consumer_matcher(namespace)]},
                "direct_response": {"status": 404},
            }
        )
    routes.extend(route(e, hashing) for e in attached.producers)
    if not attached.producers:
        routes.append(_default_route(default_cluster))
    config = {"name": name, "validate_clusters": False, "virtual_hosts": [{"name": name, "domains": domains, "routes": routes}]}
    return config, needed_clusters(attached.entries)


def _default_route(cluster: str) -> dict[str, Any]:
    return {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s", "retry_policy": DEFAULT_RETRY}}


def default_route_config(name: str, cluster: str, domains: list[str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "validate_clusters": False,
        "virtual_hosts": [{"name": name, "domains": domains or ANY_DOMAIN, "routes": [_default_route(cluster)]}],
    }
