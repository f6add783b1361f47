"""Istio networking kinds (networking.istio.io) implemented so far: WorkloadEntry, WorkloadGroup, ServiceEntry.

A WorkloadEntry in the local mesh is a user's own process listening at a loopback address: it gets an
identity and can be selected by Services, like a VM in a real mesh.
"""

from __future__ import annotations

import ipaddress
import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

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
    def _loopback(cls, value: str) -> str:
        return cls._loopback_address(value)

    @staticmethod
    def _loopback_address(value: str) -> str:
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


class ServiceEntryPort(Model):
    number: int = Field(ge=1, le=65535)
    protocol: str | None = Field(default=None, max_length=256)
    name: str = Field(max_length=256)
    target_port: int | None = Field(default=None, ge=1, le=65535)

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value:
            raise ValueError("port name must be set (Istio's ValidatePortName)")
        return value


_DNS_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*\.?$")


class ServiceEntryEndpoint(WorkloadEntrySpec):
    """A ServiceEntry endpoint (istio/api: `repeated WorkloadEntry endpoints`). With DNS resolution its
    address may be a host name, which the proxies resolve (Envoy's STRICT_DNS or LOGICAL_DNS clusters);
    the ServiceEntry's checks decide which form its resolution allows."""

    @field_validator("address")
    @classmethod
    def _loopback(cls, value: str) -> str:
        if is_ip(value):
            return WorkloadEntrySpec._loopback_address(value)
        if not _DNS_NAME.match(value):
            raise ValueError(f"{value!r} is neither an IP address nor a DNS name")
        return value


class ServiceEntrySpec(Model):
    hosts: list[str] = Field(min_length=1, max_length=256)  # one mesh service per host
    addresses: list[str] = Field(default_factory=list)
    ports: list[ServiceEntryPort] = Field(default_factory=list, max_length=256)
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] = "MESH_EXTERNAL"
    resolution: Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"] = "NONE"
    endpoints: list[ServiceEntryEndpoint] = Field(default_factory=list)
    workload_selector: dict[str, dict[str, str]] | None = None
    export_to: list[str] = Field(default_factory=list)
    subject_alt_names: list[str] = Field(default_factory=list)

    @field_validator("addresses")
    @classmethod
    def _vips(cls, values: list[str]) -> list[str]:
        for v in values:
            ip = ipaddress.ip_address(v.split("/")[0])
            if not ip.is_loopback:
                raise ValueError(f"{v}: the local mesh can only give a ServiceEntry a loopback address")
        return values

    @model_validator(mode="after")
    def _istio_validation(self) -> "ServiceEntrySpec":
        if self.endpoints and self.workload_selector:
            raise ValueError("only one of endpoints or workloadSelector may be set")
        # Istio's ValidateServiceEntry rules for each resolution.
        if self.resolution == "DYNAMIC_DNS":
            # Resolved per request from the Host header, by the waypoint's dynamic forward proxy.
            if self.endpoints or self.workload_selector:
                raise ValueError("no endpoints should be provided for resolution type DYNAMIC_DNS")
            if any(not h.startswith("*.") for h in self.hosts):
                raise ValueError("DYNAMIC_DNS resolves the names a wildcard host (*.domain) matches: every host must be a wildcard")
            for p in self.ports:
                if (p.protocol or "").upper() not in ("HTTP", ""):
                    raise ValueError(f"ports: {p.name}: DYNAMIC_DNS supports HTTP ports only ({p.protocol} is not supported yet)")
        if self.resolution == "STATIC":
            for e in self.endpoints:
                if not is_ip(e.address):
                    raise ValueError(f"endpoint address {e.address!r} is not a valid IP address (resolution STATIC)")
        if self.resolution in ("DNS", "DNS_ROUND_ROBIN"):
            if self.workload_selector:
                raise ValueError(f"workloadSelector needs resolution STATIC, not {self.resolution}")
            if not self.endpoints and any(h.startswith("*") for h in self.hosts):
                raise ValueError("a wildcard host cannot be resolved: give endpoints, or use another resolution")
            if self.resolution == "DNS_ROUND_ROBIN" and len(self.endpoints) > 1:
                raise ValueError("there must only be 0 or 1 endpoint for resolution DNS_ROUND_ROBIN")
        if self.resolution == "NONE" and self.endpoints:
            raise ValueError("resolution NONE does not take endpoints")
        names = [p.name for p in self.ports]
        if len(names) != len(set(names)):
            raise ValueError("ports: names must be unique")
        if len(self.hosts) != len(set(self.hosts)):
            raise ValueError("hosts: each host may appear once")
        if "*" in self.hosts:
            raise ValueError("hosts: hostname cannot be wildcard")
        numbers = [p.number for p in self.ports]
        if len(numbers) != len(set(numbers)):
            raise ValueError("ports: port number cannot be duplicated")
        if len(self.hosts) > 1 and self.addresses:
            # Istio would give every host every address; on loopback each host needs a VIP of its own.
            raise ValueError("addresses with several hosts: the local mesh gives each host its own address, so give one host per ServiceEntry")
        return self


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class ServiceEntry(Resource):
    GROUP: ClassVar[str] = ISTIO_NETWORKING_GROUP
    KIND: ClassVar[str] = "ServiceEntry"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1", "v1beta1", "v1alpha3")
    spec: ServiceEntrySpec


class WorkloadGroupMetadata(Model):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class WorkloadGroupTemplate(Model):
    """A WorkloadEntry without its address: what every member of the group shares."""

    address: str | None = Field(default=None, max_length=256)
    ports: dict[str, int] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    network: str | None = Field(default=None, max_length=2048)
    locality: str | None = Field(default=None, max_length=2048)
    weight: int | None = Field(default=None, ge=0, le=4294967295)
    service_account: str | None = Field(default=None, max_length=253)

    @field_validator("ports")
    @classmethod
    def _port_range(cls, value: dict[str, int]) -> dict[str, int]:
        return WorkloadEntrySpec._port_range(value)

    @field_validator("address")
    @classmethod
    def _no_address(cls, value: str | None) -> str | None:
        # Istio's ValidateWorkloadGroup: each member brings its own address.
        if value:
            raise ValueError("address must not be set in a WorkloadGroup template: each WorkloadEntry of the group has its own")
        return value


class WorkloadGroupSpec(Model):
    metadata: WorkloadGroupMetadata | None = None
    template: WorkloadGroupTemplate
    probe: dict | None = None

    @field_validator("probe")
    @classmethod
    def _probe(cls, value: dict | None) -> dict | None:
        if value is not None:
            raise ValueError("probe is not supported yet: the local mesh does not health-check the members of a WorkloadGroup")
        return value


class WorkloadGroup(Resource):
    """A template for WorkloadEntries. Istio creates an entry per VM that registers with the group and
    marks it with the annotation `istio.io/autoRegistrationGroup`; in the local mesh the user writes those
    entries, and waypost fills in what the group gives them (mesh.registry.group_member_fields)."""

    GROUP: ClassVar[str] = ISTIO_NETWORKING_GROUP
    KIND: ClassVar[str] = "WorkloadGroup"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1", "v1beta1", "v1alpha3")
    spec: WorkloadGroupSpec
