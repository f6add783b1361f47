"""Kubernetes core and apps kinds: Namespace, ServiceAccount, Service, ConfigMap, Pod, Deployment.

Only the fields a mesh needs are modelled; container specs accept everything else a real manifest carries
(resources, probes, volumes...) so users can apply their manifests unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from .meta import LabelSelector, LooseModel, Model, ObjectMeta, Resource


class Namespace(Resource):
    KIND: ClassVar[str] = "Namespace"
    NAMESPACED: ClassVar[bool] = False
    spec: dict[str, Any] | None = None


class ServiceAccount(Resource):
    KIND: ClassVar[str] = "ServiceAccount"
    secrets: list[dict[str, Any]] | None = None
    image_pull_secrets: list[dict[str, Any]] | None = None
    automount_service_account_token: bool | None = None


class ServicePort(Model):
    name: str | None = None
    port: int = Field(ge=1, le=65535)
    target_port: int | str | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    app_protocol: str | None = None
    node_port: int | None = None

    @model_validator(mode="after")
    def _target_port_range(self) -> "ServicePort":
        if isinstance(self.target_port, int) and not 1 <= self.target_port <= 65535:
            raise ValueError("targetPort must be between 1 and 65535")
        return self


class ServiceSpec(LooseModel):
    selector: dict[str, str] | None = None
    ports: list[ServicePort] = Field(default_factory=list)
    type: Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"] = "ClusterIP"
    cluster_ip: str | None = Field(default=None, alias="clusterIP")

    @model_validator(mode="after")
    def _unique_ports(self) -> "ServiceSpec":
        seen: set[tuple[int, str]] = set()
        names: set[str] = set()
        for p in self.ports:
            if (p.port, p.protocol) in seen:
                raise ValueError(f"duplicate port {p.port}/{p.protocol}")
            seen.add((p.port, p.protocol))
            if len(self.ports) > 1 and not p.name:
                raise ValueError("every port needs a name when a Service has more than one port")
            if p.name:
                if p.name in names:
                    raise ValueError(f"duplicate port name {p.name!r}")
                names.add(p.name)
        return self


class Service(Resource):
    KIND: ClassVar[str] = "Service"
    spec: ServiceSpec = Field(default_factory=ServiceSpec)


class ConfigMap(Resource):
    """Only one ConfigMap means something to the mesh: `istio` in `istio-system` (MeshConfig, see meshconfig)."""

    KIND: ClassVar[str] = "ConfigMap"
    data: dict[str, str] = Field(default_factory=dict)
    binary_data: dict[str, str] = Field(default_factory=dict)
    immutable: bool | None = None


class ContainerPort(LooseModel):
    container_port: int = Field(ge=1, le=65535)
    name: str | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


class Container(LooseModel):
    name: str = Field(min_length=1)
    image: str | None = None
    ports: list[ContainerPort] = Field(default_factory=list)
    env: list[dict[str, Any]] = Field(default_factory=list)


class PodSpec(LooseModel):
    containers: list[Container] = Field(min_length=1)
    service_account_name: str | None = None
    service_account: str | None = None  # deprecated alias Kubernetes still honours
    hostname: str | None = None
    # The node the pod runs on. Kubernetes' scheduler sets it; in the local mesh the manifest may name one, and
    # each distinct node gets its own ztunnel (a DNS subdomain, as Kubernetes validates node names).
    node_name: str | None = Field(default=None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class Pod(Resource):
    KIND: ClassVar[str] = "Pod"
    spec: PodSpec


class PodTemplate(LooseModel):
    metadata: ObjectMeta | None = None
    spec: PodSpec


class PodTemplateMeta(LooseModel):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class DeploymentTemplate(LooseModel):
    metadata: PodTemplateMeta = Field(default_factory=PodTemplateMeta)
    spec: PodSpec


class DeploymentSpec(LooseModel):
    replicas: int = Field(default=1, ge=0, le=10000)
    selector: LabelSelector
    template: DeploymentTemplate

    @model_validator(mode="after")
    def _selector_matches_template(self) -> "DeploymentSpec":
        # The API server rejects this too: "selector does not match template labels".
        if not self.selector.match_labels and not self.selector.match_expressions:
            raise ValueError("selector: empty selector is invalid for a Deployment")
        if not self.selector.matches(self.template.metadata.labels):
            raise ValueError("selector does not match template labels")
        return self


class Deployment(Resource):
    GROUP: ClassVar[str] = "apps"
    KIND: ClassVar[str] = "Deployment"
    spec: DeploymentSpec
