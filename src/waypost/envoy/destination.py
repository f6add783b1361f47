"""DestinationRule traffic policy → the settings of one waypoint cluster (and a route's hash policy).

Istio's rules (pilot/pkg/networking/core/cluster_traffic_policy.go, cluster_tls.go, cluster_waypoint.go,
pilot/pkg/networking/util GetPortLevelTrafficPolicy and model MergeTrafficPolicy):
- a `portLevelSettings` entry for the cluster's port replaces the rule's whole policy (its unset fields
  take defaults, not the top-level values; proxyProtocol and retryBudget are dropped);
- a subset's policy overrides the (port-resolved) rule policy field by field, or wholesale when the
  subset has a port-level entry for the port;
- with a rule in effect the cluster gets Istio's defaults: LEAST_REQUEST balancing and circuit breakers
  open to 2^32-1; without a rule, the cluster is left as translated;
- TLS SIMPLE/MUTUAL is originated inside the HBONE tunnel (the internal upstream socket wraps it);
  ISTIO_MUTUAL and DISABLE change nothing: the mesh hop is HBONE anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from waypost.api.destinationrule import DestinationRuleSpec, Subset, TrafficPolicy
from waypost.durations import parse_go_duration

from . import common as c

MAX = 4294967295
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
T_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
T_PROXY_PROTOCOL = "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport"
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"
LB_POLICIES = {"ROUND_ROBIN": "ROUND_ROBIN", "RANDOM": "RANDOM", "LEAST_REQUEST": "LEAST_REQUEST", "LEAST_CONN": "LEAST_REQUEST"}


@dataclass(frozen=True)
class Effective:
    """The policy one cluster gets: each part as the rule, its port-level entry and the subset decide it."""

    load_balancer: Any = None
    connection_pool: Any = None
    outlier_detection: Any = None
    tls: Any = None
    proxy_protocol: Any = None
    retry_budget: Any = None


def _at_port(policy: TrafficPolicy | None, port: int) -> tuple[Effective, bool]:
    if policy is None:
        return Effective(), False
    for setting in policy.port_level_settings:
        if setting.port is not None and setting.port.number == port:
            return Effective(setting.load_balancer, setting.connection_pool, setting.outlier_detection, setting.tls), True
    return Effective(policy.load_balancer, policy.connection_pool, policy.outlier_detection, policy.tls, policy.proxy_protocol, policy.retry_budget), False


def effective(spec: DestinationRuleSpec, port: int, subset: Subset | None) -> Effective:
    base, _ = _at_port(spec.traffic_policy, port)
    if subset is None or subset.traffic_policy is None:
        return base
    sub, port_level = _at_port(subset.traffic_policy, port)
    pick = (lambda mine, theirs: mine) if port_level else (lambda mine, theirs: mine if mine is not None else theirs)
    return Effective(
        pick(sub.load_balancer, base.load_balancer),
        pick(sub.connection_pool, base.connection_pool),
        pick(sub.outlier_detection, base.outlier_detection),
        pick(sub.tls, base.tls),
        sub.proxy_protocol if sub.proxy_protocol is not None else base.proxy_protocol,
        sub.retry_budget if sub.retry_budget is not None else base.retry_budget,
    )


def subset_of(spec: DestinationRuleSpec | None, name: str) -> Subset | None:
    if spec is None:
        return None
    return next((s for s in spec.subsets if s.name == name), None)


def _duration(value: str) -> str:
    return f"{parse_go_duration(value):g}s"


def _load_balancer(cluster: dict[str, Any], lb) -> None:
    cluster["lb_policy"] = "LEAST_REQUEST"  # Istio's default algorithm
    if lb is None:
        return
    if lb.simple is not None and lb.simple != "UNSPECIFIED":
        cluster["lb_policy"] = LB_POLICIES[lb.simple]
    if lb.consistent_hash is not None:
        h = lb.consistent_hash
        if h.maglev is not None:
            cluster["lb_policy"] = "MAGLEV"
            if h.maglev.table_size:
                cluster["maglev_lb_config"] = {"table_size": str(h.maglev.table_size)}
        else:
            cluster["lb_policy"] = "RING_HASH"
            size = h.ring_hash.minimum_ring_size if h.ring_hash is not None else (h.minimum_ring_size or 1024)
            if size:
                cluster["ring_hash_lb_config"] = {"minimum_ring_size": str(size)}
    window = None
    aggression, minimum = 1.0, 10.0
    if lb.warmup is not None:
        window = lb.warmup.duration
        aggression = float(lb.warmup.aggression) if lb.warmup.aggression is not None else 1.0
        minimum = float(lb.warmup.minimum_percent) if lb.warmup.minimum_percent is not None else 10.0
    elif lb.warmup_duration_secs is not None:
        window = lb.warmup_duration_secs
    if window is not None and cluster["lb_policy"] in ("ROUND_ROBIN", "LEAST_REQUEST"):
        slow: dict[str, Any] = {"slow_start_window": _duration(window)}
        if lb.warmup is not None:
            slow["aggression"] = {"default_value": aggression, "runtime_key": "waypost.slow_start_aggression"}
            slow["min_weight_percent"] = {"value": minimum}
        key = "round_robin_lb_config" if cluster["lb_policy"] == "ROUND_ROBIN" else "least_request_lb_config"
        cluster[key] = {"slow_start_config": slow}


def _http_options(cluster: dict[str, Any]) -> dict[str, Any] | None:
    """The cluster's HttpProtocolOptions, copied so that shared constant parts stay untouched (HTTP clusters only)."""
    options = cluster.get("typed_extension_protocol_options", {}).get(HTTP_OPTIONS)
    if options is None:
        return None
    options = {k: (dict(v) if isinstance(v, dict) else v) for k, v in options.items()}
    cluster["typed_extension_protocol_options"] = {**cluster["typed_extension_protocol_options"], HTTP_OPTIONS: options}
    return options


