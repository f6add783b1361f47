"""Computed status in the shape the Kubernetes API shows it (`status:` of each resource). Pure.

Timestamps (`lastTransitionTime`) are the caller's: this layer has no clock.
"""

from __future__ import annotations

from typing import Any

from waypost.api.meta import Resource

from .model import Condition, MeshSnapshot, service_fqdn
from .routes import CONTROLLER_NAME, parent_text
from .waypoints import MESH_CONTROLLER, WAYPOINT_CLASS

ROUTE_KINDS = ("HTTPRoute", "GRPCRoute", "TCPRoute", "TLSRoute")


def _conditions(conditions: tuple[Condition, ...], generation: int) -> list[dict[str, Any]]:
    return [{**c.as_dict(), "observedGeneration": generation} for c in conditions]


def _parent_ref(ref, route_ns: str) -> dict[str, Any]:
    out: dict[str, Any] = {"group": ref.group, "kind": ref.kind, "namespace": ref.namespace or route_ns, "name": ref.name}
    if ref.section_name is not None:
        out["sectionName"] = ref.section_name
    if ref.port is not None:
        out["port"] = ref.port
    return out


def resource_status(resource: Resource, snapshot: MeshSnapshot) -> dict[str, Any] | None:
    generation = int(getattr(resource.metadata, "generation", None) or 1)
    computed = snapshot.status_of(resource.KIND, resource.namespace if resource.NAMESPACED else "", resource.name)
    if resource.KIND in ROUTE_KINDS:
        by_text = dict(computed.parents) if computed else {}
        parents = []
        for ref in resource.spec.parent_refs:
            conditions = by_text.get(parent_text(ref, resource.namespace))
            if conditions is None:
                continue  # a parent of another controller: not ours to report
            parents.append(
                {
                    "parentRef": _parent_ref(ref, resource.namespace),
                    "controllerName": CONTROLLER_NAME,
                    "conditions": _conditions(conditions, generation),
                }
            )
        return {"parents": parents}
    if resource.KIND == "Gateway":
        waypoint = next((w for w in snapshot.waypoints if (w.namespace, w.name) == (resource.namespace, resource.name)), None)
        if waypoint is None or computed is None:
            return None
        return {
            "addresses": [
                {"type": "Hostname", "value": service_fqdn(waypoint.namespace, waypoint.name)},
                {"type": "IPAddress", "value": waypoint.address},
            ],
            "conditions": _conditions(computed.conditions, generation),
            "listeners": [
                {"name": name, "supportedKinds": [], "attachedRoutes": 0, "conditions": _conditions(conds, generation)}
                for name, conds in computed.parents
            ],
        }
    if resource.KIND == "GatewayClass":
        if resource.spec.controller_name != MESH_CONTROLLER and resource.name != WAYPOINT_CLASS:
            return None
        return {"conditions": _conditions((Condition("Accepted", "True", "Accepted", "Handled by waypost mesh controller"),), generation)}
    if resource.KIND == "Service":
        out: dict[str, Any] = {"loadBalancer": {}}
        if computed is not None:
            out["conditions"] = _conditions(computed.conditions, generation)
        return out
    if computed is not None:
        return {"conditions": _conditions(computed.conditions, generation)}
    return None
