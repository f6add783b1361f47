"""Waypoints and enrolment: which Gateways are waypoints, and which waypoint a Service or workload uses.

Follows Istio's `pilot/pkg/serviceregistry/ambient/waypoints.go` as summarised in
shared/spec/istio-ambient-semantics.md §1.3–§2.5: object label beats namespace label, `none` opts out,
`use-waypoint-namespace` is read from the object that supplied `use-waypoint`, a missing or not-ready
waypoint is *not* replaced by the namespace one (traffic flows L4 only), `allowedRoutes` on the HBONE
listener governs which namespaces may bind, and `istio.io/waypoint-for` filters the traffic type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from waypost.api.gateway import Gateway, GatewayClass

from .model import Condition, Waypoint, WaypointRef

USE_WAYPOINT = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE = "istio.io/use-waypoint-namespace"
WAYPOINT_FOR = "istio.io/waypoint-for"
DATAPLANE_MODE = "istio.io/dataplane-mode"
MESH_CONTROLLER = "istio.io/mesh-controller"
WAYPOINT_CLASS = "istio-waypoint"
SERVICE_ACCOUNT_ANNOTATION = "gateway.istio.io/service-account"
MANAGED_LABEL = "gateway.istio.io/managed"
WAYPOINT_BOUND = "istio.io/WaypointBound"


def is_enrolled(namespace_labels: Mapping[str, str], pod_labels: Mapping[str, str]) -> bool:
    """Ambient enrolment: `istio.io/dataplane-mode=ambient` on the pod or its namespace; `none` on the pod opts out."""
    pod_mode = pod_labels.get(DATAPLANE_MODE)
    if pod_mode == "none":
        return False
    if pod_mode == "ambient":
        return True
    return namespace_labels.get(DATAPLANE_MODE) == "ambient"


def waypoint_classes(classes: list[GatewayClass]) -> dict[str, GatewayClass | None]:
    """Gateway class names handled by the mesh controller. `istio-waypoint` exists even when not declared."""
    out: dict[str, GatewayClass | None] = {WAYPOINT_CLASS: None}
    for cls in classes:
        if cls.spec.controller_name == MESH_CONTROLLER:
            out[cls.name] = cls
        elif cls.name == WAYPOINT_CLASS:
            out.pop(WAYPOINT_CLASS, None)  # the user redefined the built-in name for another controller
    return out


def hbone_listener(gateway: Gateway):  # -> Listener | None
    for listener in gateway.spec.listeners:
        if listener.port == 15008 and listener.protocol == "HBONE":
            return listener
    return None


def traffic_for(gateway: Gateway, gateway_class: GatewayClass | None) -> str:
    value = gateway.labels.get(WAYPOINT_FOR)
    if value is None and gateway_class is not None:
        value = gateway_class.labels.get(WAYPOINT_FOR)
    return value if value in ("service", "workload", "all", "none") else "service"


def service_account(gateway: Gateway) -> str:
    return gateway.metadata.annotations.get(SERVICE_ACCOUNT_ANNOTATION, gateway.name)


def allows_namespace(gateway: Gateway, namespace: str, namespace_labels: Mapping[str, str]) -> bool:
    """allowedRoutes.namespaces of the HBONE listener decides who may bind (default Same)."""
    listener = hbone_listener(gateway)
    if listener is None:
        return namespace == gateway.namespace
    ns = listener.allowed_routes.namespaces
    if ns.from_ == "All":
        return True
    if ns.from_ == "Selector":
        return ns.selector is not None and ns.selector.matches(dict(namespace_labels))
    return namespace == gateway.namespace


@dataclass(frozen=True)
class Binding:
    waypoint: WaypointRef | None
    condition: Condition | None  # istio.io/WaypointBound for Services; None = no binding, condition removed


def resolve(
    *,
    kind: str,
    namespace: str,
    labels: Mapping[str, str],
    namespace_labels: Mapping[str, str],
    waypoints: Mapping[WaypointRef, Waypoint],
    gateways: Mapping[WaypointRef, Gateway],
    all_namespace_labels: Mapping[str, Mapping[str, str]],
) -> Binding:
    """The waypoint for one Service ("Service") or workload ("Pod"/"WorkloadEntry"), per spec §2.2."""
    if labels.get(MANAGED_LABEL) == "istio.io-mesh-controller":
        return Binding(None, None)
    source: Mapping[str, str] | None = None
    from_object = False
    if USE_WAYPOINT in labels:
        if labels[USE_WAYPOINT] == "none":
            return Binding(None, None)
        source, from_object = labels, True
    elif namespace_labels.get(USE_WAYPOINT) not in (None, "none"):
        source = namespace_labels
    if source is None:
        return Binding(None, None)
    ref = WaypointRef(source.get(USE_WAYPOINT_NAMESPACE) or namespace, source[USE_WAYPOINT])
    waypoint = waypoints.get(ref)
    if waypoint is None or not waypoint.ready:
        return Binding(
            None, Condition(WAYPOINT_BOUND, "False", "WaypointIsNotReady", f'waypoint "{ref}" is not ready')
        )
    gateway = gateways[ref]
    if not allows_namespace(gateway, namespace, all_namespace_labels.get(namespace, {})):
        return Binding(
            None,
            Condition(
                WAYPOINT_BOUND,
                "False",
                "AttachmentDenied",
                f'we are not permitted to attach to waypoint "{ref}" (missing allowedRoutes?)',
            ),
        )
    service_addressed = kind == "Service"
    accepted = waypoint.accepts_service_traffic if service_addressed else waypoint.accepts_workload_traffic
    if not accepted:
        traffic = "service" if service_addressed else "workload"
        mismatch = Condition(
            WAYPOINT_BOUND,
            "False",
            "UnsupportedTrafficType",
            f'attempting to bind to traffic type "{traffic}" which the waypoint "{ref}" does not support',
        )
        # A pod inheriting a namespace waypoint that serves services only is the normal case: no error.
        if not service_addressed and not from_object:
            return Binding(None, None)
        return Binding(None, mismatch)
    return Binding(
        ref, Condition(WAYPOINT_BOUND, "True", "WaypointAccepted", f"Successfully attached to waypoint {ref}")
    )
