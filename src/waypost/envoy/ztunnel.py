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

import base64
import functools
import hashlib
import ipaddress
from typing import Any

from waypost.mesh.model import Endpoint, MeshSnapshot, Service, Workload

from waypost.mesh import policies as authz

from . import common as c
from . import rbac, telemetry

OUTBOUND = "ztunnel_outbound"
DISPATCH = "ztunnel_dispatch"
DISPATCH_PLAIN = "ztunnel_dispatch_plain"
ORIGINATE = "originate"
SOURCE_SA_KEY = "io.waypost.source_sa"  # ns/sa of the client, set by its source chain
SOURCE_ADDRESS_KEY = "io.waypost.source_address"  # the client's ip:port, for the HBONE source header
TCP_PROXY_CLUSTER = "envoy.tcp_proxy.cluster"  # Envoy's per-connection cluster override for tcp_proxy
DISPATCH_PORT, DISPATCH_PLAIN_PORT = 15001, 15002  # on the ztunnel's own address (Istio's outbound port is 15001)
SOURCE_NS = "io.waypost.source"  # dynamic metadata the PROXY TLVs land in, at the dispatch listener
TLV_SA = 0xE0  # PROXY protocol v2 TLV types in the custom range (0xE0-0xEF): the client's ns/sa, then its labels
TLV_LABELS = {label: 0xE1 + i for i, label in enumerate(telemetry.SOURCE_LABELS)}
T_PROXY_PROTOCOL_UPSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport"
T_PROXY_PROTOCOL = "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"
NO_SOURCE = "ztunnel_no_source"  # not a cluster: a connection without a recorded source is dropped
T_NET_SET_FILTER_STATE = "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config"
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


def _endpoint_ports(snapshot: MeshSnapshot) -> dict[str, set[int]]:
    """workload key → the target ports services send it (one pass, instead of one per workload)."""
    out: dict[str, set[int]] = {}
    for service in snapshot.services:
        for _, endpoints in service.endpoints:
            for e in endpoints:
                out.setdefault(e.workload, set()).add(e.port)
    return out


def _ztunnel_policies(snapshot: MeshSnapshot) -> dict[str, list[tuple[int, Any]]]:
    """namespace → (position, policy) of the policies ztunnels may enforce (no targetRefs)."""
    out: dict[str, list[tuple[int, Any]]] = {}
    for i, p in enumerate(snapshot.authorization_policies):
        if not p.spec.targets:
            out.setdefault(p.namespace, []).append((i, p))
    return out


def _service_cluster(service: Service, port: int) -> str:
    return f"hbone_svc|{port}|{service.fqdn}"


def _endpoints(listener_hbone: str, endpoints: tuple[Endpoint, ...]) -> list[dict[str, Any]]:
    if c.resolution(endpoints) != "STATIC":
        return [c.direct_endpoint(e.address, e.port) for e in endpoints]  # names Envoy resolves (DNS ServiceEntry)
    out = []
    for e in endpoints:
        if e.hbone:
            out.append(c.tunnel_endpoint(listener_hbone, f"{e.address}:{e.port}", f"{e.address}:{c.HBONE_PORT}"))
        else:
            out.append(c.tunnel_endpoint(PLAIN_ORIGINATE, f"{e.address}:{e.port}", f"{e.address}:{e.port}"))
    return out


def _state(key: str, value: str, shared: str | None = "ONCE", factory: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"object_key": key, "format_string": {"text_format_source": {"inline_string": value}}}
    if factory:
        item["factory_key"] = factory
    if shared:
        item["shared_with_upstream"] = shared
    return item


