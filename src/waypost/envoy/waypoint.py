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

from typing import Any

from waypost.mesh.model import Endpoint, L4Routes, MeshSnapshot, Service, Waypoint, Workload
from waypost.mesh.registry import port_protocol

from waypost.mesh import policies as authz

from . import common as c
from . import extauthz, extensions, jwt, rbac, routing, telemetry
from waypost.mesh import telemetry as telemetry_api
from .ztunnel import PLAIN_ORIGINATE

CONNECT_TERMINATE = "connect_terminate"
MAIN_INTERNAL = "main_internal"
CONNECT_ORIGINATE = "connect_originate"


def served_services(snapshot: MeshSnapshot, waypoint: Waypoint) -> list[Service]:
    return [s for s in snapshot.services if s.waypoint == waypoint.ref]


def served_workloads(snapshot: MeshSnapshot, waypoint: Waypoint) -> list[Workload]:
    return [w for w in snapshot.workloads if w.waypoint == waypoint.ref and w.kind == "Pod"]


def endpoint_cluster(name: str, endpoints: tuple[Endpoint, ...], http: str | None, snapshot: MeshSnapshot | None = None) -> dict[str, Any]:
    """A service-port cluster whose endpoints are reached over HBONE (or plaintext for non-mesh endpoints)."""
    lb = [
        c.tunnel_endpoint(CONNECT_ORIGINATE, f"{e.address}:{e.port}", f"{e.address}:{c.HBONE_PORT}", _labels(snapshot, e))
        if e.hbone
        else c.tunnel_endpoint(PLAIN_ORIGINATE, f"{e.address}:{e.port}", f"{e.address}:{e.port}", _labels(snapshot, e))
        for e in endpoints
    ]
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb}] if lb else []},
        "transport_socket": c.internal_upstream(),
    }
    if http == "h2":
        cluster["typed_extension_protocol_options"] = c.http2_options()
    elif http == "auto":
        cluster["typed_extension_protocol_options"] = c.downstream_protocol_options()
    return cluster


def _labels(snapshot: MeshSnapshot | None, endpoint: Endpoint) -> dict[str, str] | None:
    return telemetry.endpoint_metadata(snapshot, endpoint) if snapshot is not None else None


def _hcm(
    stat_prefix: str, route: dict[str, Any], authz: list[dict[str, Any]], access_log: list[dict[str, Any]] | None = None,
    late: list[dict[str, Any]] | None = None, grpc: bool = False,
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
            **({"access_log": access_log} if access_log else {}),
            "http_filters": authz + [
                # CORS is configured per route (typed_per_filter_config); without a policy it does nothing.
                {"name": routing.CORS_FILTER, "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
                *(late or []),
                *(telemetry.http_filters() if grpc else []),
                {"name": "envoy.filters.http.router", "typed_config": {"@type": c.T_ROUTER}},
            ],
        },
    }


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
            name = f"outbound|{b.port}|tcp|{b.service}" if b.exists else f"missing|{b.port}|tcp|{b.service}"
            if b.exists:
                backend = snapshot.service_by_fqdn(b.service)
                assert backend is not None
                add_cluster(endpoint_cluster(name, backend.endpoints_for(b.port), None, snapshot))
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
    routes = snapshot.routes_for(service.key, port.port)
    if port.protocol == "GRPC" or (routes is not None and any(e.kind == "GRPCRoute" for e in routes.entries)):
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