def _connection_pool(cluster: dict[str, Any], pool, retry_budget) -> None:
    threshold: dict[str, Any] = {"max_connections": MAX, "max_pending_requests": MAX, "max_requests": MAX, "max_retries": MAX}
    if pool is not None and pool.http is not None:
        h = pool.http
        if h.http2_max_requests:
            threshold["max_requests"] = h.http2_max_requests
        if h.http1_max_pending_requests:
            threshold["max_pending_requests"] = h.http1_max_pending_requests
        if h.max_retries:
            threshold["max_retries"] = h.max_retries
    if pool is not None and pool.tcp is not None and pool.tcp.max_connections:
        threshold["max_connections"] = pool.tcp.max_connections
    if retry_budget is not None:
        budget: dict[str, Any] = {}
        if retry_budget.percent is not None:
            budget["budget_percent"] = {"value": float(retry_budget.percent)}
        if retry_budget.min_retry_concurrency is not None:
            budget["min_retry_concurrency"] = retry_budget.min_retry_concurrency
        threshold["retry_budget"] = budget
    cluster["circuit_breakers"] = {"thresholds": [threshold]}
    if pool is None:
        return
    tcp, http = pool.tcp, pool.http
    if tcp is not None and tcp.connect_timeout:
        cluster["connect_timeout"] = _duration(tcp.connect_timeout)
    if tcp is not None and tcp.tcp_keepalive is not None:
        k = tcp.tcp_keepalive
        keepalive: dict[str, Any] = {}
        if k.probes:
            keepalive["keepalive_probes"] = k.probes
        if k.time:
            keepalive["keepalive_time"] = max(1, int(parse_go_duration(k.time)))
        if k.interval:
            keepalive["keepalive_interval"] = max(1, int(parse_go_duration(k.interval)))
        cluster["upstream_connection_options"] = {"tcp_keepalive": keepalive}
    options = _http_options(cluster)
    if options is None:
        return
    common: dict[str, Any] = dict(options.get("common_http_protocol_options", {}))
    idle = (http.idle_timeout if http is not None else None) or (tcp.idle_timeout if tcp is not None else None)
    if idle:
        common["idle_timeout"] = _duration(idle)
    if http is not None and http.max_requests_per_connection:
        common["max_requests_per_connection"] = http.max_requests_per_connection
    if tcp is not None and tcp.max_connection_duration:
        common["max_connection_duration"] = _duration(tcp.max_connection_duration)
    if common:
        options["common_http_protocol_options"] = common
    if http is not None and http.use_client_protocol:
        options.pop("explicit_http_config", None)
        options["use_downstream_protocol_config"] = {"http_protocol_options": {}, "http2_protocol_options": {}}
    elif http is not None and http.h2_upgrade_policy == "UPGRADE" and "explicit_http_config" not in options:
        # The waypoint's HTTP clusters follow the client's protocol; UPGRADE makes them speak HTTP/2.
        options.pop("use_downstream_protocol_config", None)
        options["explicit_http_config"] = {"http2_protocol_options": {}}
    h2 = options.get("explicit_http_config", {}).get("http2_protocol_options")
    if h2 is not None and http is not None and (http.max_concurrent_streams or http.http2_keep_alive):
        h2 = dict(h2)
        if http.max_concurrent_streams:
            h2["max_concurrent_streams"] = http.max_concurrent_streams
        if http.http2_keep_alive is not None:
            h2["connection_keepalive"] = {
                k: _duration(v) for k, v in (("interval", http.http2_keep_alive.interval), ("timeout", http.http2_keep_alive.timeout)) if v
            }
        options["explicit_http_config"] = {"http2_protocol_options": h2}


