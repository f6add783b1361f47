"""A waypoint as an Envoy: terminate HBONE, pick the service by original destination, route at L7, re-originate.

Layout as Istio's waypoint (`pilot/pkg/networking/core/listener_waypoint.go`, `cluster_waypoint.go`) and
shared/spec/envoy-dataplane.md "Recommended Envoy layout":
- `connect_terminate` on waypointIP:15008 — mTLS with a client certificate required; only CONNECT
  authorities this waypoint serves are accepted (service VIP:port, or pod IP for workload waypoints);
- `main_internal` — one filter chain per served VIP:port (HTTP → HCM with RDS `<fqdn>:<port>`, TCP →
  tcp_proxy, unknown → sniffed), and per served workload IP:port;
- `connect_originate` — HBONE to the chosen endpoint's ztunnel with the **waypoint's own** identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from waypost.mesh.model import Endpoint, L4Routes, MeshSnapshot, Service, Waypoint, Workload
from waypost.mesh.registry import port_protocol

from waypost.mesh.build import interned
from waypost.mesh.tracking import Diff, ReadIndex, Recorder

from . import common as c
from . import destination, extauthz, extensions, jwt, rbac, route_matcher, routing, telemetry
from waypost.mesh import telemetry as telemetry_api
from .ztunnel import PLAIN_ORIGINATE

CONNECT_TERMINATE = "connect_terminate"
REQUEST_HEADERS_TIMEOUT = "10s"
MAIN_INTERNAL = "main_internal"
CONNECT_ORIGINATE = "connect_originate"


def served_services(snapshot: MeshSnapshot, waypoint: Waypoint) -> list[Service]:
    return list(snapshot.services_of_waypoint.get(waypoint.ref, ()))


def served_workloads(snapshot: MeshSnapshot, waypoint: Waypoint) -> list[Workload]:
    return [w for w in snapshot.workloads if w.waypoint == waypoint.ref and w.kind == "Pod"]


def endpoint_cluster(name: str, endpoints: tuple[Endpoint, ...], http: str | None, snapshot: MeshSnapshot | None = None) -> dict[str, Any]:
    """A service-port cluster whose endpoints are reached over HBONE (or plaintext for non-mesh endpoints)."""
    kind = c.resolution(endpoints)
    if kind != "STATIC":
        # A DNS ServiceEntry: Envoy resolves the names and connects itself, in plaintext as to any
        # endpoint outside the mesh (the internal upstream socket passes such connections through).
        lb = [c.direct_endpoint(e.address, e.port, _labels(snapshot, e)) for e in endpoints]
    else:
        lb = [
            c.tunnel_endpoint(CONNECT_ORIGINATE, f"{e.address}:{e.port}", f"{e.address}:{c.HBONE_PORT}", _labels(snapshot, e))
            if e.hbone
            else c.tunnel_endpoint(PLAIN_ORIGINATE, f"{e.address}:{e.port}", f"{e.address}:{e.port}", _labels(snapshot, e))
            for e in endpoints
        ]
    cluster: dict[str, Any] = {
        "name": name,
        "type": kind,
        "connect_timeout": "5s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb}] if lb else []},
        "transport_socket": c.internal_upstream(),
    }
    if kind != "STATIC":
        cluster["dns_lookup_family"] = "V4_ONLY"  # the local mesh is IPv4 loopback
    if http == "h2":
        cluster["typed_extension_protocol_options"] = c.http2_options()
    elif http == "auto":
        cluster["typed_extension_protocol_options"] = c.downstream_protocol_options()
    return cluster


T_DFP_FILTER = "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig"
T_DFP_CLUSTER = "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig"


def _dns_cache(service: Service) -> dict[str, Any]:
    # The filter and the cluster must name the same cache (Envoy shares caches by name), as Istio's
    # BuildDNSCacheName does per host.
    return {"name": f"dynamic_forward_proxy_cache_{service.fqdn}", "dns_lookup_family": "V4_ONLY"}


def dfp_filter(service: Service) -> dict[str, Any]:
    """A DYNAMIC_DNS ServiceEntry's chain resolves each request's host (Istio's BuildWaypointInboundDFPFilter)."""
    return {"name": "envoy.filters.http.dynamic_forward_proxy", "typed_config": {"@type": T_DFP_FILTER, "dns_cache_config": _dns_cache(service)}}


def dfp_cluster(name: str, service: Service) -> dict[str, Any]:
    """Connects to the host the request names, resolved on demand (Istio's buildDFPCluster); plain TCP."""
    return {
        "name": name,
        "connect_timeout": "5s",
        "lb_policy": "CLUSTER_PROVIDED",
        "cluster_type": {"name": "envoy.clusters.dynamic_forward_proxy", "typed_config": {"@type": T_DFP_CLUSTER, "dns_cache_config": _dns_cache(service)}},
    }


def _labels(snapshot: MeshSnapshot | None, endpoint: Endpoint) -> dict[str, str] | None:
    return telemetry.endpoint_metadata(snapshot, endpoint) if snapshot is not None else None


# Parts of every waypoint HCM, shared by all of them (configs are never changed in place).
_COMMON_HTTP_OPTIONS = {"idle_timeout": "3600s", "max_headers_count": 100}
_CORS_FILTER = {"name": routing.CORS_FILTER, "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}
_ROUTER_FILTER = {"name": "envoy.filters.http.router", "typed_config": {"@type": c.T_ROUTER}}


def _hcm(
    stat_prefix: str, route: dict[str, Any], authz: list[dict[str, Any]], access_log: list[dict[str, Any]] | None = None,
    late: list[dict[str, Any]] | None = None, grpc: bool = False, fault: bool = False, dfp: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An HCM with the authn/authz filters first, then CORS, then `late` (STATS/UNSPECIFIED extensions).

    gRPC chains also count messages (telemetry's filters); other chains do not pay for that."""
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": c.T_HCM,
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",
            **route,
            # Authorize the path that is forwarded: RFC 3986 normalization, merged slashes and decoded
            # %2F/%5C, so `//admin`, `/a/../admin` or `/admin%2F..` cannot slip past a rule on /admin.
            "normalize_path": True,
            "merge_slashes": True,
            "path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD",
            # Envoy's edge hardening (docs "Configuring Envoy as an edge proxy"): a client must send its
            # request headers within 10 s (slowloris), an idle connection goes after 1 h, headers are
            # capped at 60 KiB / 100 (431 beyond).
            "request_headers_timeout": REQUEST_HEADERS_TIMEOUT,
            "common_http_protocol_options": _COMMON_HTTP_OPTIONS,
            "max_request_headers_kb": 60,
            **({"access_log": access_log} if access_log else {}),
            "http_filters": authz + ([routing.fault_filter()] if fault else []) + [
                # CORS is configured per route (typed_per_filter_config); without a policy it does nothing.
                _CORS_FILTER,
                *(late or []),
                *(telemetry.http_filters() if grpc else []),
                *([dfp] if dfp else []),
                _ROUTER_FILTER,
            ],
        },
    }


def _filter_stack(snapshot: MeshSnapshot, phases: dict[str, list], custom: tuple[list, list], authn: list, rbac_filters: tuple[list, list]):
    """(HTTP filters before CORS, HTTP filters after it, TCP filters) in Istio's waypoint order (§5.1):
    CUSTOM, AUTHN extensions, jwt_authn, AUTHZ extensions, RBAC AUDIT/DENY/ALLOW, [CORS], STATS and
    UNSPECIFIED extensions (then stats and the router, added by the HCM)."""
    http = custom[0] + extensions.http_filters(phases, snapshot, "AUTHN") + authn + extensions.http_filters(phases, snapshot, "AUTHZ") + rbac_filters[0]
    late = extensions.http_filters(phases, snapshot, "STATS", "UNSPECIFIED")
    tcp = custom[1] + extensions.network_filters(phases, snapshot, "AUTHN", "AUTHZ") + rbac_filters[1] + extensions.network_filters(phases, snapshot, "STATS", "UNSPECIFIED")
    return http, late, tcp


def _chains(name: str, match: dict[str, Any], protocol: str, http_filter: dict[str, Any], tcp_filters: list[dict[str, Any]]):
    """Filter chains for one destination: HTTP, TCP, or both with HTTP sniffed (Istio's protocol detection)."""
    if protocol in ("HTTP", "HTTP2", "GRPC", "GRPC-Web"):
        return [{"name": name, "filter_chain_match": match, "filters": [http_filter]}]
    if protocol == "UNKNOWN":
        return [
            {"name": f"{name}|http", "filter_chain_match": {**match, "application_protocols": ["http/1.1", "h2c"]}, "filters": [http_filter]},
            {"name": f"{name}|tcp", "filter_chain_match": match, "filters": tcp_filters},
        ]
    return [{"name": name, "filter_chain_match": match, "filters": tcp_filters}]


def _l4_chains(snapshot: MeshSnapshot, service: Service, port: int, match: dict[str, Any], l4: L4Routes, add_cluster, authz_filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """TCPRoute/TLSRoute: weighted tcp_proxy per route; TLSRoutes select by SNI (no SNI match: refused)."""
    chains = []
    claimed: set[str] = set()  # an SNI (or "" = any) belongs to the oldest route naming it
    for index, entry in enumerate(l4.entries):
        names = [h for h in entry.hostnames if h not in claimed] if entry.hostnames else []
        if (entry.hostnames and not names) or (not entry.hostnames and "" in claimed):
            continue
        claimed.update(names or [""])
        weighted = []
        for b in entry.backends:
            if b.weight == 0:
                continue
            kind = f"tcp/{b.subset}" if b.subset else "tcp"
            name = f"outbound|{b.port}|{kind}|{b.service}" if b.exists else f"missing|{b.port}|{kind}|{b.service}"
            if b.exists:
                cluster = _backend_cluster(snapshot, service, name, b.service, b.port, b.subset, None)
                if cluster is not None:  # None: an undefined subset, whose share is refused
                    add_cluster(cluster)
            weighted.append({"name": name, "weight": b.weight})
        stat = f"{l4.kind.lower()}_{service.namespace}_{service.name}_{port}"
        proxy = (
            {"name": "envoy.filters.network.tcp_proxy", "typed_config": {"@type": c.T_TCP_PROXY, "stat_prefix": stat, "weighted_clusters": {"clusters": weighted}}}
            if weighted
            else c.tcp_proxy(stat, "BlackHoleCluster")
        )
        chain_match = dict(match)
        if names:
            chain_match["server_names"] = names
        chains.append({"name": f"{service.fqdn}:{port}|{l4.kind}|{index}", "filter_chain_match": chain_match, "filters": authz_filters + [proxy]})
    return chains


def _protocol(snapshot: MeshSnapshot, service: Service, port) -> str:
    """Istio's request_protocol: grpc for gRPC ports and ports a GRPCRoute routes, else http."""
    if port.protocol == "GRPC" or snapshot.routed_by_grpc(service.key, port.port):
        return "grpc"
    return "http"


def _waypoint_source_headers(waypoint: Waypoint) -> list[dict[str, Any]]:
    labels = {
        "workload": waypoint.name, "workload_namespace": waypoint.namespace, "app": waypoint.name, "version": "unknown",
        "canonical_service": waypoint.name, "canonical_revision": "latest",
    }
    return [{"header": {"key": telemetry.source_header(k), "value": v}} for k, v in labels.items()]


def _not_ports(ports: set[int]) -> dict[str, Any]:
    rules = [{"destination_port_range": {"start": p, "end": p + 1}} for p in sorted(ports)]
    return {"not_match": rules[0] if len(rules) == 1 else {"or_match": {"rules": rules}}}


@dataclass(frozen=True)
class Section:
    """One served service's part of a waypoint's config (or the part for its served workloads)."""

    clusters: tuple[dict[str, Any], ...]  # in the order they were first added
    routes: tuple[dict[str, Any], ...]
    chains: tuple[dict[str, Any], ...]
    domains: tuple[str, ...]
    sniff_ports: frozenset[int]  # ports whose protocol is sniffed (http_inspector)
    tls_ports: frozenset[int]  # ports with TLSRoutes (tls_inspector reads the SNI)


@dataclass(frozen=True)
class Memo:
    """What one translation of a waypoint leaves for the next (`translate_cached`): each section's result
    with the snapshot reads it depended on, and the assembled listeners (reused when their parts are the
    same objects, so that an unchanged listener stays the same object and xDS need not encode it again)."""

    sections: Mapping[str, tuple[tuple, tuple, Section]] = field(default_factory=dict)  # key -> (args, reads, section)
    assembled: Mapping[str, tuple[tuple, dict[str, Any]]] = field(default_factory=dict)  # listener -> (parts, listener)
    reads: ReadIndex | None = None  # the sections' reads, inverted (incremental mode only)


class _Builder:
    """Collects one section's resources, in the order the translation adds them."""

    def __init__(self) -> None:
        self.clusters: dict[str, dict[str, Any]] = {}
        self.routes: list[dict[str, Any]] = []
        self.chains: list[dict[str, Any]] = []
        self.domains: list[str] = []
        self.sniff_ports: set[int] = set()
        self.tls_ports: set[int] = set()

    def add_cluster(self, cluster: dict[str, Any]) -> str:
        self.clusters.setdefault(cluster["name"], cluster)
        return cluster["name"]

    def add_authz_clusters(self, snapshot: MeshSnapshot, chain_policies: list) -> None:
        """The clusters of the external authorizers the chain's CUSTOM policies call."""
        for provider in extauthz.providers_used(chain_policies, snapshot):
            target = snapshot.service(provider.service) if provider.service else None
            assert target is not None  # a usable provider has a resolved service
            name, h2 = extauthz.cluster(provider, snapshot)
            self.add_cluster(endpoint_cluster(name, target.endpoints_for(provider.port), "h2" if h2 else "auto", snapshot))

    def section(self) -> Section:
        return Section(tuple(self.clusters.values()), tuple(self.routes), tuple(self.chains), tuple(self.domains),
                       frozenset(self.sniff_ports), frozenset(self.tls_ports))


HTTP_PORTS = ("HTTP", "HTTP2", "GRPC", "GRPC-Web", "UNKNOWN")  # ports with an HTTP chain, hence a route config


def _service_routes_section(snapshot: MeshSnapshot, service: Service, trees: bool) -> Section:
    """The route configs of one served service's HTTP ports and the clusters of the backends they name.

    A section of its own, apart from the service's chains (`_service_section`): a route change then
    translates only this, not the chains with their policies and telemetry. With `trees`, a long route
    list becomes the equivalent match tree (route_matcher)."""
    out = _Builder()
    for sp in service.ports:
        if sp.protocol not in HTTP_PORTS:
            continue
        route_config, backend_clusters = routing.route_configuration(snapshot, service, sp, f"{service.fqdn}:{sp.port}", _proxy_namespace(service))
        if trees:
            route_config = {**route_config, "virtual_hosts": [route_matcher.with_matcher(vh) for vh in route_config["virtual_hosts"]]}
        out.routes.append(route_config)
        for backend, port, subset in backend_clusters:
            backend_service = snapshot.service_by_fqdn(backend)
            assert backend_service is not None  # routing only names existing backends here
            bp = backend_service.port(port)
            bhttp = "h2" if bp is not None and bp.protocol in ("HTTP2", "GRPC") else "auto"
            cluster = _backend_cluster(snapshot, service, f"outbound|{port}|{subset}|{backend}", backend, port, subset, bhttp)
            if cluster is not None:  # None: a subset no DestinationRule defines, whose share gets 503 (as in Istio)
                out.add_cluster(cluster)
    return out.section()


def _proxy_namespace(service: Service) -> str:
    """The namespace of the waypoint that serves `service`: the one whose DestinationRules it applies."""
    return service.waypoint.namespace if service.waypoint is not None else service.namespace


def _backend_cluster(snapshot: MeshSnapshot, routed: Service, name: str, backend: str, port: int, subset: str, http: str | None) -> dict[str, Any] | None:
    """The cluster `name` of a route backend (host `backend`, `port`, `subset`) in the waypoint of `routed`:
    its endpoints (a subset's only) with the DestinationRule the waypoint applies; a DYNAMIC_DNS entry's
    forward-proxy cluster; None for a subset no rule defines."""
    backend_service = snapshot.service_by_fqdn(backend)
    assert backend_service is not None  # routes name existing backends only
    if backend_service.dynamic_dns:
        return dfp_cluster(name, backend_service)  # resolved per request
    rule = snapshot.destination_rule(backend, _proxy_namespace(routed), backend_service.namespace)
    chosen = destination.subset_of(rule, subset) if subset else None
    if subset and chosen is None:
        return None
    endpoints = destination.subset_endpoints(backend_service.endpoints_for(port), lambda e: _workload_labels(snapshot, e), chosen)
    return destination.apply(endpoint_cluster(name, endpoints, http, snapshot), rule, port, subset)


def _workload_labels(snapshot: MeshSnapshot, endpoint: Endpoint) -> dict[str, str]:
    workload = snapshot.workload(endpoint.workload)
    return workload.label_map if workload is not None else {}


def _service_section(snapshot: MeshSnapshot, waypoint: Waypoint, service: Service, trees: bool) -> Section:
    """The chains and their clusters of one served service's ports (its routes: `_service_routes_section`)."""
    out = _Builder()
    add_cluster = out.add_cluster
    chains, domains, sniff_ports, tls_ports = out.chains, out.domains, out.sniff_ports, out.tls_ports
    jwks = dict(snapshot.jwks_documents)
    chain_policies = list(snapshot.waypoint_chain("authz", waypoint.ref, service.key))
    chain_authn = jwt.jwt_filters(list(snapshot.waypoint_chain("authn", waypoint.ref, service.key)), jwks)
    observed = telemetry_api.for_chain(snapshot, waypoint, service)
    custom_http, custom_tcp = extauthz.http_filters(chain_policies, snapshot), extauthz.network_filters(chain_policies, snapshot)
    rbac_http, rbac_tcp = rbac.http_filters(chain_policies, tree=trees), rbac.network_filters(chain_policies)
    out.add_authz_clusters(snapshot, chain_policies)
    for sp in service.ports:
        http_authz, http_late, tcp_authz = _filter_stack(
            snapshot, extensions.for_chain(snapshot, waypoint, service, sp.port), (custom_http, custom_tcp), chain_authn, (rbac_http, rbac_tcp)
        )
        domains.append(f"{service.vip}:{sp.port}")
        http = "h2" if sp.protocol in ("HTTP2", "GRPC") else "auto"
        endpoints = service.endpoints_for(sp.port)
        rule = snapshot.destination_rule(service.fqdn, waypoint.namespace, service.namespace)
        tcp_cluster = add_cluster(destination.apply(endpoint_cluster(f"inbound-vip|{sp.port}|tcp|{service.fqdn}", endpoints, None, snapshot), rule, sp.port))
        route_name = f"{service.fqdn}:{sp.port}"
        match = {"prefix_ranges": [c.host_prefix(service.vip)], "destination_port": sp.port}
        if service.dynamic_dns:
            add_cluster(dfp_cluster(f"inbound-vip|{sp.port}|http|{service.fqdn}", service))
        elif sp.protocol in HTTP_PORTS:
            add_cluster(destination.apply(endpoint_cluster(f"inbound-vip|{sp.port}|http|{service.fqdn}", endpoints, http, snapshot), rule, sp.port))
        l4 = snapshot.l4routes_for(service.key, sp.port)
        if l4 is not None:
            if l4.kind == "TLSRoute":
                tls_ports.add(sp.port)
            chains.extend(_l4_chains(snapshot, service, sp.port, match, l4, add_cluster, tcp_authz))
            continue
        if sp.protocol == "UNKNOWN":
            sniff_ports.add(sp.port)
        chains.extend(
            _chains(
                f"{service.fqdn}:{sp.port}",
                match,
                sp.protocol,
                _hcm(f"inbound_{service.namespace}_{service.name}_{sp.port}", {"rds": {"route_config_name": route_name, "config_source": c.ADS}}, http_authz, telemetry.http_access_log("waypoint", service, _protocol(snapshot, service, sp), observed, snapshot.mesh_config), http_late,
                    grpc=_protocol(snapshot, service, sp) == "grpc", fault=snapshot.port_has_fault(service.key, sp.port),
                    dfp=dfp_filter(service) if service.dynamic_dns else None),
                tcp_authz + [c.tcp_proxy(f"inbound_{service.namespace}_{service.name}_{sp.port}", tcp_cluster, telemetry.tcp_access_log("waypoint", service, chain=observed, mesh=snapshot.mesh_config))],
            )
        )
    return out.section()


def _workload_section(snapshot: MeshSnapshot, waypoint: Waypoint) -> Section:
    """The chains and clusters of the workloads (pod IPs) this waypoint serves."""
    out = _Builder()
    add_cluster = out.add_cluster
    chains, domains, sniff_ports = out.chains, out.domains, out.sniff_ports
    jwks = dict(snapshot.jwks_documents)
    workload_policies = list(snapshot.waypoint_chain("authz", waypoint.ref, None))
    workload_authn = jwt.jwt_filters(list(snapshot.waypoint_chain("authn", waypoint.ref, None)), jwks)
    workload_observed = telemetry_api.for_chain(snapshot, waypoint, None)
    workload_custom_http, workload_custom_tcp = extauthz.http_filters(workload_policies, snapshot), extauthz.network_filters(workload_policies, snapshot)
    workload_rbac_http, workload_rbac_tcp = rbac.http_filters(workload_policies), rbac.network_filters(workload_policies)
    if served_workloads(snapshot, waypoint):
        out.add_authz_clusters(snapshot, workload_policies)
    for workload in served_workloads(snapshot, waypoint):
        domains.append(f"{workload.address}:*")
        for wp in workload.ports:
            workload_http_authz, workload_http_late, workload_tcp_authz = _filter_stack(
                snapshot, extensions.for_chain(snapshot, waypoint, None, wp.port), (workload_custom_http, workload_custom_tcp),
                workload_authn, (workload_rbac_http, workload_rbac_tcp),
            )
            protocol = port_protocol(wp.name, None, "TCP")
            endpoint = (Endpoint(workload.key, workload.address, wp.port, hbone=True),)
            http_cluster = add_cluster(endpoint_cluster(f"inbound-pod|{wp.port}|http|{workload.address}", endpoint, "auto", snapshot))
            tcp_cluster = add_cluster(endpoint_cluster(f"inbound-pod|{wp.port}|tcp|{workload.address}", endpoint, None, snapshot))
            if protocol == "UNKNOWN":
                sniff_ports.add(wp.port)
            chains.extend(
                _chains(
                    f"{workload.address}:{wp.port}",
                    {"prefix_ranges": [c.host_prefix(workload.address)], "destination_port": wp.port},
                    protocol,
                    _hcm(f"inbound_pod_{workload.address}_{wp.port}", {"route_config": routing.default_route_config(f"{workload.address}:{wp.port}", http_cluster)}, workload_http_authz, telemetry.http_access_log("waypoint", None, "http", workload_observed, snapshot.mesh_config), workload_http_late),
                    workload_tcp_authz + [c.tcp_proxy(f"inbound_pod_{workload.address}_{wp.port}", tcp_cluster, telemetry.tcp_access_log("waypoint", None, chain=workload_observed, mesh=snapshot.mesh_config))],
                )
            )
    return out.section()


def translate(snapshot: MeshSnapshot, waypoint: Waypoint) -> dict[str, list[dict[str, Any]]]:
    return translate_cached(snapshot, waypoint, None, None)[0]


def _section(memo: Memo | None, diff: Diff | None, stale: set[str] | None, key: str, args: tuple, compute, snapshot: MeshSnapshot,
             sections: dict[str, tuple[tuple, tuple, Section]]) -> Section:
    """A section's earlier result when neither its arguments nor anything it read changed (`stale`: the
    sections some read of which changed, from the memo's `ReadIndex`); else computed again, reading through
    a `Recorder` when there is a `diff` (incremental mode) to remember its reads."""
    if stale is not None:  # incremental mode with an earlier memo (`stale` comes from its read index)
        previous = memo.sections.get(key)
        if previous is not None and key not in stale and previous[0] == args:
            sections[key] = previous
            return previous[2]
    if diff is None:
        return compute(snapshot)
    recorder = Recorder(snapshot)
    result = compute(recorder)
    before = memo.sections.get(key) if memo is not None else None
    if before is not None:
        result = _kept_parts(result, before[2])
    sections[key] = (args, tuple(recorder.deps), result)
    return result


def _kept_parts(section: Section, earlier: Section) -> Section:
    """`section` with each cluster, route and chain that equals the earlier section's of the same name
    replaced by that earlier object: what a change did not touch stays the same object, so the listener
    assembly, the config comparison and the xDS encoding see it unchanged by identity."""
    def kept(new: tuple[dict[str, Any], ...], old: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        return interned(new, {item.get("name"): item for item in old}, lambda item: item.get("name"))

    return Section(kept(section.clusters, earlier.clusters), kept(section.routes, earlier.routes), kept(section.chains, earlier.chains),
                   section.domains, section.sniff_ports, section.tls_ports)


def _same(memo: Memo | None, assembled: dict[str, tuple[tuple, dict[str, Any]]], name: str, parts: tuple, build) -> dict[str, Any]:
    """The listener built from `parts`; the earlier object itself when its parts are equal (identical parts
    compare in constant time)."""
    previous = memo.assembled.get(name) if memo is not None else None
    listener = previous[1] if previous is not None and previous[0] == parts else build()
    assembled[name] = (parts, listener)
    return listener


def translate_cached(
    snapshot: MeshSnapshot, waypoint: Waypoint, memo: Memo | None, diff: Diff | None
) -> tuple[dict[str, list[dict[str, Any]]], Memo]:
    """`translate`, reusing from `memo` (what the translation of an earlier snapshot left; `diff` compares
    that snapshot with this one) every section whose inputs did not change. Same result as `translate`."""
    sections: dict[str, tuple[tuple, tuple, Section]] = {}
    parts = []
    reads = memo.reads if memo is not None else None
    stale = reads.stale(diff) if reads is not None and diff is not None else None
    # RBAC filters and long route lists become equivalent match trees (rbac_matcher, route_matcher), except
    # where EnvoyFilter patches apply: they see the rules and route lists istiod would write.
    trees = not snapshot.envoy_filters_for(waypoint)
    for service in served_services(snapshot, waypoint):
        # Chains first: where two sections name one cluster, the first wins, as the chains' (ext_authz) did.
        parts.append(_section(memo, diff, stale, f"service/{service.key}", (waypoint, service, trees), lambda s, service=service: _service_section(s, waypoint, service, trees), snapshot, sections))
        parts.append(_section(memo, diff, stale, f"routes/{service.key}", (service, trees), lambda s, service=service: _service_routes_section(s, service, trees), snapshot, sections))
    parts.append(_section(memo, diff, stale, "workloads", (waypoint,), lambda s: _workload_section(s, waypoint), snapshot, sections))
    if diff is not None:
        before = memo.sections if memo is not None and reads is not None else {}
        reads = (reads or ReadIndex()).updated(
            {k: v[1] for k, v in before.items() if sections.get(k) is not v},
            {k: v[1] for k, v in sections.items() if before.get(k) is not v},
        )
    clusters: dict[str, dict[str, Any]] = {}
    routes: list[dict[str, Any]] = []
    chains: list[dict[str, Any]] = []
    domains: list[str] = []
    sniff_ports: set[int] = set()
    tls_ports: set[int] = set()
    for part in parts:
        for cluster in part.clusters:
            clusters.setdefault(cluster["name"], cluster)
        routes.extend(part.routes)
        chains.extend(part.chains)
        domains.extend(part.domains)
        sniff_ports |= part.sniff_ports
        tls_ports |= part.tls_ports

    def add_cluster(cluster: dict[str, Any]) -> str:
        clusters.setdefault(cluster["name"], cluster)
        return cluster["name"]

    assembled: dict[str, tuple[tuple, dict[str, Any]]] = {}
    listener_filters = [{"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": c.T_ORIGINAL_DST}}]
    # Inspectors wait for the client's first bytes, which would stall server-first protocols on other
    # ports: each runs only on the ports that need it.
    if sniff_ports:
        listener_filters.append(
            {"name": "envoy.filters.listener.http_inspector", "typed_config": {"@type": c.T_HTTP_INSPECTOR}, "filter_disabled": _not_ports(sniff_ports)}
        )
    if tls_ports:
        listener_filters.append(
            {"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": c.T_TLS_INSPECTOR}, "filter_disabled": _not_ports(tls_ports)}
        )
    sorted_domains = tuple(sorted(domains))
    sorted_chains = tuple(sorted(chains, key=lambda ch: ch["name"]))
    listeners = [
        _same(memo, assembled, CONNECT_TERMINATE, (waypoint, sorted_domains), lambda: {
            "name": CONNECT_TERMINATE,
            "address": c.socket_address(waypoint.address, c.HBONE_PORT),
            "filter_chains": [
                {
                    "transport_socket": c.downstream_mtls(waypoint.identity),
                    "filters": c.connect_terminate_filters(CONNECT_TERMINATE, list(sorted_domains), MAIN_INTERNAL),
                }
            ],
        }),
        _same(memo, assembled, MAIN_INTERNAL, (sorted_chains, listener_filters), lambda: {
            "name": MAIN_INTERNAL,
            "internal_listener": {},
            "listener_filters": listener_filters,
            "filter_chains": list(sorted_chains),
            "default_filter_chain": c.deny_chain("main_internal_unmatched"),
        }),
        # The waypoint is the source of its own hop to the destination ztunnel (Istio §4.5).
        _same(memo, assembled, CONNECT_ORIGINATE, (waypoint,), lambda: c.originate_listener(
            CONNECT_ORIGINATE, CONNECT_ORIGINATE, tunnel=True, headers=_waypoint_source_headers(waypoint))),
        _same(memo, assembled, PLAIN_ORIGINATE, (), lambda: c.originate_listener(PLAIN_ORIGINATE, PLAIN_ORIGINATE, tunnel=False)),
    ]
    add_cluster(c.internal_cluster(MAIN_INTERNAL, MAIN_INTERNAL))
    add_cluster(c.originate_cluster(CONNECT_ORIGINATE, waypoint.identity))
    add_cluster(c.originate_cluster(PLAIN_ORIGINATE, None))
    result = {
        "listeners": sorted(listeners, key=lambda l: l["name"]),
        "clusters": [clusters[k] for k in sorted(clusters)],
        "routes": sorted(routes, key=lambda r: r["name"]),
        "secrets": [c.ROOT_CA_SECRET, waypoint.identity],
    }
    return result, Memo(sections, assembled, reads if diff is not None else None)
