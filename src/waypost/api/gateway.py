"""Gateway API kinds (gateway.networking.k8s.io): GatewayClass, Gateway, HTTPRoute.

HTTPRoute fields that waypost does not enforce yet are refused with "not supported yet" rather than
ignored: a silently dropped filter or match would route traffic differently from what the user wrote.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from .meta import LabelSelector, Model, Resource

GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSIONS = ("v1", "v1beta1")

# Gateway API path validation for Exact/PathPrefix (apis/v1/httproute_types.go CEL rules).
_PATH_CHARS = re.compile(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+$")


class GatewayClassSpec(Model):
    controller_name: str = Field(min_length=1)
    description: str | None = None
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
    name: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    protocol: str = Field(min_length=1)
    hostname: str | None = None
    tls: dict[str, Any] | None = None
    allowed_routes: AllowedRoutes = Field(default_factory=AllowedRoutes)


class GatewayInfrastructure(Model):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    parameters_ref: dict[str, Any] | None = None


class GatewaySpec(Model):
    gateway_class_name: str = Field(min_length=1)
    listeners: list[Listener] = Field(min_length=1, max_length=64)
    addresses: list[dict[str, Any]] | None = None
    infrastructure: GatewayInfrastructure | None = None


class Gateway(Resource):
    GROUP: ClassVar[str] = GATEWAY_GROUP
    KIND: ClassVar[str] = "Gateway"
    VERSIONS: ClassVar[tuple[str, ...]] = GATEWAY_VERSIONS
    spec: GatewaySpec


class ParentReference(Model):
    group: str = GATEWAY_GROUP
    kind: str = "Gateway"
    namespace: str | None = None
    name: str = Field(min_length=1)
    section_name: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)


class PathMatch(Model):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: str = Field(default="/", max_length=1024)

    @model_validator(mode="after")
    def _valid_path(self) -> "PathMatch":
        if self.type == "RegularExpression":
            raise ValueError("path type RegularExpression is not supported yet")
        v = self.value
        if not v.startswith("/"):
            raise ValueError("value must be an absolute path starting with '/'")
        for bad in ("//", "/./", "/../", "%2f", "%2F", "#"):
            if bad in v:
                raise ValueError(f"value must not contain {bad!r}")
        if v.endswith("/..") or v.endswith("/."):
            raise ValueError("value must not end with '/.' or '/..'")
        if not _PATH_CHARS.match(v):
            raise ValueError("value may contain only RFC 3986 path characters")
        return self


class HTTPRouteMatch(Model):
    path: PathMatch = Field(default_factory=PathMatch)
    headers: list[dict[str, Any]] | None = None
    query_params: list[dict[str, Any]] | None = None
    method: str | None = None

    @field_validator("headers", "query_params", "method")
    @classmethod
    def _only_path_for_now(cls, value: Any) -> Any:
        if value:
            raise ValueError("this match is not supported yet")
        return value


class BackendRef(Model):
    group: str = ""
    kind: str = "Service"
    name: str = Field(min_length=1)
    namespace: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    weight: int = Field(default=1, ge=0, le=1_000_000)
    filters: list[dict[str, Any]] | None = None

    @field_validator("filters")
    @classmethod
    def _no_filters_yet(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value:
            raise ValueError("backendRef filters are not supported yet")
        return value

    @model_validator(mode="after")
    def _port_for_service(self) -> "BackendRef":
        if self.kind == "Service" and self.group in ("", "core") and self.port is None:
            raise ValueError("port is required when the backend is a Service")
        return self


class HTTPRouteRule(Model):
    name: str | None = None
    matches: list[HTTPRouteMatch] = Field(default_factory=lambda: [HTTPRouteMatch()], max_length=64)
    filters: list[dict[str, Any]] | None = None
    backend_refs: list[BackendRef] = Field(default_factory=list, max_length=16)
    timeouts: dict[str, Any] | None = None
    retry: dict[str, Any] | None = None
    session_persistence: dict[str, Any] | None = None

    @field_validator("filters", "timeouts", "retry", "session_persistence")
    @classmethod
    def _subset(cls, value: Any) -> Any:
        if value:
            raise ValueError("not supported yet")
        return value


class HTTPRouteSpec(Model):
    parent_refs: list[ParentReference] = Field(default_factory=list, max_length=32)
    hostnames: list[str] = Field(default_factory=list, max_length=16)
    rules: list[HTTPRouteRule] = Field(default_factory=lambda: [HTTPRouteRule()], min_length=1, max_length=16)

    @model_validator(mode="after")
    def _distinct_parents(self) -> "HTTPRouteSpec":
        seen: set[tuple[Any, ...]] = set()
        for ref in self.parent_refs:
            key = (ref.group, ref.kind, ref.namespace, ref.name, ref.section_name, ref.port)
            if key in seen:
                raise ValueError(f"parentRefs: duplicate parent reference {ref.kind} {ref.name}")
            seen.add(key)
        names = [r.name for r in self.rules if r.name]
        if len(names) != len(set(names)):
            raise ValueError("rules: rule names must be unique within the route")
        return self


class HTTPRoute(Resource):
    GROUP: ClassVar[str] = GATEWAY_GROUP
    KIND: ClassVar[str] = "HTTPRoute"
    VERSIONS: ClassVar[tuple[str, ...]] = GATEWAY_VERSIONS
    spec: HTTPRouteSpec
