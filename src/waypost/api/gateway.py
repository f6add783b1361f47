"""Gateway API kinds (gateway.networking.k8s.io): GatewayClass and Gateway. Routes have modules of their own."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from .httproute import Group, Hostname, Kind, Namespace, ObjectName, SectionName
from .meta import LabelSelector, Model, Resource

GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSIONS = ("v1", "v1beta1")



class GatewayClassSpec(Model):
    controller_name: str = Field(
        min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$"
    )
    description: str | None = Field(default=None, max_length=64)
    parameters_ref: dict[str, Any] | None = None


class GatewayClass(Resource):
    GROUP: ClassVar[str] = GATEWAY_GROUP
    KIND: ClassVar[str] = "GatewayClass"
    VERSIONS: ClassVar[tuple[str, ...]] = GATEWAY_VERSIONS
    NAMESPACED: ClassVar[bool] = False
    spec: GatewayClassSpec


class RouteNamespaces(Model):
    from_: Literal["All", "Same", "Selector"] = Field(default="Same", alias="from")
    selector: LabelSelector | None = None


class AllowedRoutes(Model):
    namespaces: RouteNamespaces = Field(default_factory=RouteNamespaces)
    kinds: list[dict[str, str]] | None = None


class Listener(Model):
    name: SectionName
    port: int = Field(ge=1, le=65535)
    protocol: str = Field(min_length=1, max_length=255, pattern=r"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9]+$")
    hostname: Hostname | None = None
    tls: dict[str, Any] | None = None
    allowed_routes: AllowedRoutes = Field(default_factory=AllowedRoutes)


class GatewayInfrastructure(Model):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    parameters_ref: dict[str, Any] | None = None


class GatewaySpec(Model):
    gateway_class_name: ObjectName
    listeners: list[Listener] = Field(min_length=1, max_length=64)
    addresses: list[dict[str, Any]] | None = Field(default=None, max_length=16)
    infrastructure: GatewayInfrastructure | None = None
    # Gateway API v1.3+/v1.4 fields waypost does not act on (a waypoint takes no listeners from elsewhere
    # and terminates no TLS itself); accepted as the CRD accepts them.
    allowed_listeners: dict[str, Any] | None = None
    tls: dict[str, Any] | None = None


class Gateway(Resource):
    GROUP: ClassVar[str] = GATEWAY_GROUP
    KIND: ClassVar[str] = "Gateway"
    VERSIONS: ClassVar[tuple[str, ...]] = GATEWAY_VERSIONS
    spec: GatewaySpec


class ReferenceGrantFrom(Model):
    group: Group
    kind: Kind
    namespace: Namespace


class ReferenceGrantTo(Model):
    group: Group
    kind: Kind
    name: ObjectName | None = None


class ReferenceGrantSpec(Model):
    from_: list[ReferenceGrantFrom] = Field(alias="from", min_length=1, max_length=16)
    to: list[ReferenceGrantTo] = Field(min_length=1, max_length=16)


class ReferenceGrant(Resource):
    """Accepted and validated. Mesh routes need no grant for backendRefs (GEP-1294), so waypost's routes,
    which are all mesh routes (Service- or waypoint-attached), never consult it."""

    GROUP: ClassVar[str] = GATEWAY_GROUP
    KIND: ClassVar[str] = "ReferenceGrant"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1beta1", "v1alpha2", "v1")
    spec: ReferenceGrantSpec
