"""Route attachment to Services (GAMMA) and to the waypoint, and route status conditions.

Rules followed (shared/spec/gateway-api.md §1, §4; istio-ambient-semantics.md §3):
- a parentRef `{group: "", kind: Service}` attaches to the Service frontend; `port` narrows it to one
  service port and `sectionName` names a port; both must match when both are given;
- producer routes (route namespace == Service namespace) and, as in Istio, routes in the waypoint's own
  namespace apply to every client;
- **consumer routes** (any other namespace) apply only to clients of the route's namespace. Istio's
  waypoints ignore them; waypost keys them on the client identity the waypoint has from mTLS. A client
  namespace with consumer routes for a port uses only those (GEP-1294: the groups are exclusive);
- a parentRef to the waypoint `Gateway` attaches the route to every Service the waypoint serves, for
  ports that no Service-attached route of the same group claims (the Service is the more specific
  parent). This is waypost's reading of "attach to the entire waypoint"; Istio reports
  `NotAllowedByListeners` instead;
- a rule that cannot be programmed (invalid RE2 expression, sessionPersistence) is dropped with
  `PartiallyInvalid`, or the route is `Accepted=False/UnsupportedValue` when no rule is left.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from waypost.api.grpcroute import GRPCRoute
from waypost.api.httproute import HTTPRoute, ParentReference

from . import grpc, http
from .http import BackendResolver, WithHosts
from .model import Condition, HTTPRouteEntry, ResourceStatus, Service, ServiceRoutes, WaypointRef
from .waypoints import USE_WAYPOINT

ACCEPTED = "Accepted"
RESOLVED_REFS = "ResolvedRefs"
RESOLVED_WAYPOINTS = "ResolvedWaypoints"
CONTROLLER_NAME = "waypost.io/mesh-controller"


def parent_text(ref: ParentReference, route_ns: str) -> str:
    group = ref.group or "core"
    text = f"{ref.kind}.{group} {ref.namespace or route_ns}/{ref.name}"
    if ref.port:
        text += f":{ref.port}"
    if ref.section_name:
        text += f"#{ref.section_name}"
    return text


def _is_service_ref(ref: ParentReference) -> bool:
    return (ref.kind == "Service" and ref.group in ("", "core")) or (ref.kind == "ServiceEntry" and ref.group == "networking.istio.io")


def _ports_of_parent(ref: ParentReference, service: Service) -> list[int]:
    ports = [p for p in service.ports if p.is_http or p.protocol == "UNKNOWN"]
    if ref.port is not None:
        ports = [p for p in ports if p.port == ref.port]
    if ref.section_name is not None:
        ports = [p for p in ports if p.name == ref.section_name]
    return [p.port for p in ports]


def service_targets(lookup: WithHosts, ref: ParentReference, ns: str, ports_of, protocol: str, what: str) -> tuple[list, Condition | None]:
    """The (mesh service, its ports the ref selects) pairs a Service or ServiceEntry parentRef attaches to
    (a ServiceEntry has one mesh service per host), or the NoMatchingParent condition when there are none."""
    hosts = lookup.named(ref.kind, ns, ref.name)
    if not hosts:
        return [], Condition(ACCEPTED, "False", "NoMatchingParent", f'parent {what}: "{ref.name}" not found')
    targets = [(service, ports) for service in hosts if (ports := ports_of(ref, service))]
    if not targets:
        return [], Condition(ACCEPTED, "False", "NoMatchingParent", f"parent service {ns}/{ref.name} has no matching {protocol} port")
    return targets, None


def _with_consumer(entry: HTTPRouteEntry, namespace: str | None) -> HTTPRouteEntry:
    if namespace is None:
        return entry
    from dataclasses import replace

    return replace(entry, consumer_namespace=namespace)


# GEP-1294: when several route kinds bind to one Service port, only the highest kind applies.
KIND_PRECEDENCE = ("GRPCRoute", "HTTPRoute")


class _Looked(dict):
    """The services a route's rules looked up, each as what the lookup told them (`_signature`)."""