def _outlier_detection(cluster: dict[str, Any], od) -> None:
    if od is None:
        return
    out: dict[str, Any] = {"enforcing_success_rate": 0}
    if od.consecutive5xx_errors is not None:
        out["consecutive_5xx"] = od.consecutive5xx_errors
        out["enforcing_consecutive_5xx"] = 100 if od.consecutive5xx_errors > 0 else 0
    if od.consecutive_gateway_errors is not None:
        out["consecutive_gateway_failure"] = od.consecutive_gateway_errors
        out["enforcing_consecutive_gateway_failure"] = 100 if od.consecutive_gateway_errors > 0 else 0
    if od.interval:
        out["interval"] = _duration(od.interval)
    if od.base_ejection_time:
        out["base_ejection_time"] = _duration(od.base_ejection_time)
    if od.max_ejection_percent:
        out["max_ejection_percent"] = od.max_ejection_percent
    if od.split_external_local_origin_errors:
        out["split_external_local_origin_errors"] = True
        out["enforcing_local_origin_success_rate"] = 0
        if od.consecutive_local_origin_failures:
            out["consecutive_local_origin_failure"] = od.consecutive_local_origin_failures
            out["enforcing_consecutive_local_origin_failure"] = 100
    cluster["outlier_detection"] = out
    # Panic mode off unless minHealthPercent asks for it: an ejected endpoint really gets no traffic.
    cluster["common_lb_config"] = {"healthy_panic_threshold": {"value": float(od.min_health_percent or 0)}}


