"""Istio networking kinds (networking.istio.io) implemented so far: WorkloadEntry.

A WorkloadEntry in the local mesh is a user's own process listening at a loopback address: it gets an
identity and can be selected by Services, like a VM in a real mesh.
"""

from __future__ import annotations

import ipaddress
from typing import ClassVar

from pydantic import Field, field_validator

from .meta import Model, Resource

ISTIO_NETWORKING_GROUP = "networking.istio.io"


class WorkloadEntrySpec(Model):
    address: str = Field(min_length=1)
    ports: dict[str, int] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    network: str | None = None
    locality: str | None = None
    weight: int | None = Field(default=None, ge=0)
    service_account: str | None = None

    @field_validator("address")
    @classmethod
    def _loopback_address(cls, value: str) -> str:
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address (DNS names are not supported yet)") from None
        if not ip.is_loopback or ip.version != 4:
            raise ValueError(f"{value} is not an IPv4 loopback address; the local mesh runs on 127.0.0.0/8")
        return value

    @field_validator("ports")
    @classmethod
    def _port_range(cls, value: dict[str, int]) -> dict[str, int]:
        for name, port in value.items():
            if not 1 <= port <= 65535:
                raise ValueError(f"port {name!r}: {port} is not between 1 and 65535")
        return value


class WorkloadEntry(Resource):
    GROUP: ClassVar[str] = ISTIO_NETWORKING_GROUP
    KIND: ClassVar[str] = "WorkloadEntry"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1", "v1beta1", "v1alpha3")
    spec: WorkloadEntrySpec
