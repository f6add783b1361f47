"""The node ztunnel as an Envoy: L4 only — capture, HBONE origination with the client's identity, HBONE termination.

Outbound (spec istio-ambient-semantics.md §2.6, ztunnel `src/proxy/outbound.rs`): one listener binds every
service VIP:port and every enrolled pod IP:port (the loopback stand-in for traffic capture). A connection
is identified by its source address (the client pod) and its destination:
- VIP of a Service with a waypoint → HBONE to the waypoint, CONNECT authority = VIP:port;
- VIP without waypoint → HBONE to one endpoint's ztunnel (authority = podIP:targetPort), balanced per connection;
- pod IP with a workload waypoint → HBONE to that waypoint; else → HBONE to the pod's ztunnel.
Sources that are not enrolled workloads are passed through in plaintext (out-of-mesh clients).

Inbound: `podIP:15008` terminates HBONE with the pod's certificate and delivers plaintext to the
application's inside address.
"""

from __future__ import annotations

from typing import Any

from waypost.mesh.model import Endpoint, MeshSnapshot, Service, Workload

from waypost.mesh import policies as authz

from . import common as c
from . import rbac, telemetry

OUTBOUND = "ztunnel_outbound"
INBOUND = "ztunnel_inbound"
INBOUND_INTERNAL = "ztunnel_inbound_internal"
PLAIN_ORIGINATE = "plain_originate"


def sa_key(identity: str) -> str:
    """A short, readable name part for a SPIFFE identity: ns/sa."""
    return identity.split("/ns/", 1)[1].replace("/sa/", "/")


def _ip_key(address: str) -> tuple[int, ...]:
    return tuple(int(x) for x in address.split("."))


def node_workloads(snapshot: MeshSnapshot, node: str) -> list[Workload]:
    return [w for w in snapshot.workloads if w.node == node]


def _workload_ports(snapshot: MeshSnapshot, workload: Workload) -> list[int]:
    ports = {p.port for p in workload.ports}
    for service in snapshot.services:
        for _, endpoints in service.endpoints:
            ports.update(e.port for e in endpoints if e.workload == workload.key)
    return sorted(ports)


def _service_cluster(src_identity: str, service: Service, port: int) -> str:
    return f"hbone_svc|{sa_key(src_identity)}|{port}|{service.fqdn}"


def _endpoints(listener_hbone: str, endpoints: tuple[Endpoint, ...]) -> list[dict[str, Any]]:
    out = []
    for e in endpoints:
        if e.hbone:
            out.append(c.tunnel_endpoint(listener_hbone, f"{e.address}:{e.port}", f"{e.address}:{c.HBONE_PORT}"))
        else:
            out.append(c.tunnel_endpoint(PLAIN_ORIGINATE, f"{e.address}:{e.port}", f"{e.address}:{e.port}"))
    return out