def translate(snapshot: MeshSnapshot, waypoint: Waypoint) -> dict[str, list[dict[str, Any]]]:
    clusters: dict[str, dict[str, Any]] = {}
    routes: list[dict[str, Any]] = []
    chains: list[dict[str, Any]] = []
    domains: list[str] = []
    sniff_ports: set[int] = set()  # ports whose protocol is sniffed (http_inspector)
    tls_ports: set[int] = set()  # ports with TLSRoutes (tls_inspector reads the SNI)

    def add_cluster(cluster: dict[str, Any]) -> str:
        clusters.setdefault(cluster["name"], cluster)
        return cluster["name"]

    def add_authz_clusters(chain_policies: list) -> None:
        """The clusters of the external authorizers the chain's CUSTOM policies call."""
        for provider in extauthz.providers_used(chain_policies, snapshot):
            target = snapshot.service(provider.service) if provider.service else None
            assert target is not None  # a usable provider has a resolved service
            name, h2 = extauthz.cluster(provider, snapshot)
            add_cluster(endpoint_cluster(name, target.endpoints_for(provider.port), "h2" if h2 else "auto", snapshot))

    policies = snapshot.authorization_policies
    for service in served_services(snapshot, waypoint):
        chain_policies = authz.for_waypoint_chain(policies, waypoint, service, snapshot.root_namespace)
        chain_authn = jwt.jwt_filters(authz.for_waypoint_chain(snapshot.request_authentications, waypoint, service, snapshot.root_namespace), dict(snapshot.jwks_documents))
        observed = telemetry_api.for_chain(snapshot, waypoint, service)
        custom_http, custom_tcp = extauthz.http_filters(chain_policies, snapshot), extauthz.network_filters(chain_policies, snapshot)
        rbac_http, rbac_tcp = rbac.http_filters(chain_policies), rbac.network_filters(chain_policies)
        add_authz_clusters(chain_policies)
        for sp in service.ports:
            # Istio's waypoint filter order (§5.1): CUSTOM, AUTHN extensions, jwt_authn, AUTHZ extensions,
            # RBAC AUDIT/DENY/ALLOW, CORS, STATS and UNSPECIFIED extensions, stats, router.
            phases = extensions.for_chain(snapshot, waypoint, service, sp.port)
            http_authz = (
                custom_http + extensions.http_filters(phases, snapshot, "AUTHN") + chain_authn
                + extensions.http_filters(phases, snapshot, "AUTHZ") + rbac_http
            )
            http_late = extensions.http_filters(phases, snapshot, "STATS", "UNSPECIFIED")
            tcp_authz = (
                custom_tcp + extensions.network_filters(phases, snapshot, "AUTHN", "AUTHZ") + rbac_tcp
                + extensions.network_filters(phases, snapshot, "STATS", "UNSPECIFIED")
            )
            domains.append(f"{service.vip}:{sp.port}")
            http = "h2" if sp.protocol in ("HTTP2", "GRPC") else "auto"
            endpoints = service.endpoints_for(sp.port)
            tcp_cluster = add_cluster(endpoint_cluster(f"inbound-vip|{sp.port}|tcp|{service.fqdn}", endpoints, None, snapshot))
            route_name = f"{service.fqdn}:{sp.port}"
            match = {"prefix_ranges": [c.host_prefix(service.vip)], "destination_port": sp.port}
            if sp.protocol in ("HTTP", "HTTP2", "GRPC", "GRPC-Web", "UNKNOWN"):
                add_cluster(endpoint_cluster(f"inbound-vip|{sp.port}|http|{service.fqdn}", endpoints, http, snapshot))
                route_config, backend_clusters = routing.route_configuration(snapshot, service, sp, route_name)
                routes.append(route_config)
                for backend, port in backend_clusters:
                    backend_service = snapshot.service_by_fqdn(backend)
                    assert backend_service is not None  # routing only names existing backends here
                    bp = backend_service.port(port)
                    bhttp = "h2" if bp is not None and bp.protocol in ("HTTP2", "GRPC") else "auto"
                    add_cluster(endpoint_cluster(f"outbound|{port}||{backend}", backend_service.endpoints_for(port), bhttp, snapshot))
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
                        grpc=_protocol(snapshot, service, sp) == "grpc"),
                    tcp_authz + [c.tcp_proxy(f"inbound_{service.namespace}_{service.name}_{sp.port}", tcp_cluster, telemetry.tcp_access_log("waypoint", service, chain=observed, mesh=snapshot.mesh_config))],
                )
            )

    workload_policies = authz.for_waypoint_chain(policies, waypoint, None, snapshot.root_namespace)
    workload_authn = jwt.jwt_filters(authz.for_waypoint_chain(snapshot.request_authentications, waypoint, None, snapshot.root_namespace), dict(snapshot.jwks_documents))
    workload_observed = telemetry_api.for_chain(snapshot, waypoint, None)
    workload_custom_http, workload_custom_tcp = extauthz.http_filters(workload_policies, snapshot), extauthz.network_filters(workload_policies, snapshot)
    workload_rbac_http, workload_rbac_tcp = rbac.http_filters(workload_policies), rbac.network_filters(workload_policies)
    if served_workloads(snapshot, waypoint):
        add_authz_clusters(workload_policies)
    for workload in served_workloads(snapshot, waypoint):
        domains.append(f"{workload.address}:*")
        for wp in workload.ports:
            phases = extensions.for_chain(snapshot, waypoint, None, wp.port)
            workload_http_authz = (
                workload_custom_http + extensions.http_filters(phases, snapshot, "AUTHN") + workload_authn
                + extensions.http_filters(phases, snapshot, "AUTHZ") + workload_rbac_http
            )
            workload_http_late = extensions.http_filters(phases, snapshot, "STATS", "UNSPECIFIED")
            workload_tcp_authz = (
                workload_custom_tcp + extensions.network_filters(phases, snapshot, "AUTHN", "AUTHZ") + workload_rbac_tcp
                + extensions.network_filters(phases, snapshot, "STATS", "UNSPECIFIED")
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
    listeners = [
        {
            "name": CONNECT_TERMINATE,
            "address": c.socket_address(waypoint.address, c.HBONE_PORT),
            "filter_chains": [
                {
                    "transport_socket": c.downstream_mtls(waypoint.identity),
                    "filters": c.connect_terminate_filters(CONNECT_TERMINATE, sorted(domains), MAIN_INTERNAL),
                }
            ],
        },
        {
            "name": MAIN_INTERNAL,
            "internal_listener": {},
            "listener_filters": listener_filters,
            "filter_chains": sorted(chains, key=lambda ch: ch["name"]),
            "default_filter_chain": c.deny_chain("main_internal_unmatched"),
        },
        # The waypoint is the source of its own hop to the destination ztunnel (Istio §4.5).
        c.originate_listener(CONNECT_ORIGINATE, CONNECT_ORIGINATE, tunnel=True, headers=_waypoint_source_headers(waypoint)),
        c.originate_listener(PLAIN_ORIGINATE, PLAIN_ORIGINATE, tunnel=False),
    ]
    add_cluster(c.internal_cluster(MAIN_INTERNAL, MAIN_INTERNAL))
    add_cluster(c.originate_cluster(CONNECT_ORIGINATE, waypoint.identity))
    add_cluster(c.originate_cluster(PLAIN_ORIGINATE, None))
    return {
        "listeners": sorted(listeners, key=lambda l: l["name"]),
        "clusters": [clusters[k] for k in sorted(clusters)],
        "routes": sorted(routes, key=lambda r: r["name"]),
        "secrets": [c.ROOT_CA_SECRET, waypoint.identity],
    }
