"""TCPRoute and TLSRoute (gateway.networking.k8s.io). Source: the v1 CRDs in shared/crds.

In v1 both have exactly one rule with 1–16 backendRefs; TLSRoute `hostnames` are SNI values (wildcard
labels allowed, IPs not). The v1alpha2 form is accepted with the same schema.
"""

from __future__ import annotations

import ipaddress
import re
from typing import ClassVar

from pydantic import Field, field_validator

from .httproute import GATEWAY_GROUP, BackendObjectReference, ParentReference, SectionName
from .meta import Model, Resource

_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class L4BackendRef(BackendObjectReference):
    weight: int = Field(default=1, ge=0, le=1_000_000)


class L4RouteRule(Model):
    name: SectionName | None = None  # the CRD's SectionName: 1-253 chars, an RFC 1123 subdomain
    backend_refs: list[L4BackendRef] = Field(min_length=1, max_length=16)


class TCPRouteSpec(Model):
    parent_refs: list[ParentReference] = Field(default_factory=list, max_length=32)
    rules: list[L4RouteRule] = Field(min_length=1, max_length=1)


class TCPRoute(Resource):
    GROUP: ClassVar[str] = GATEWAY_GROUP
    KIND: ClassVar[str] = "TCPRoute"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1", "v1alpha2")
    spec: TCPRouteSpec


class TLSRouteSpec(Model):
    parent_refs: list[ParentReference] = Field(default_factory=list, max_length=32)
    hostnames: list[str] = Field(default_factory=list, max_length=1024, validate_default=True)
    rules: list[L4RouteRule] = Field(min_length=1, max_length=1)

    @field_validator("hostnames")
    @classmethod
    def _sni(cls, values: list[str], info) -> list[str]:
        # The v1 and v1alpha3 CRDs require 1–1024 hostnames; v1alpha2's were optional (a TLSRoute without
        # hostnames then acts like a TCPRoute, catalogue C61). The loader passes the apiVersion as context.
        version = (info.context or {}).get("api_version", "")
        if not values and version and not version.endswith("/v1alpha2"):
            raise ValueError(f"at least one hostname is required ({version}; v1alpha2 allowed none)")
        for value in values:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                pass
            else:
                raise ValueError(f"{value!r}: IP addresses are not valid SNI hostnames")
            if len(value) > 253 or not _HOSTNAME.match(value):
                raise ValueError(f"{value!r} is not a valid hostname (a leading '*.' wildcard label is allowed)")
        return values


class TLSRoute(Resource):
    GROUP: ClassVar[str] = GATEWAY_GROUP
    KIND: ClassVar[str] = "TLSRoute"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1", "v1alpha3", "v1alpha2")
    spec: TLSRouteSpec