def _tls_socket(tls, h2: bool) -> dict[str, Any] | None:
    if tls is None or tls.mode in (None, "DISABLE", "ISTIO_MUTUAL"):
        return None
    common: dict[str, Any] = {}
    if not tls.insecure_skip_verify:
        ca = tls.ca_certificates or SYSTEM_CA  # Istio's default, "system": the OS trust store
        if ca:
            validation: dict[str, Any] = {"trusted_ca": {"filename": ca}}
            if tls.subject_alt_names:
                validation["match_typed_subject_alt_names"] = [
                    {"san_type": san_type, "matcher": {"exact": name}} for name in tls.subject_alt_names for san_type in ("DNS", "URI")
                ]
            common["validation_context"] = validation
    if tls.mode == "MUTUAL":
        common["tls_certificates"] = [{"certificate_chain": {"filename": tls.client_certificate}, "private_key": {"filename": tls.private_key}}]
    if h2:
        common["alpn_protocols"] = ["h2"]
    context: dict[str, Any] = {"@type": T_TLS, "common_tls_context": common}
    if tls.sni:
        context["sni"] = tls.sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _transport(cluster: dict[str, Any], tls, proxy_protocol) -> None:
    options = cluster.get("typed_extension_protocol_options", {}).get(HTTP_OPTIONS) or {}
    h2 = "http2_protocol_options" in options.get("explicit_http_config", {})
    inner = _tls_socket(tls, h2)
    if inner is not None and not tls.sni and options:
        # No SNI given: send the request's host (Istio sets auto_sni; and auto_san_validation without SANs).
        opts = _http_options(cluster)
        assert opts is not None
        upstream: dict[str, Any] = {"auto_sni": True}
        if not tls.subject_alt_names and not tls.insecure_skip_verify:
            upstream["auto_san_validation"] = True
        opts["upstream_http_protocol_options"] = upstream
    if proxy_protocol is not None and proxy_protocol.version is not None:
        wrapped = inner or c.RAW_BUFFER
        inner = {
            "name": "envoy.transport_sockets.upstream_proxy_protocol",
            "typed_config": {"@type": T_PROXY_PROTOCOL, "config": {"version": proxy_protocol.version}, "transport_socket": wrapped},
        }
    if inner is None:
        return
    socket = cluster["transport_socket"]
    cluster["transport_socket"] = {**socket, "typed_config": {**socket["typed_config"], "transport_socket": inner}}


def apply(cluster: dict[str, Any], spec: DestinationRuleSpec | None, port: int, subset: str = "") -> dict[str, Any]:
    """`cluster` (a fresh dict, changed in place and returned) with the rule's policy for `port` and `subset`."""
    if spec is None:
        return cluster
    policy = effective(spec, port, subset_of(spec, subset) if subset else None)
    _load_balancer(cluster, policy.load_balancer)
    _connection_pool(cluster, policy.connection_pool, policy.retry_budget)
    _outlier_detection(cluster, policy.outlier_detection)
    _transport(cluster, policy.tls, policy.proxy_protocol)
    return cluster


def hash_policy(spec: DestinationRuleSpec | None, port: int, subset: str = "") -> list[dict[str, Any]] | None:
    """The route's hash_policy for a destination whose rule balances by consistent hash (Istio's
    ConsistentHashToHashPolicy), or None."""
    if spec is None:
        return None
    lb = effective(spec, port, subset_of(spec, subset) if subset else None).load_balancer
    if lb is None or lb.consistent_hash is None:
        return None
    h = lb.consistent_hash
    if h.http_header_name:
        return [{"header": {"header_name": h.http_header_name}}]
    if h.http_cookie is not None:
        cookie: dict[str, Any] = {"name": h.http_cookie.name}
        if h.http_cookie.ttl is not None:
            cookie["ttl"] = _duration(h.http_cookie.ttl)
        if h.http_cookie.path:
            cookie["path"] = h.http_cookie.path
        if h.http_cookie.attributes:
            cookie["attributes"] = [{"name": a.name, "value": a.value or ""} for a in h.http_cookie.attributes]
        return [{"cookie": cookie}]
    if h.use_source_ip:
        return [{"connection_properties": {"source_ip": True}}]
    return [{"query_parameter": {"name": h.http_query_parameter_name}}]


def subset_endpoints(endpoints: tuple, labels_of, subset: Subset | None) -> tuple:
    """The endpoints of a subset: those whose workload has all the subset's labels."""
    if subset is None:
        return endpoints
    wanted = subset.labels.items()
    return tuple(e for e in endpoints if all(labels_of(e).get(k) == v for k, v in wanted))