def translate(snapshot: MeshSnapshot, node: str) -> dict[str, list[dict[str, Any]]]:
    """Listeners and clusters of one node's ztunnel, plus the SDS secret names it needs."""
    local = node_workloads(snapshot, node)
    clients = [w for w in local if w.captured]
    identities = sorted({w.identity for w in clients})
    # Source chains group clients by identity *and* workload labels, so the CONNECT can carry the
    # source workload's labels for the waypoint's metrics (one group per Deployment in practice).
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[str]] = {}
    for w in clients:
        groups.setdefault((w.identity, tuple(sorted(telemetry.workload_labels(w).items()))), []).append(w.address)
    group_keys = sorted(groups)

    clusters: dict[str, dict[str, Any]] = {}
    listeners: list[dict[str, Any]] = []
    chains: list[dict[str, Any]] = []
    captures: list[tuple[str, int]] = []

    def add_cluster(cluster: dict[str, Any]) -> str:
        clusters.setdefault(cluster["name"], cluster)
        return cluster["name"]

    def source_chains(dst: str, port: int, pick: Any) -> None:
        for ident, labels in group_keys:
            cluster, hostname = pick(ident)
            if cluster is None:
                continue
            headers = [{"header": {"key": telemetry.source_header(k), "value": v}} for k, v in labels]
            chains.append(
                {
                    "name": f"out|{dst}:{port}|{sa_key(ident)}|{dict(labels)['workload']}",
                    "filter_chain_match": {
                        "prefix_ranges": [c.host_prefix(dst)],
                        "destination_port": port,
                        "source_prefix_ranges": [c.host_prefix(a) for a in sorted(groups[(ident, labels)], key=_ip_key)],
                    },
                    "filters": (
                        [c.dial_pod_hbone()] if cluster.startswith("hbone_pod|") else []
                    )
                    # Balanced services tunnel from the originate listener: hand it the source labels.
                    + ([] if hostname else [telemetry.source_labels_state(dict(labels))])
                    + [
                        c.tunnel_tcp_proxy(f"out_{sa_key(ident)}", cluster, hostname, headers)
                        if hostname
                        else c.tcp_proxy(f"out_{sa_key(ident)}", cluster)
                    ],
                }
            )

    # Service VIPs.
    for service in snapshot.services:
        waypoint = snapshot.waypoint(service.waypoint)
        for sp in service.ports:
            captures.append((service.vip, sp.port))
            endpoints = service.endpoints_for(sp.port)

            def pick(ident: str, service=service, sp=sp, endpoints=endpoints, waypoint=waypoint):
                if waypoint is not None:
                    name = add_cluster(
                        c.hbone_cluster(f"hbone_waypoint|{sa_key(ident)}|{waypoint.ref}", waypoint.address, ident, waypoint.identity)
                    )
                    return name, "%DOWNSTREAM_LOCAL_ADDRESS%"
                name = _service_cluster(ident, service, sp.port)
                add_cluster(
                    {
                        "name": name,
                        "type": "STATIC",
                        "connect_timeout": "5s",
                        "load_assignment": {
                            "cluster_name": name,
                            "endpoints": [{"lb_endpoints": _endpoints(f"originate|{sa_key(ident)}", endpoints)}] if endpoints else [],
                        },
                        "transport_socket": c.internal_upstream(),
                    }
                )
                return name, None  # the originate listener tunnels, per endpoint

            source_chains(service.vip, sp.port, pick)
            # Out-of-mesh clients reach the endpoints in plaintext, as through kube-proxy.
            plain = f"passthrough|{sp.port}|{service.fqdn}"
            add_cluster(
                {
                    "name": plain,
                    "type": "STATIC",
                    "connect_timeout": "5s",
                    "load_assignment": {
                        "cluster_name": plain,
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": c.socket_address(e.address, e.port)}} for e in endpoints]}
                        ]
                        if endpoints
                        else [],
                    },
                }
            )
            chains.append(
                {
                    "name": f"passthrough|{service.vip}:{sp.port}",
                    "filter_chain_match": {"prefix_ranges": [c.host_prefix(service.vip)], "destination_port": sp.port},
                    "filters": [c.tcp_proxy(f"passthrough_{service.name}", plain)],
                }
            )

    # Enrolled pods of this node: capture their pod IP ports; terminate HBONE for them.
    inbound_chains: list[dict[str, Any]] = []
    internal_chains: list[dict[str, Any]] = []
    hbone_pods = [w for w in local if w.captured and w.kind == "Pod"]
    for pod in hbone_pods:
        waypoint = snapshot.waypoint(pod.waypoint)
        pod_policies = authz.for_ztunnel(snapshot.authorization_policies, pod, snapshot.root_namespace)
        for port in _workload_ports(snapshot, pod):
            captures.append((pod.address, port))
            app = f"inbound|{port}||{pod.address}"
            add_cluster(
                {
                    "name": app,
                    "type": "STATIC",
                    "connect_timeout": "5s",
                    "load_assignment": {
                        "cluster_name": app,
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": c.socket_address(pod.app_address, port)}}]}],
                    },
                }
            )

            def pick(ident: str, pod=pod, waypoint=waypoint):
                if waypoint is not None:
                    name = add_cluster(
                        c.hbone_cluster(f"hbone_waypoint|{sa_key(ident)}|{waypoint.ref}", waypoint.address, ident, waypoint.identity)
                    )
                else:
                    name = add_cluster(c.hbone_pod_cluster(f"hbone_pod|{sa_key(ident)}|{sa_key(pod.identity)}", ident, pod.identity))
                return name, "%DOWNSTREAM_LOCAL_ADDRESS%"

            source_chains(pod.address, port, pick)
            # The destination ztunnel enforces selector and namespace policies (L4 only, §4.4), both for
            # HBONE (the peer identity from mTLS) and for plaintext from outside the mesh (no identity).
            authz_filters = rbac.ztunnel_filters(pod_policies, f"{pod.name}.")
            inbound_log = telemetry.tcp_access_log("destination", None, telemetry.destination_literals(pod), mesh=snapshot.mesh_config)
            chains.append(
                {
                    "name": f"inbound_plain|{pod.address}:{port}",
                    "filter_chain_match": {"prefix_ranges": [c.host_prefix(pod.address)], "destination_port": port},
                    "filters": authz_filters + [c.tcp_proxy(f"inbound_plain_{port}", app)],
                }
            )
            internal_chains.append(
                {
                    "name": f"inbound|{pod.address}:{port}",
                    "filter_chain_match": {"prefix_ranges": [c.host_prefix(pod.address)], "destination_port": port},
                    "filters": authz_filters + [c.tcp_proxy(f"inbound_{port}", app, inbound_log)],
                }
            )

    # HBONE termination: one filter chain per pod identity (its certificate), covering all its pods.
    for ident in sorted({p.identity for p in hbone_pods}):
        addresses = sorted((p.address for p in hbone_pods if p.identity == ident), key=_ip_key)
        inbound_chains.append(
            {
                "name": f"hbone|{sa_key(ident)}",
                "filter_chain_match": {"prefix_ranges": [c.host_prefix(a) for a in addresses]},
                "transport_socket": c.downstream_mtls(ident),
                "filters": c.connect_terminate_filters(f"hbone_{sa_key(ident)}", [f"{a}:*" for a in addresses], INBOUND_INTERNAL),
            }
        )

    if captures:
        listeners.append(c.listener_with_addresses(OUTBOUND, captures, filter_chains=sorted(chains, key=lambda ch: ch["name"])))
    if hbone_pods:
        listeners.append(
            c.listener_with_addresses(
                INBOUND, [(p.address, c.HBONE_PORT) for p in hbone_pods], filter_chains=inbound_chains
            )
        )
        listeners.append(
            {
                "name": INBOUND_INTERNAL,
                "internal_listener": {},
                "listener_filters": [{"name": "envoy.filters.listener.original_dst", "typed_config": {"@type": c.T_ORIGINAL_DST}}],
                "filter_chains": sorted(internal_chains, key=lambda ch: ch["name"]),
                "default_filter_chain": c.deny_chain("inbound_unmatched"),
            }
        )
        add_cluster(c.internal_cluster(INBOUND_INTERNAL, INBOUND_INTERNAL))

    # One HBONE originate listener (and ORIGINAL_DST cluster) per client identity, for balanced services.
    for ident in identities:
        name = f"originate|{sa_key(ident)}"
        if any(cl["name"].startswith(f"hbone_svc|{sa_key(ident)}|") for cl in clusters.values()):
            listeners.append(c.originate_listener(name, name, tunnel=True, headers=telemetry.source_headers_from_state()))
            add_cluster(c.originate_cluster(name, ident))
    if any(cl["name"].startswith("hbone_svc|") for cl in clusters.values()):
        listeners.append(c.originate_listener(PLAIN_ORIGINATE, PLAIN_ORIGINATE, tunnel=False))
        add_cluster(c.originate_cluster(PLAIN_ORIGINATE, None))

    secrets = sorted({w.identity for w in hbone_pods} | set(identities))
    return {
        "listeners": sorted(listeners, key=lambda l: l["name"]),
        "clusters": [clusters[k] for k in sorted(clusters)],
        "routes": [],
        "secrets": [c.ROOT_CA_SECRET, *secrets],
    }


def proxy_id(node: str) -> str:
    return f"ztunnel~{node}"
