"""HTTPRoute attachment to Services (GAMMA), precedence, and route status conditions.

Rules followed (shared/spec/gateway-api.md §1–§2, istio-ambient-semantics.md §3):
- a parentRef `{group: "", kind: Service}` attaches to the Service frontend; `port` narrows it to one
  service port, `sectionName` is the port name;
- the waypoint applies producer routes (route namespace == Service namespace) and routes in the
  waypoint's own namespace; consumer routes are Accepted but not applied by a waypoint (Istio's
  `getVirtualServiceForWaypoint`);
- a parentRef to the waypoint Gateway itself: `Accepted=False/NotAllowedByListeners` (its HBONE listener
  supports no route kinds);
- precedence: Exact path, longest prefix, (method, headers, query params: later), oldest route,
  namespace/name, rule order.
"""

from __future__ import annotations

from collections.abc import Mapping

from waypost.api.gateway import HTTPRoute, ParentReference

from .model import (
    Condition,
    HTTPRouteEntry,
    ResourceStatus,
    Service,
    ServiceRoutes,
    WaypointRef,
    WeightedBackend,
    service_fqdn,
)
from .waypoints import USE_WAYPOINT

ACCEPTED = "Accepted"
RESOLVED_REFS = "ResolvedRefs"
RESOLVED_WAYPOINTS = "ResolvedWaypoints"


def parent_text(ref: ParentReference, route_ns: str) -> str:
    group = ref.group or "core"
    text = f"{ref.kind}.{group} {ref.namespace or route_ns}/{ref.name}"
    if ref.port:
        text += f":{ref.port}"
    if ref.section_name:
        text += f"#{ref.section_name}"
    return text


def _is_service_ref(ref: ParentReference) -> bool:
    return ref.kind == "Service" and ref.group in ("", "core")


def _ports_of_parent(ref: ParentReference, service: Service) -> list[int]:
    ports = [p for p in service.ports]
    if ref.port is not None:
        ports = [p for p in ports if p.port == ref.port]
    if ref.section_name is not None:
        ports = [p for p in ports if p.name == ref.section_name]
    return [p.port for p in ports]


def _backends(
    route: HTTPRoute, rule_index: int, services: Mapping[str, Service]
) -> tuple[tuple[WeightedBackend, ...], list[Condition]]:
    problems: list[Condition] = []
    out = []
    for ref in route.spec.rules[rule_index].backend_refs:
        ns = ref.namespace or route.namespace
        if ref.kind != "Service" or ref.group not in ("", "core"):
            problems.append(
                Condition(RESOLVED_REFS, "False", "InvalidKind", f"referencing unsupported backendRef: group {ref.group!r} kind {ref.kind!r}")
            )
            out.append(WeightedBackend(service_fqdn(ns, ref.name), ref.port or 0, ref.weight, exists=False))
            continue
        service = services.get(f"{ns}/{ref.name}")
        exists = service is not None and service.port(ref.port or 0) is not None
        if service is None:
            problems.append(Condition(RESOLVED_REFS, "False", "BackendNotFound", f"backend({ref.name}.{ns}) not found"))
        elif not exists:
            problems.append(
                Condition(RESOLVED_REFS, "False", "BackendNotFound", f"backend({ref.name}.{ns}) has no port {ref.port}")
            )
        out.append(WeightedBackend(service_fqdn(ns, ref.name), ref.port or 0, ref.weight, exists=exists))
    return tuple(out), problems


def _sort_key(route: HTTPRoute, rule_index: int, match_index: int, path_type: str, path: str):
    type_rank = {"Exact": 0, "PathPrefix": 1}.get(path_type, 2)
    created = route.metadata.creation_timestamp or ""
    return (type_rank, -len(path), created, route.namespace, route.name, rule_index, match_index)