def _signature(service: Service | None) -> tuple | None:
    # All a BackendResolver answers from a service: that it exists, its FQDN and its port numbers.
    return None if service is None else (service.fqdn, tuple(p.port for p in service.ports))


class _RecordingServices:
    __slots__ = ("_services", "looked")

    def __init__(self, services: Mapping[str, Service], looked: _Looked) -> None:
        self._services, self.looked = services, looked

    def get(self, key: str, default: Any = None) -> Service | None:
        found = self._services.get(key, default)
        self.looked[key] = _signature(found)
        return found


class RuleMemo(dict):
    """id(route) -> the route's `_Contribution`: `attach`'s memo, with what those contributions were computed
    against (`services`, `context`) and the assembly they made (`assembly`), for the next call."""

    services: Any = None
    context: tuple = ()
    assembly: "_Assembly | None" = None


class _Contribution(NamedTuple):
    """What one route brings to the attachment: its rules' results (and the services they looked up), its
    status before conflicts are marked, its entries per service port and per waypoint, and its claims."""

    route: Any
    results: list
    looked: _Looked
    status: ResourceStatus
    service_adds: tuple  # ((service key, port, kind), group, entries)
    waypoint_adds: tuple  # ((waypoint, kind), group, entries)
    claims: dict  # (kind, namespace, name, parent text) -> [(service key, port)]


class _Assembly(NamedTuple):
    """An attachment's assembled state, kept so that the next call can redo only the ports a change touched."""

    by_service: dict  # (service key, port, kind) -> group -> [entries]
    by_waypoint: dict  # (waypoint, kind) -> group -> [entries]
    contributors: dict  # (service key, port) -> ids of the routes with entries there (`_pack`)
    winners: dict  # (service key, port) -> kind
    results: dict  # (service key, port) -> ServiceRoutes
    statuses: dict  # id(route) -> its final status


def _rule_results(route: HTTPRoute | GRPCRoute, services: Mapping[str, Service], memo: RuleMemo | None, same_services: bool) -> tuple[list, _Looked]:
    """The rules' entries of one route; the memo's when it holds this very route object and every service
    those rules looked up answers the same (a rule reads nothing else). `same_services`: the services are
    the very mapping the memo was computed against (the build reused its registry), so they all do."""
    hit = memo.get(id(route)) if memo is not None else None
    if hit is not None and hit.route is route and (same_services or all(_signature(services.get(k)) == sig for k, sig in hit.looked.items())):
        return hit.results, hit.looked
    looked = _Looked()
    resolver = BackendResolver(_RecordingServices(services, looked))  # type: ignore[arg-type] - reads like a Mapping
    rule_entries = grpc.rule_entries if route.KIND == "GRPCRoute" else http.rule_entries
    return [rule_entries(route, i, rule, resolver) for i, rule in enumerate(route.spec.rules)], looked