def _set_state(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": "envoy.filters.network.set_filter_state", "typed_config": {"@type": T_NET_SET_FILTER_STATE, "on_new_connection": items}}


@functools.lru_cache(maxsize=1 << 16)
def _tlv(kind: int, value: str) -> dict[str, Any]:
    """A PROXY TLV (a client's label): most values repeat across clients (namespace, version), so shared."""
    return {"type": kind, "value": base64.b64encode(value.encode()).decode()}


@functools.cache
def _bind_to(address: str) -> dict[str, Any]:
    return {"source_address": {"address": address, "port_value": 0}}


def _dispatch_cluster(name: str, address: str, port: int, tlvs: dict[int, str]) -> dict[str, Any]:
    """Stage 1 → dispatch over a real loopback connection: a PROXY v2 header carries the client's addresses
    and, as TLVs, its identity and labels. (With an internal listener here, connections the server closes
    first lost their last bytes: Envoy drops data when a tunnelled upstream ends into a user-space connection.)"""
    config: dict[str, Any] = {"version": "V2"}
    if tlvs:
        config["added_tlvs"] = [_tlv(t, v) for t, v in sorted(tlvs.items())]
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        # The dispatch listener only trusts PROXY headers from this source (its chains' direct_source_prefix_ranges).
        "upstream_bind_config": _bind_to(address),
        "load_assignment": {"cluster_name": name, "endpoints": c.single_endpoint(address, port)},
        "transport_socket": {
            "name": "envoy.transport_sockets.upstream_proxy_protocol",
            "typed_config": {
                "@type": T_PROXY_PROTOCOL_UPSTREAM,
                "config": config,
                "transport_socket": c.RAW_BUFFER,
            },
        },
    }


def _from_source(key: str) -> str:
    return f"%DYNAMIC_METADATA({SOURCE_NS}:{key})%"


@functools.cache
def _source_label_headers() -> list[dict[str, Any]]:
    return [{"header": {"key": telemetry.source_header(k), "value": _from_source(k)}} for k in telemetry.SOURCE_LABELS]


def _strict_mtls(pod: str) -> list[dict[str, Any]]:
    """Network RBAC that admits nothing: the plaintext path of a pod whose PeerAuthentication is STRICT."""
    return [{"name": "envoy.filters.network.rbac", "typed_config": {"@type": rbac.T_NET_RBAC, "stat_prefix": f"{pod}.strict_mtls.", "rules": {"action": "ALLOW"}}}]


@functools.cache
def _per_source_cluster(template: str) -> dict[str, Any]:
    """tcp_proxy's cluster for this connection: `template` with `{sa}` = the client identity the PROXY header named."""
    return _set_state([_state(TCP_PROXY_CLUSTER, template.format(sa=_from_source("sa")), shared=None)])


@functools.cache
def _originate_state() -> dict[str, Any]:
    """What the originate listener (one internal hop on) needs: the client's identity, address and labels."""
    return _set_state(
        [_state(SOURCE_SA_KEY, _from_source("sa"), factory="envoy.string"), _state(SOURCE_ADDRESS_KEY, "%DOWNSTREAM_REMOTE_ADDRESS%", factory="envoy.string")]
        + [_state(telemetry.source_key(k), _from_source(k), factory="envoy.string") for k in telemetry.SOURCE_LABELS]
    )


def _group_name(identity: str, labels: tuple[tuple[str, str], ...]) -> str:
    """A source group's part of chain and cluster names: ns/sa, workload, and a hash of all its labels."""
    return f"{sa_key(identity)}|{dict(labels)['workload']}|{hashlib.sha256(repr(labels).encode()).hexdigest()[:8]}"


def _source_ranges(members: list[Workload]) -> list[dict[str, Any]]:
    """A source group's addresses as filter-chain source ranges, in address order."""
    return [c.host_prefix(a) for a in sorted((w.address for w in members), key=_ip_key)]


DIRECT_BUDGET = 4096  # address prefixes the direct chains may list in all (source groups × waypoint VIP ranges)


def _vip_ranges(vips: list[str]) -> list[dict[str, Any]]:
    """The fewest CIDR ranges that cover exactly these addresses (VIPs are allocated in order, so the VIPs
    of one waypoint are often runs)."""
    nets = ipaddress.collapse_addresses(ipaddress.ip_network(f"{v}/32") for v in vips)
    return [{"address_prefix": str(n.network_address), "prefix_len": n.prefixlen} for n in nets]