def attach(
    routes: list[HTTPRoute],
    services: Mapping[str, Service],
    waypoint_gateways: Mapping[WaypointRef, object],
    namespace_labels: Mapping[str, Mapping[str, str]],
    service_labels: Mapping[str, Mapping[str, str]],
) -> tuple[tuple[ServiceRoutes, ...], tuple[ResourceStatus, ...]]:
    """Route entries per (service, port) as the service's waypoint applies them, plus route statuses."""
    collected: dict[tuple[str, int], list[tuple[tuple, HTTPRouteEntry]]] = {}
    statuses: list[ResourceStatus] = []
    for route in routes:
        parents: list[tuple[str, tuple[Condition, ...]]] = []
        rule_backends = [_backends(route, i, services) for i in range(len(route.spec.rules))]
        ref_problems = [c for _, problems in rule_backends for c in problems]
        resolved = (
            ref_problems[0] if ref_problems else Condition(RESOLVED_REFS, "True", "ResolvedRefs", "All references resolved")
        )
        for ref in route.spec.parent_refs:
            text = parent_text(ref, route.namespace)
            ns = ref.namespace or route.namespace
            if ref.kind == "Gateway" and ref.group == "gateway.networking.k8s.io":
                if WaypointRef(ns, ref.name) in waypoint_gateways:
                    parents.append((text, (Condition(ACCEPTED, "False", "NotAllowedByListeners",
                                                     "waypoint listeners (HBONE) do not accept routes; attach to a Service instead"),)))
                # Other Gateways (ingress) are not handled by waypost: no status, like another controller's.
                continue
            if not _is_service_ref(ref):
                parents.append((text, (Condition(ACCEPTED, "False", "NoMatchingParent", f"unsupported parent kind {ref.kind}"),)))
                continue
            service = services.get(f"{ns}/{ref.name}")
            if service is None:
                parents.append((text, (Condition(ACCEPTED, "False", "NoMatchingParent", f'parent service: "{ref.name}" not found'),)))
                continue
            ports = _ports_of_parent(ref, service)
            if not ports:
                parents.append((text, (Condition(ACCEPTED, "False", "NoMatchingParent",
                                                 f"parent service {ns}/{ref.name} has no matching port"),)))
                continue
            labelled = USE_WAYPOINT in service_labels.get(service.key, {}) or USE_WAYPOINT in namespace_labels.get(ns, {})
            waypoints_condition = Condition(
                RESOLVED_WAYPOINTS,
                "True",
                RESOLVED_WAYPOINTS,
                "All waypoints resolved"
                if labelled
                else "istio.io/use-waypoint label missing from parent and parent namespace; in ambient mode, route will not be respected",
            )
            parents.append((text, (Condition(ACCEPTED, "True", "Accepted", "Route was valid"), resolved, waypoints_condition)))
            # Producer routes and routes in the waypoint's namespace are applied; consumer routes are not.
            applies = route.namespace == service.namespace or (
                service.waypoint is not None and route.namespace == service.waypoint.namespace
            )
            if not applies:
                continue
            for rule_index, rule in enumerate(route.spec.rules):
                backends, _ = rule_backends[rule_index]
                for match_index, match in enumerate(rule.matches):
                    path = match.path.value
                    if match.path.type == "PathPrefix" and len(path) > 1:
                        path = path.rstrip("/")  # a trailing slash is ignored for prefixes
                    entry = HTTPRouteEntry(
                        route=f"{route.namespace}/{route.name}",
                        rule_index=rule_index,
                        rule_name=rule.name,
                        path_type=match.path.type,
                        path=path,
                        backends=backends,
                    )
                    key = _sort_key(route, rule_index, match_index, match.path.type, path)
                    for port in ports:
                        collected.setdefault((service.key, port), []).append((key, entry))
        statuses.append(ResourceStatus("HTTPRoute", route.namespace, route.name, (), tuple(parents)))
    result = []
    for (service_key, port), items in sorted(collected.items()):
        entries = tuple(entry for _, entry in sorted(items, key=lambda kv: kv[0]))
        result.append(ServiceRoutes(service_key, port, entries))
    return tuple(result), tuple(statuses)