def _contribution(route, lookup: WithHosts, memo: RuleMemo | None, same_services: bool, waypoint_gateways, namespace_labels, service_labels) -> _Contribution:
    results, looked = _rule_results(route, lookup, memo, same_services)
    valid = [r for r in results if r.invalid is None]
    dropped = [(i, r.invalid) for i, r in enumerate(results) if r.invalid is not None]
    ref_problems = [c for r in results for c in r.ref_problems]
    resolved = ref_problems[0] if ref_problems else Condition(RESOLVED_REFS, "True", "ResolvedRefs", "All references resolved")
    if not valid:
        accepted = Condition(ACCEPTED, "False", "UnsupportedValue", "; ".join(f"rule {i}: {why}" for i, why in dropped))
    else:
        accepted = Condition(ACCEPTED, "True", "Accepted", "Route was valid")
    extra = ()
    if valid and dropped:
        extra = (Condition("PartiallyInvalid", "True", "UnsupportedValue", "Dropped Rule " + "; ".join(f"{i}: {why}" for i, why in dropped)),)
    entries = [e for r in valid for e in r.entries]
    parents: list[tuple[str, tuple[Condition, ...]]] = []
    service_adds: list = []
    waypoint_adds: list = []
    claims: dict = {}
    for ref in route.spec.parent_refs:
        text = parent_text(ref, route.namespace)
        ns = ref.namespace or route.namespace
        if ref.kind == "Gateway" and ref.group == "gateway.networking.k8s.io":
            wref = WaypointRef(ns, ref.name)
            if wref not in waypoint_gateways:
                continue  # not a waypoint: another controller's Gateway, no status of ours
            if ref.port not in (None, 15008) or ref.section_name not in (None, "mesh", *_listener_names(waypoint_gateways[wref])):
                parents.append((text, (Condition(ACCEPTED, "False", "NoMatchingParent", "no waypoint listener matches the port or sectionName"),)))
                continue
            parents.append((text, (accepted, resolved, *extra)))
            if valid:
                waypoint_adds.append(((wref, route.KIND), None if route.namespace == ns else route.namespace, entries))
            continue
        if not _is_service_ref(ref):
            parents.append((text, (Condition(ACCEPTED, "False", "NoMatchingParent", f"unsupported parent kind {ref.kind}"),)))
            continue
        targets, missing = service_targets(lookup, ref, ns, _ports_of_parent, "HTTP", "service" if ref.kind == "Service" else "serviceentry")
        if missing is not None:
            parents.append((text, (missing,)))
            continue
        service = targets[0][0]
        labelled = service.waypoint is not None or USE_WAYPOINT in service_labels.get(service.key, {}) or USE_WAYPOINT in namespace_labels.get(ns, {})
        waypoints_condition = Condition(
            RESOLVED_WAYPOINTS,
            "True",
            RESOLVED_WAYPOINTS,
            "All waypoints resolved"
            if labelled
            else "istio.io/use-waypoint label missing from parent and parent namespace; in ambient mode, route will not be respected",
        )
        parents.append((text, (accepted, resolved, waypoints_condition, *extra)))
        if not valid:
            continue
        claimed = []
        for service, ports in targets:
            producer = route.namespace == service.namespace or (
                service.waypoint is not None and route.namespace == service.waypoint.namespace
            )
            group = None if producer else route.namespace
            for port in ports:
                service_adds.append(((service.key, port, route.KIND), group, entries))
            claimed += [(service.key, port) for port in ports]
        claims[(route.KIND, route.namespace, route.name, text)] = claimed
    status = ResourceStatus(route.KIND, route.namespace, route.name, (), tuple(parents))
    return _Contribution(route, results, looked, status, tuple(service_adds), tuple(waypoint_adds), claims)


def attach(
    routes: list[HTTPRoute | GRPCRoute],
    services: Mapping[str, Service] | WithHosts,
    waypoint_gateways: Mapping[WaypointRef, object],
    namespace_labels: Mapping[str, Mapping[str, str]],
    service_labels: Mapping[str, Mapping[str, str]],
    memo: RuleMemo | None = None,
) -> tuple[tuple[ServiceRoutes, ...], tuple[ResourceStatus, ...], RuleMemo]:
    """Route entries per (service, port) as the service's waypoint applies them, plus route statuses, and
    the memo for the next call.

    From `memo` (what an earlier call left): a route that did not change (the same object) keeps its rule
    results while its backends did not change either, and its whole contribution while the services,
    waypoints and labels are the very objects of that call (the build reused its registry). In that case,
    when the changed routes attach to Services only, just the service ports they had or have entries on are
    assembled again (`_reassemble`); the result is the one a full assembly gives."""
    lookup = WithHosts.of(services)
    context = (waypoint_gateways, namespace_labels, service_labels)
    same_services = memo is not None and getattr(memo, "services", None) is lookup.services
    same_context = same_services and len(memo.context) == 3 and all(a is b for a, b in zip(memo.context, context))
    new_memo = RuleMemo()
    new_memo.services, new_memo.context = lookup.services, context
    fresh: list[int] = []
    for route in routes:
        hit = memo.get(id(route)) if same_context else None
        if hit is None or hit.route is not route:
            hit = _contribution(route, lookup, memo, same_services, waypoint_gateways, namespace_labels, service_labels)
            fresh.append(id(route))
        new_memo[id(route)] = hit
    previous = memo.assembly if same_context else None
    assembly = None
    if previous is not None:
        # The memo holds exactly the earlier call's routes (keeping them alive, so no id of theirs is reused).
        gone = [c for i, c in memo.items() if i not in new_memo]
        changed = gone + [new_memo[i] for i in fresh]
        if len(changed) <= _REASSEMBLE_LIMIT and not any(c.waypoint_adds for c in changed):
            assembly = _reassemble(routes, new_memo, lookup, previous, changed)
    new_memo.assembly = assembly = assembly or _assemble(routes, new_memo, lookup)
    results = tuple(sorted(assembly.results.values(), key=lambda r: (r.service, r.port)))
    return results, tuple(assembly.statuses[id(r)] for r in routes), new_memo


