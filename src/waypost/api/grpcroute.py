"""GRPCRoute (gateway.networking.k8s.io/v1) with its CRD validation. Source: apis/v1/grpcroute_types.go."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from .httproute import (
    GATEWAY_GROUP,
    check_filters,
    BackendObjectReference,
    HeaderMatch,
    HeaderModifier,
    Hostname,
    LocalObjectReference,
    ParentReference,
    RequestMirror,
    SectionName,
)
from .meta import Model, Resource


class GRPCMethodMatch(Model):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    service: str | None = Field(default=None, max_length=1024)
    method: str | None = Field(default=None, max_length=1024)

    @model_validator(mode="after")
    def _cel(self) -> "GRPCMethodMatch":
        if not self.service and not self.method:
            raise ValueError("one or both of service or method must be specified")
        if self.type == "Exact":
            for field in ("service", "method"):
                value = getattr(self, field)
                if value is not None and "/" in value:
                    raise ValueError(f"{field} must not contain '/' for an Exact match")
        return self


class GRPCRouteMatch(Model):
    method: GRPCMethodMatch | None = None
    headers: list[HeaderMatch] = Field(default_factory=list, max_length=16)


GRPC_FILTER_FIELDS = {
    "RequestHeaderModifier": "request_header_modifier",
    "ResponseHeaderModifier": "response_header_modifier",
    "RequestMirror": "request_mirror",
    "ExtensionRef": "extension_ref",
}


class GRPCRouteFilter(Model):
    type: Literal["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "ExtensionRef"]
    request_header_modifier: HeaderModifier | None = None
    response_header_modifier: HeaderModifier | None = None
    request_mirror: RequestMirror | None = None
    extension_ref: LocalObjectReference | None = None

    @model_validator(mode="after")
    def _body_matches_type(self) -> "GRPCRouteFilter":
        wanted = GRPC_FILTER_FIELDS[self.type]
        for field in GRPC_FILTER_FIELDS.values():
            present = getattr(self, field) is not None
            if field == wanted and not present:
                raise ValueError(f"filter of type {self.type} needs its {field} body")
            if field != wanted and present:
                raise ValueError(f"{field} must not be set for filter type {self.type}")
        return self


class GRPCBackendRef(BackendObjectReference):
    weight: int = Field(default=1, ge=0, le=1_000_000)
    filters: list[GRPCRouteFilter] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _filters(self) -> "GRPCBackendRef":
        check_filters(self.filters)
        return self


class GRPCRouteRule(Model):
    name: SectionName | None = None  # the CRD's SectionName pattern
    matches: list[GRPCRouteMatch] = Field(default_factory=list, max_length=64)
    filters: list[GRPCRouteFilter] = Field(default_factory=list, max_length=16)
    backend_refs: list[GRPCBackendRef] = Field(default_factory=list, max_length=16)
    session_persistence: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _filters(self) -> "GRPCRouteRule":
        check_filters(self.filters)
        return self


class GRPCRouteSpec(Model):
    parent_refs: list[ParentReference] = Field(default_factory=list, max_length=32)
    hostnames: list[Hostname] = Field(default_factory=list, max_length=16)
    rules: list[GRPCRouteRule] = Field(default_factory=lambda: [GRPCRouteRule()], max_length=16)

    @model_validator(mode="after")
    def _distinct(self) -> "GRPCRouteSpec":
        names = [r.name for r in self.rules if r.name]
        if len(names) != len(set(names)):
            raise ValueError("rules: rule names must be unique within the route")
        return self


class GRPCRoute(Resource):
    GROUP: ClassVar[str] = GATEWAY_GROUP
    KIND: ClassVar[str] = "GRPCRoute"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1",)
    spec: GRPCRouteSpec
