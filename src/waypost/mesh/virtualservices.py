"""VirtualServices in waypoints: which one routes a service port, its http routes as route entries, status.

Rules (Istio's, shared/spec/istio-ambient-semantics.md §3.7; the research notes cite the upstream code):
- a VirtualService applies to waypoints when its `gateways` are omitted or include `mesh`, it is in the
  service's or the waypoint's namespace, it is exported to the waypoint's namespace (`exportTo`: `*`
  by default, `.` for its own namespace, or names), and one of its `hosts` names the service: a short
  name `svc` is `svc.<vs namespace>.svc.cluster.local` (ResolveShortnameToFQDN); `*.suffix` matches by
  suffix (pilot/pkg/networking/core/listener_waypoint.go getVirtualServiceForWaypoint);
- several VirtualServices for one service: their http routes are concatenated, oldest first (Istio
  1.29.6 and later; earlier releases used only the oldest);
- http routes are tried in the order written (no precedence sorting as for HTTPRoute), one Envoy route
  per match block; routes after a catch-all are dropped; a match with `port` applies only to that
  service port; a match with `sourceLabels` is dropped, and one with `sourceNamespace` applies only when
  that is the waypoint's namespace (the waypoint is the "source" of its routes, as in Istio);
- **mixing** (waypost's documented rule, issue 10): where an HTTPRoute or GRPCRoute routes a service port,
  it wins; the VirtualService does not apply on that port and says so in its status (`Conflicted`), and
  `waypost analyze` reports it as an error (WPT0009).
"""

from __future__ import annotations

from collections.abc import Mapping

from waypost.api.virtualservice import VirtualService

from .model import Condition, HTTPRouteEntry, L4Routes, ResourceStatus, Service, ServiceRoutes, WeightedBackend
from .http import WithHosts
from .vsroutes import KIND, Resolver, exported_to, host_matches, http_entries, is_catch_all, l4_routes, problems, resolve_host


def _unresolved(backends, by_fqdn: Mapping[str, Service], rules, waypoint_namespace: str) -> list[str]:
    """Destinations that name no service, or a subset no DestinationRule defines (Istio's analyzers
    report both as IST0101; the route's share of requests gets 503)."""
    out = []
    for b in backends:
        target = by_fqdn.get(b.service)
        if target is None:
            out.append(f"host {b.service}")
        elif b.subset and rules is not None:
            rule = rules.lookup(b.service, waypoint_namespace, target.namespace)
            if rule is None or all(s.name != b.subset for s in rule.subsets):
                out.append(f"subset {b.subset} of host {b.service}")
    return out