_REASSEMBLE_LIMIT = 64  # changed routes beyond which a full assembly is about as quick


def _assemble(routes: list, contributions: Mapping[int, _Contribution], lookup: WithHosts) -> _Assembly:
    # (service, port, kind) -> group -> [(sort key, entry)]; group None = producers, "ns" = consumers of ns.
    by_service: dict[tuple[str, int, str], dict[str | None, list]] = {}
    by_waypoint: dict[tuple[WaypointRef, str], dict[str | None, list]] = {}
    contributors: dict[tuple[str, int], set] = {}
    for route in routes:
        c = contributions[id(route)]
        for key, group, entries in c.service_adds:
            by_service.setdefault(key, {}).setdefault(group, []).extend(entries)
            contributors.setdefault(key[:2], set()).add(id(route))
        for key, group, entries in c.waypoint_adds:
            by_waypoint.setdefault(key, {}).setdefault(group, []).extend(entries)

    # Waypoint-attached routes fill in, per group, where no Service-attached route of that group exists.
    for service in lookup.values():
        if service.waypoint is None:
            continue
        for kind in KIND_PRECEDENCE:
            if (service.waypoint, kind) not in by_waypoint:
                continue
            for port in (p.port for p in service.ports if p.is_http or p.protocol == "UNKNOWN"):
                groups = by_service.setdefault((service.key, port, kind), {})
                for group, items in by_waypoint[(service.waypoint, kind)].items():
                    groups.setdefault(group, list(items))

    # Route kinds on one port: the highest kind wins; a parentRef that lost all its ports is Conflicted.
    winners: dict[tuple[str, int], str] = {}
    for service_key, port, kind in by_service:
        current = winners.get((service_key, port))
        if current is None or KIND_PRECEDENCE.index(kind) < KIND_PRECEDENCE.index(current):
            winners[(service_key, port)] = kind
    statuses = {id(r): _mark_conflicts(contributions[id(r)].status, contributions[id(r)].claims, winners) for r in routes}
    results = {}
    for (service_key, port, kind), groups in by_service.items():
        if winners[(service_key, port)] == kind:
            results[(service_key, port)] = _service_routes(service_key, port, groups)
    return _Assembly(by_service, by_waypoint, {k: _pack(v) for k, v in contributors.items()}, winners, results, statuses)


def _pack(ids: set[int]) -> int | frozenset:
    """Route ids with entries on one port: most ports have one route, stored as its id (no set)."""
    return next(iter(ids)) if len(ids) == 1 else frozenset(ids)


def _ids(packed: int | frozenset | None) -> frozenset | tuple:
    return () if packed is None else packed if isinstance(packed, frozenset) else (packed,)