def _direct_chains(snapshot: MeshSnapshot, groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[Workload]]) -> list[dict[str, Any]]:
    """Single-stage outbound for small meshes: one chain per source group × waypoint, matching that group's
    addresses and the VIPs of the Services bound to the waypoint, tunnels straight to the waypoint with the
    group's identity and labels, as its dispatch chain would after the PROXY hop (same cluster, same CONNECT
    authority, same headers), without the loopback hop to `ztunnel_dispatch` (~9 µs of ztunnel CPU per
    request, bench/RESULTS.md). Envoy picks the more specific destination range first, so these win over
    the group's catch-all stage-1 chain for exactly those VIPs. Their address lists grow with sources ×
    waypoint VIP ranges, so beyond DIRECT_BUDGET the mesh keeps the two-stage path alone."""
    vips: dict[Any, list[str]] = {}
    for service in snapshot.services:
        waypoint = snapshot.waypoint(service.waypoint)
        if waypoint is not None and service.ports:
            vips.setdefault(waypoint, []).append(service.vip)
    ranges = {w: _vip_ranges(v) for w, v in vips.items()}
    if not ranges or len(groups) * sum(len(r) for r in ranges.values()) > DIRECT_BUDGET:
        return []
    out = []
    for (ident, labels), members in sorted(groups.items()):
        headers = telemetry.source_headers(members[0])  # the group's members share these labels
        group = _group_name(ident, labels)
        sources = _source_ranges(members)
        for waypoint in sorted(ranges, key=lambda w: str(w.ref)):
            out.append(
                {
                    "name": f"direct|{group}|{waypoint.ref}",
                    "filter_chain_match": {"prefix_ranges": ranges[waypoint], "source_prefix_ranges": sources},
                    "filters": [c.tunnel_tcp_proxy(f"direct_{sa_key(ident)}", f"hbone_waypoint|{sa_key(ident)}|{waypoint.ref}", "%DOWNSTREAM_LOCAL_ADDRESS%", headers)],
                }
            )
    return out