def attach(
    virtual_services: list[VirtualService], services: Mapping[str, Service] | WithHosts, taken: Mapping[tuple[str, int], str],
    taken_l4: Mapping[tuple[str, int], str] | None = None, rules=None,
) -> tuple[tuple[ServiceRoutes, ...], tuple[L4Routes, ...], tuple[ResourceStatus, ...]]:
    """Route entries of the VirtualServices for each waypoint-served service port (HTTP and TCP/TLS), and
    their statuses. `taken` / `taken_l4`: (service key, port) → the Gateway API route that routes it
    (those win). `rules`: the DestinationRules (`destinations.DestinationRuleIndex`), to check subsets."""
    taken_l4 = taken_l4 or {}
    missing: dict[tuple, set[str]] = {}  # vs key -> destinations that resolve to nothing
    l4_out: list[L4Routes] = []
    lookup = WithHosts.of(services)
    by_fqdn = lookup.hosts
    resolver = Resolver(by_fqdn)
    ordered = sorted((vs for vs in virtual_services if vs.for_mesh), key=lambda v: (v.metadata.creation_timestamp or "", v.name, v.namespace))
    invalid = {vs.key: problems(vs) for vs in ordered}
    hosts = {vs.key: [resolve_host(h, vs.namespace) for h in vs.spec.hosts] for vs in ordered}
    applied: dict[tuple, list[str]] = {}  # vs key -> "host:port" it routes
    lost: dict[tuple, list[str]] = {}  # vs key -> why it does not route a service it names
    out: list[ServiceRoutes] = []
    for service in sorted(services.values(), key=lambda s: s.key):
        named = [vs for vs in ordered if not invalid[vs.key] and any(host_matches(h, service.fqdn) for h in hosts[vs.key])]
        if not named:
            continue
        if service.waypoint is None:
            for vs in named:
                lost.setdefault(vs.key, []).append(f"{service.fqdn} has no waypoint (in ambient mode only a waypoint applies a VirtualService)")
            continue
        wp_ns = service.waypoint.namespace
        usable = []
        for vs in named:
            if vs.namespace not in (service.namespace, wp_ns):
                lost.setdefault(vs.key, []).append(f"{service.fqdn}: a waypoint uses VirtualServices of the service's or its own namespace only")
            elif not exported_to(vs.spec.export_to, vs.namespace, wp_ns):
                lost.setdefault(vs.key, []).append(f"{service.fqdn}: not exported to the waypoint's namespace {wp_ns}")
            else:
                usable.append(vs)
        for sp in service.ports:
            if not usable:
                continue
            if not (sp.is_http or sp.protocol == "UNKNOWN"):
                l4 = l4_routes(usable, service, sp, resolver, wp_ns)
                if l4 is None:
                    continue
                route = taken_l4.get((service.key, sp.port))
                if route is not None:
                    for vs in usable:
                        lost.setdefault(vs.key, []).append(f"{service.fqdn}:{sp.port} is routed by {route}, which takes precedence over a VirtualService")
                    continue
                l4_out.append(l4)
                for e in l4.entries:
                    missing.setdefault((KIND, *e.route.split("/")), set()).update(_unresolved(e.backends, by_fqdn, rules, wp_ns))
                for route_name in sorted({e.route for e in l4.entries}):
                    applied.setdefault((KIND, *route_name.split("/")), []).append(f"{service.fqdn}:{sp.port}")
                continue
            route = taken.get((service.key, sp.port))
            if route is not None:
                for vs in usable:
                    lost.setdefault(vs.key, []).append(f"{service.fqdn}:{sp.port} is routed by {route}, which takes precedence over a VirtualService")
                continue
            entries: list[HTTPRouteEntry] = []
            for vs in usable:
                for i, http in enumerate(vs.spec.http):
                    if entries and is_catch_all(entries[-1]) and entries[-1].case_sensitive:
                        break  # nothing after a catch-all route can match
                    entries.extend(http_entries(vs, i, http, service, sp.port, resolver, wp_ns))
                applied.setdefault(vs.key, []).append(f"{service.fqdn}:{sp.port}")
            if entries:
                out.append(ServiceRoutes(service.key, sp.port, (), tuple(entries)))
                for e in entries:
                    mirrors = [WeightedBackend(m.service, m.port, 0, True, subset=m.subset) for m in e.mirrors]
                    missing.setdefault((KIND, *e.route.split("/")), set()).update(_unresolved((*e.backends, *mirrors), by_fqdn, rules, wp_ns))

    statuses = []
    for vs in sorted(virtual_services, key=lambda v: (v.namespace, v.name)):
        conditions: list[Condition] = []
        conflicts = [why for why in lost.get(vs.key, []) if "takes precedence" in why]
        if not vs.for_mesh:
            conditions.append(Condition("Accepted", "False", "NotForMesh", "gateways does not include mesh: waypoints do not apply it"))
        elif invalid.get(vs.key):
            conditions.append(Condition("Accepted", "False", "UnsupportedValue", "; ".join(invalid[vs.key])))
        elif vs.key in applied:
            conditions.append(Condition("Accepted", "True", "Accepted", "routes " + ", ".join(applied[vs.key])))
        elif conflicts:
            conditions.append(Condition("Accepted", "False", "Conflicted", "applies nowhere: " + "; ".join(conflicts)))
        else:
            why = lost.get(vs.key) or ["no service with a waypoint matches its hosts"]
            conditions.append(Condition("Accepted", "False", "NoWaypoint", "; ".join(why)))
        if conflicts:
            conditions.append(Condition("Conflicted", "True", "HTTPRouteTakesPrecedence", "; ".join(conflicts)))
        if missing.get(vs.key):
            conditions.append(Condition("ResolvedRefs", "False", "BackendNotFound",
                                        "not found (requests routed there get 503): " + ", ".join(sorted(missing[vs.key]))))
        statuses.append(ResourceStatus(KIND, vs.namespace, vs.name, tuple(conditions)))
    return tuple(out), tuple(l4_out), tuple(statuses)