def _service_routes(service_key: str, port: int, groups: dict[str | None, list]) -> ServiceRoutes:
    ordered: list[HTTPRouteEntry] = []
    for group in sorted(g for g in groups if g is not None):
        ordered.extend(_with_consumer(e, group) for _, e in sorted(groups[group], key=lambda kv: kv[0]))
    producers = [e for _, e in sorted(groups.get(None, []), key=lambda kv: kv[0])]
    return ServiceRoutes(service_key, port, tuple(ordered), tuple(producers), tuple(sorted(g for g in groups if g is not None)))


def _reassemble(routes: list, contributions: Mapping[int, _Contribution], lookup: WithHosts, before: _Assembly, changed: list[_Contribution]) -> _Assembly:
    """`_assemble`'s result, from the previous assembly `before` and the routes that changed since (their old
    and new contributions, none attached to a waypoint): only the service ports those touch are assembled
    again, from the routes with entries there (in input order), the unchanged waypoint entries filling in.
    Nothing of `before` is modified."""
    touched = {key[:2] for c in changed for key, _, _ in c.service_adds}
    position = {id(r): i for i, r in enumerate(routes)}
    by_service, contributors, winners, results = dict(before.by_service), dict(before.contributors), dict(before.winners), dict(before.results)
    services = lookup.services
    for service_port in touched:
        service_key, port = service_port
        for kind in KIND_PRECEDENCE:
            by_service.pop((service_key, port, kind), None)
        # Routes with entries on this port now: the earlier ones still present, and the changed ones.
        now = {i for i in _ids(before.contributors.get(service_port)) if i in position}
        now |= {id(c.route) for c in changed if id(c.route) in position and contributions[id(c.route)] is c}
        now = {i for i in now if any(key[:2] == service_port for key, _, _ in contributions[i].service_adds)}
        for i in sorted(now, key=position.__getitem__):
            for key, group, entries in contributions[i].service_adds:
                if key[:2] == service_port:
                    by_service.setdefault(key, {}).setdefault(group, []).extend(entries)
        service = services.get(service_key)
        if service is not None and service.waypoint is not None and any(p.port == port and (p.is_http or p.protocol == "UNKNOWN") for p in service.ports):
            for kind in KIND_PRECEDENCE:
                fill = before.by_waypoint.get((service.waypoint, kind))
                if fill is None:
                    continue
                groups = by_service.setdefault((service_key, port, kind), {})
                for group, items in fill.items():
                    groups.setdefault(group, list(items))
        if now:
            contributors[service_port] = _pack(now)
        else:
            contributors.pop(service_port, None)
        kinds = [k for k in KIND_PRECEDENCE if (service_key, port, k) in by_service]
        if kinds:
            winners[service_port] = kinds[0]
            results[service_port] = _service_routes(service_key, port, by_service[(service_key, port, kinds[0])])
        else:
            winners.pop(service_port, None)
            results.pop(service_port, None)
    # Statuses: the changed routes', and those of routes whose claims name a touched port (their conflicts).
    statuses = {i: s for i, s in before.statuses.items() if i in position}
    remark = {id(c.route) for c in changed if id(c.route) in position} | {i for sp in touched for i in _ids(contributors.get(sp))}
    for i in remark:
        c = contributions[i]
        statuses[i] = _mark_conflicts(c.status, c.claims, winners)
    return _Assembly(by_service, before.by_waypoint, contributors, winners, results, statuses)


def _mark_conflicts(status: ResourceStatus, claims, winners) -> ResourceStatus:
    parents = []
    for text, conditions in status.parents:
        ports = claims.get((status.kind, status.namespace, status.name, text), [])
        if ports and all(winners.get(p) != status.kind for p in ports):
            winner = winners[ports[0]]
            conditions = (
                Condition(ACCEPTED, "False", "Conflicted", f"a {winner} is attached to the same port and takes precedence"),
                *conditions[1:],
            )
        parents.append((text, conditions))
    return ResourceStatus(status.kind, status.namespace, status.name, status.conditions, tuple(parents))


def _listener_names(gateway) -> tuple[str, ...]:
    return tuple(listener.name for listener in gateway.spec.listeners)