def translate(snapshot: MeshSnapshot, node: str) -> dict[str, list[dict[str, Any]]]:
    """Listeners and clusters of one node's ztunnel, plus the SDS secret names it needs.

    Outbound is two-staged so that the config grows with sources + destinations, not their product:
    1. `ztunnel_outbound` (bound to every captured VIP:port and pod IP:port) has one chain per source
       group (client identity and workload labels, matched by source IP). It forwards the connection to
    2. `ztunnel_dispatch` (the ztunnel's own address, port 15001) with a PROXY v2 header: the client's
       addresses, and its identity and labels as TLVs. Dispatch has one chain per destination and picks the
       per-identity HBONE cluster from those TLVs (`envoy.tcp_proxy.cluster`).
    Clients outside the mesh (no source chain) take the listener's default chain to `ztunnel_dispatch_plain` (:15002),
    which forwards in plaintext (services) or applies the pod's L4 policy (pod IPs).
    """
    local = node_workloads(snapshot, node)
    address = snapshot.ztunnel_address(node)
    # Loopback has one capture point: a client connects to the VIP or pod IP itself, and only one process can
    # listen there. So the first node's ztunnel captures the outbound traffic of every enrolled workload, on
    # any node, and tunnels it with the client's identity; each node's ztunnel terminates HBONE for its own
    # pods (inbound: L4 policy, destination metrics), as a real node's ztunnel does.
    capture = node == snapshot.nodes[0]
    clients = [w for w in snapshot.workloads if w.captured] if capture else []
    identities = sorted({w.identity for w in clients})
    # Source chains group clients by identity *and* workload labels, so the CONNECT can carry the
    # source workload's labels for the waypoint's metrics (one group per Deployment in practice).
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[Workload]] = {}
    for w in clients:
        groups.setdefault((w.identity, tuple(sorted(telemetry.workload_labels(w).items()))), []).append(w)

    clusters: dict[str, dict[str, Any]] = {}
    listeners: list[dict[str, Any]] = []
    source_chains: list[dict[str, Any]] = []
    chains: list[dict[str, Any]] = []  # dispatch: mesh clients, per destination
    plain_chains: list[dict[str, Any]] = []  # dispatch_plain: clients outside the mesh, per destination
    captures: list[tuple[str, int]] = []
    waypoints_used: set = set()
    uses = {"pod": False, "balanced": False}

    def add_cluster(cluster: dict[str, Any]) -> str:
        clusters.setdefault(cluster["name"], cluster)
        return cluster["name"]

    for (ident, labels), members in sorted(groups.items()):
        group = _group_name(ident, labels)
        cluster = add_cluster(
            _dispatch_cluster(f"dispatch|{group}", address, DISPATCH_PORT, {TLV_SA: sa_key(ident), **{TLV_LABELS[k]: v for k, v in labels}})
        )
        source_chains.append(
            {
                "name": f"out|{group}",
                "filter_chain_match": {"source_prefix_ranges": _source_ranges(members)},
                "filters": [c.tcp_proxy(f"out_{sa_key(ident)}", cluster)],
            }
        )

    if capture:
        source_chains += _direct_chains(snapshot, groups)

    trusted = {"direct_source_prefix_ranges": [c.host_prefix(address)]}  # PROXY headers from stage 1 only

    def tunnel(dst: str, port: int, cluster_template: str, dial_pod: bool = False) -> None:
        chains.append(
            {
                "name": f"{dst}:{port}",
                "filter_chain_match": {"prefix_ranges": [c.host_prefix(dst)], "destination_port": port, **trusted},
                "filters": [_per_source_cluster(cluster_template)]
                + ([c.dial_pod_hbone()] if dial_pod else [])
                + [c.tunnel_tcp_proxy(f"dispatch_{dst}_{port}", NO_SOURCE, "%DOWNSTREAM_LOCAL_ADDRESS%", _source_label_headers())],
            }
        )

    # Service VIPs.
    for service in snapshot.services if capture else ():
        waypoint = snapshot.waypoint(service.waypoint)
        for sp in service.ports:
            captures.append((service.vip, sp.port))
            endpoints = service.endpoints_for(sp.port)
            if waypoint is not None:
                waypoints_used.add(waypoint)
                tunnel(service.vip, sp.port, f"hbone_waypoint|{{sa}}|{waypoint.ref}")
            else:
                # Balanced per connection over the endpoints; each is tunnelled by the originate listener
                # with the client's identity.
                uses["balanced"] = True
                name = _service_cluster(service, sp.port)
                kind = c.resolution(endpoints)
                balanced: dict[str, Any] = {
                    "name": name,
                    "type": kind,
                    "connect_timeout": "5s",
                    "load_assignment": {
                        "cluster_name": name,
                        "endpoints": [{"lb_endpoints": _endpoints(ORIGINATE, endpoints)}] if endpoints else [],
                    },
                    "transport_socket": c.internal_upstream(),
                }
                if kind != "STATIC":
                    balanced["dns_lookup_family"] = "V4_ONLY"
                add_cluster(balanced)
                chains.append(
                    {
                        "name": f"{service.vip}:{sp.port}",
                        "filter_chain_match": {"prefix_ranges": [c.host_prefix(service.vip)], "destination_port": sp.port, **trusted},
                        "filters": [_originate_state(), c.tcp_proxy(f"svc_{service.name}_{sp.port}", name)],
                    }
                )
            # Out-of-mesh clients reach the endpoints in plaintext, as through kube-proxy.
            plain = f"passthrough|{sp.port}|{service.fqdn}"
            add_cluster(
                {
                    "name": plain,
                    "type": c.resolution(endpoints),
                    **({"dns_lookup_family": "V4_ONLY"} if c.resolution(endpoints) != "STATIC" else {}),
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
            plain_chains.append(
                {
                    "name": f"passthrough|{service.vip}:{sp.port}",
                    "filter_chain_match": {"prefix_ranges": [c.host_prefix(service.vip)], "destination_port": sp.port, **trusted},
                    "filters": [c.tcp_proxy(f"passthrough_{service.name}", plain)],
                }
            )

    # Enrolled pods of this node: capture their pod IP ports; terminate HBONE for them.
    inbound_chains: list[dict[str, Any]] = []
    internal_chains: list[dict[str, Any]] = []
    hbone_pods = [w for w in local if w.captured and w.kind == "Pod"]
    captured_pods = [w for w in snapshot.workloads if w.captured and w.kind == "Pod"] if capture else hbone_pods
    inbound_logs: dict[tuple, list[dict[str, Any]]] = {}  # destination labels -> the inbound chains' stats loggers
    endpoint_ports = _endpoint_ports(snapshot)
    by_namespace = _ztunnel_policies(snapshot)
    for pod in captured_pods:
        is_local = pod.node == node
        waypoint = snapshot.waypoint(pod.waypoint)
        # Only this namespace's and the root namespace's policies can apply (authz.for_ztunnel's rule).
        candidates = [p for _, p in sorted(by_namespace.get(pod.namespace, []) + (by_namespace.get(snapshot.root_namespace, []) if pod.namespace != snapshot.root_namespace else []), key=lambda ip: ip[0])]
        pod_policies = authz.for_ztunnel(candidates, pod, snapshot.root_namespace)
        for port in sorted({p.port for p in pod.ports} | endpoint_ports.get(pod.key, set())):
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

            if capture:
                captures.append((pod.address, port))
                if waypoint is not None:
                    waypoints_used.add(waypoint)
                    tunnel(pod.address, port, f"hbone_waypoint|{{sa}}|{waypoint.ref}")
                else:
                    uses["pod"] = True
                    tunnel(pod.address, port, "hbone_pod|{sa}", dial_pod=True)
            # The destination ztunnel enforces selector and namespace policies (L4 only, §4.4), both for
            # HBONE (the peer identity from mTLS) and for plaintext from outside the mesh (no identity).
            authz_filters = rbac.ztunnel_filters(pod_policies, f"{pod.name}.")
            if capture:  # plaintext from outside the mesh arrives where the capture is
                plain_chains.append(
                    {
                        "name": f"inbound_plain|{pod.address}:{port}",
                        "filter_chain_match": {"prefix_ranges": [c.host_prefix(pod.address)], "destination_port": port, **trusted},
                        # PeerAuthentication STRICT: plaintext (no peer identity) is refused, as ztunnel's
                        # static strict policy does; mesh traffic arrives over HBONE (the inbound listener).
                        "filters": (_strict_mtls(pod.name) if authz.mtls_mode(snapshot.peer_authentications, pod, port, snapshot.root_namespace) == "STRICT" else [])
                        + authz_filters + [c.tcp_proxy(f"inbound_plain_{port}", app)],
                    }
                )
            if is_local:
                literals = telemetry.destination_literals(pod)
                literal_key = tuple(sorted(literals.items()))
                inbound_log = inbound_logs.get(literal_key)
                if inbound_log is None:  # the pods of one Deployment log with the same labels: one logger list
                    inbound_log = inbound_logs[literal_key] = telemetry.tcp_access_log("destination", None, literals, mesh=snapshot.mesh_config)
                internal_chains.append(
                    {
                        "name": f"inbound|{pod.address}:{port}",
                        "filter_chain_match": {"prefix_ranges": [c.host_prefix(pod.address)], "destination_port": port},
                        "filters": authz_filters + [c.tcp_proxy(f"inbound_{port}", app, inbound_log)],
                    }
                )

    # HBONE termination: one filter chain per pod identity (its certificate), covering all its pods.
    pods_by_identity: dict[str, list[str]] = {}
    for p in hbone_pods:
        pods_by_identity.setdefault(p.identity, []).append(p.address)
    for ident in sorted(pods_by_identity):
        addresses = sorted(pods_by_identity[ident], key=_ip_key)
        inbound_chains.append(
            {
                "name": f"hbone|{sa_key(ident)}",
                "filter_chain_match": {"prefix_ranges": [c.host_prefix(a) for a in addresses]},
                "transport_socket": c.downstream_mtls(ident),
                "filters": c.connect_terminate_filters(f"hbone_{sa_key(ident)}", [f"{a}:*" for a in addresses], INBOUND_INTERNAL),
            }
        )

    if captures:
        plain = add_cluster(_dispatch_cluster("dispatch|outside-mesh", address, DISPATCH_PLAIN_PORT, {}))
        listeners.append(
            c.listener_with_addresses(
                OUTBOUND, captures, filter_chains=source_chains,
                default_filter_chain={"name": "out|outside-mesh", "filters": [c.tcp_proxy("out_outside_mesh", plain)]},
            )
        )
        rules = [{"tlv_type": t, "on_tlv_present": {"metadata_namespace": SOURCE_NS, "key": k}} for k, t in [("sa", TLV_SA), *TLV_LABELS.items()]]
        for name, port, listed, tlv_rules in ((DISPATCH, DISPATCH_PORT, chains, rules), (DISPATCH_PLAIN, DISPATCH_PLAIN_PORT, plain_chains, [])):
            listeners.append(
                {
                    "name": name,
                    "address": c.socket_address(address, port),
                    "listener_filters": [{"name": "envoy.filters.listener.proxy_protocol", "typed_config": {"@type": T_PROXY_PROTOCOL, **({"rules": tlv_rules} if tlv_rules else {})}}],
                    "filter_chains": sorted(listed, key=lambda ch: ch["name"]),
                    "default_filter_chain": c.deny_chain(f"{name}_unmatched"),
                }
            )
    # Per client identity: its HBONE clusters (the client certificate is the identity), chosen per connection.
    for ident in identities:
        for waypoint in sorted(waypoints_used, key=lambda w: str(w.ref)):
            add_cluster(c.hbone_cluster(f"hbone_waypoint|{sa_key(ident)}|{waypoint.ref}", waypoint.address, ident, waypoint.identity))
        if uses["pod"]:
            add_cluster(c.hbone_pod_cluster(f"hbone_pod|{sa_key(ident)}", ident, None))
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

    # Balanced services: one originate listener tunnels to the chosen endpoint with the client's identity.
    if uses["balanced"]:
        listeners.append(
            {
                "name": ORIGINATE,
                "internal_listener": {},
                "filter_chains": [
                    {
                        "filters": [
                            # The dispatch chain shared the client's identity as filter state (one internal hop).
                            _set_state([_state(TCP_PROXY_CLUSTER, f"originate|%FILTER_STATE({SOURCE_SA_KEY}:PLAIN)%", shared=None)]),
                            {
                                "name": "envoy.filters.network.tcp_proxy",
                                "typed_config": {
                                    "@type": c.T_TCP_PROXY,
                                    "stat_prefix": ORIGINATE,
                                    "cluster": NO_SOURCE,
                                    "tunneling_config": {
                                        "hostname": "%DYNAMIC_METADATA(tunnel:destination)%",
                                        # The client's address, recorded by its source chain (this connection's own
                                        # peer is the dispatch listener).
                                        "headers_to_add": [{"header": {"key": c.SOURCE_HEADER, "value": f"%FILTER_STATE({SOURCE_ADDRESS_KEY}:PLAIN)%"}}]
                                        + telemetry.source_headers_from_state(),
                                    },
                                },
                            },
                        ]
                    }
                ],
            }
        )
        for ident in identities:
            add_cluster(c.originate_cluster(f"originate|{sa_key(ident)}", ident))
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
