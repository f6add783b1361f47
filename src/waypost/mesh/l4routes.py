"""TCPRoute and TLSRoute attachment to Service ports served by a waypoint.

- TCPRoute: the port's connections go to the weighted backends (an invalid backend's share of
  connections is refused).
- TLSRoute: the same, selected by the TLS SNI. waypost honours `hostnames` as SNI matches (exact or
  `*.` wildcard); Istio honours only a single SNI equal to the service hostname (spec §3.6). A TLSRoute
  without hostnames (v1alpha2) takes every connection, like a TCPRoute. Connections whose SNI matches
  no TLSRoute are refused once a TLSRoute is attached.
- Kinds on one port (GEP-1294): GRPCRoute > HTTPRoute > TLSRoute > TCPRoute; losers are `Conflicted`.
  Only the oldest TCPRoute of a port applies (a port has one stream; Istio uses the first as well).
"""

from __future__ import annotations

from collections.abc import Mapping
from waypost.api.l4routes import TCPRoute, TLSRoute

from .http import BackendResolver, WithHosts
from .model import Condition, L4RouteEntry, L4Routes, ResourceStatus, Service, WeightedBackend
from .routes import ACCEPTED, RESOLVED_REFS, parent_text, service_targets

L4_KINDS = ("TLSRoute", "TCPRoute")


def _ports(ref, service: Service) -> list[int]:
    ports = [p for p in service.ports if not p.is_http]
    if ref.port is not None:
        ports = [p for p in ports if p.port == ref.port]
    if ref.section_name is not None:
        ports = [p for p in ports if p.name == ref.section_name]
    return [p.port for p in ports]


def attach(
    routes: list[TCPRoute | TLSRoute], services: Mapping[str, Service] | WithHosts, http_ports: set[tuple[str, int]]
) -> tuple[tuple[L4Routes, ...], tuple[ResourceStatus, ...]]:
    lookup = WithHosts.of(services)
    resolver = BackendResolver(lookup)
    collected: dict[tuple[str, int, str], list[tuple[tuple, L4RouteEntry]]] = {}
    claims: dict[tuple[str, str, str, str], list[tuple[str, int]]] = {}
    statuses: list[ResourceStatus] = []
    for route in routes:
        problems: list[Condition] = []
        backends = []
        for ref in route.spec.rules[0].backend_refs:
            exists, problem = resolver.resolve(route.namespace, ref)
            if problem:
                problems.append(problem)
            backends.append(WeightedBackend(resolver.fqdn(route.namespace, ref), ref.port or 0, ref.weight, exists))
        resolved = problems[0] if problems else Condition(RESOLVED_REFS, "True", "ResolvedRefs", "All references resolved")
        hostnames = tuple(route.spec.hostnames) if route.KIND == "TLSRoute" else ()
        entry = L4RouteEntry(f"{route.namespace}/{route.name}", route.KIND, hostnames, tuple(backends))
        parents = []
        for ref in route.spec.parent_refs:
            text = parent_text(ref, route.namespace)
            ns = ref.namespace or route.namespace
            if not ((ref.kind == "Service" and ref.group in ("", "core")) or (ref.kind == "ServiceEntry" and ref.group == "networking.istio.io")):
                if ref.kind != "Gateway":
                    parents.append((text, (Condition(ACCEPTED, "False", "NoMatchingParent", f"unsupported parent kind {ref.kind}"),)))
                continue
            targets, missing = service_targets(lookup, ref, ns, _ports, "TCP", "service")
            if missing is not None:
                parents.append((text, (missing,)))
                continue
            parents.append((text, (Condition(ACCEPTED, "True", "Accepted", "Route was valid"), resolved)))
            key = (route.metadata.creation_timestamp or "", route.namespace, route.name)
            for service, ports in targets:
                for port in ports:
                    collected.setdefault((service.key, port, route.KIND), []).append((key, entry))
            claims[(route.KIND, route.namespace, route.name, text)] = [(service.key, p) for service, ports in targets for p in ports]
        statuses.append(ResourceStatus(route.KIND, route.namespace, route.name, (), tuple(parents)))

    winners: dict[tuple[str, int], str] = {}
    for service_key, port, kind in collected:
        if (service_key, port) in http_ports:
            winners[(service_key, port)] = "HTTPRoute"
            continue
        current = winners.get((service_key, port))
        if current is None or L4_KINDS.index(kind) < L4_KINDS.index(current):
            winners[(service_key, port)] = kind
    out_statuses = []
    for st in statuses:
        parents = []
        for text, conditions in st.parents:
            ports = claims.get((st.kind, st.namespace, st.name, text), [])
            if ports and all(winners.get(p) != st.kind for p in ports):
                conditions = (
                    Condition(ACCEPTED, "False", "Conflicted", f"a {winners[ports[0]]} is attached to the same port and takes precedence"),
                    *conditions[1:],
                )
            parents.append((text, conditions))
        out_statuses.append(ResourceStatus(st.kind, st.namespace, st.name, st.conditions, tuple(parents)))

    result = []
    for (service_key, port, kind), items in sorted(collected.items()):
        if winners[(service_key, port)] != kind:
            continue
        entries = [e for _, e in sorted(items, key=lambda kv: kv[0])]
        if kind == "TCPRoute":
            entries = entries[:1]
        result.append(L4Routes(service_key, port, kind, tuple(entries)))
    return tuple(result), tuple(out_statuses)
