"""Workloads and Services from the user's resources: pods of Deployments, identities, ports, endpoints."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from waypost.api.core import Deployment, Pod, PodSpec, Service as ServiceResource
from waypost.api.networking import WorkloadEntry, WorkloadGroup, is_ip

from .model import Endpoint, ServicePort, Workload, WorkloadPort

# Kubernetes' "safe" alphabet for generated name suffixes (no vowels, no confusable digits).
_K8S_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def _encode(digest: bytes, length: int) -> str:
    number = int.from_bytes(digest, "big")
    out = []
    for _ in range(length):
        number, rem = divmod(number, len(_K8S_ALPHABET))
        out.append(_K8S_ALPHABET[rem])
    return "".join(out)


def pod_names(deployment: Deployment) -> list[str]:
    """`<deployment>-<template hash>-<suffix>` names, as a ReplicaSet names its pods; deterministic."""
    # A field the template leaves unset is not part of the hash, so adding an optional field to the model
    # (spec.nodeName) does not rename every existing pod.
    unset = {"spec": {"node_name"}} if deployment.spec.template.spec.node_name is None else None
    template = deployment.spec.template.model_dump_json(by_alias=True, exclude=unset)
    rs_hash = _encode(hashlib.sha256(f"{deployment.namespace}/{deployment.name}/{template}".encode()).digest(), 10)
    names = []
    for i in range(deployment.spec.replicas):
        suffix = _encode(hashlib.sha256(f"{rs_hash}/{i}".encode()).digest(), 5)
        names.append(f"{deployment.name}-{rs_hash}-{suffix}")
    return names


def echo_flavor(image: str | None) -> str | None:
    """Which built-in echo server plays this image, or None for a client-only workload.

    Gateway API conformance images `echo-basic` (JSON) and `echo-advanced` (Istio's echo app, Key=Value),
    Istio's test echo app image (`istio-testing/app`, `istio/app`), `waypost/echo` (JSON), and Istio's
    sample external authorizer `ext-authz` (AuthorizationPolicy CUSTOM; see waypost.local.extauthz).
    """
    if not image:
        return None
    repo = image.split("@", 1)[0]
    last = repo.rsplit("/", 1)[-1]
    if ":" in last:
        repo = repo[: len(repo) - len(last) + last.index(":")]
    repo = repo.lower()
    name = repo.rsplit("/", 1)[-1]
    if name == "echo-basic" or repo.endswith("waypost/echo"):
        return "basic"
    if name == "echo-advanced" or repo.endswith("istio-testing/app") or repo.endswith("istio/app"):
        return "advanced"
    # Istio's sample external authorizer (samples/extauthz): registry.istio.io/testing/ext-authz,
    # gcr.io/istio-testing/ext-authz, docker.io/istio/ext-authz, and our own name for it.
    if name == "ext-authz" and (repo.endswith(("testing/ext-authz", "istio/ext-authz", "istio-release/ext-authz", "waypost/ext-authz"))):
        return "ext-authz"
    return None


def pod_spec_ports(spec: PodSpec) -> tuple[WorkloadPort, ...]:
    ports: dict[int, str] = {}
    for container in spec.containers:
        for p in container.ports:
            if p.protocol == "TCP":
                ports.setdefault(p.container_port, p.name or "")
    return tuple(WorkloadPort(name, port) for port, name in sorted(ports.items()))


def pod_image_flavor(spec: PodSpec) -> tuple[str, str | None]:
    for container in spec.containers:
        flavor = echo_flavor(container.image)
        if flavor:
            return container.image or "", flavor
    return (spec.containers[0].image or ""), None


def service_account_of(spec: PodSpec) -> str:
    return spec.service_account_name or spec.service_account or "default"


def port_protocol(name: str | None, app_protocol: str | None, protocol: str) -> str:
    """Istio's protocol selection: appProtocol first, then the port-name prefix, else sniffed (UNKNOWN)."""
    if protocol == "UDP":
        return "UDP"
    if app_protocol:
        ap = app_protocol.lower()
        by_app = {
            "http": "HTTP",
            "http2": "HTTP2",
            "grpc": "GRPC",
            "grpc-web": "GRPC-Web",
            "kubernetes.io/h2c": "HTTP2",
            "kubernetes.io/ws": "HTTP",
            "kubernetes.io/wss": "TLS",
            "https": "HTTPS",
            "tcp": "TCP",
            "tls": "TLS",
            "mongo": "Mongo",
            "redis": "Redis",
            "mysql": "MySQL",
        }
        if ap in by_app:
            return by_app[ap]
    if name:
        prefix = name.lower().split("-", 1)[0]
        if name.lower().startswith("grpc-web"):
            return "GRPC-Web"
        by_name = {
            "http": "HTTP",
            "http2": "HTTP2",
            "grpc": "GRPC",
            "https": "HTTPS",
            "tcp": "TCP",
            "tls": "TLS",
            "mongo": "Mongo",
            "redis": "Redis",
            "mysql": "MySQL",
        }
        if prefix in by_name:
            return by_name[prefix]
    return "UNKNOWN"


def service_ports(service: ServiceResource) -> tuple[ServicePort, ...]:
    out = []
    for p in service.spec.ports:
        protocol = port_protocol(p.name, p.app_protocol, p.protocol)
        if protocol == "UDP":
            continue  # ambient proxies carry TCP only (spec §3.5)
        target = p.target_port if p.target_port is not None else p.port
        out.append(ServicePort(p.name or "", p.port, target, protocol))
    return tuple(out)


def selects(service: ServiceResource, labels: Mapping[str, str]) -> bool:
    selector = service.spec.selector
    if not selector:
        return False  # a Service without selector has manually managed endpoints: none in the local mesh
    return all(labels.get(k) == v for k, v in selector.items())


def resolve_target(port: ServicePort, workload: Workload, entry_ports: Mapping[str, int] | None) -> int | None:
    """The workload port a service port reaches: numeric targetPort, or the named container/WE port."""
    if entry_ports is not None and port.name and port.name in entry_ports:
        return entry_ports[port.name]  # WorkloadEntry `ports` maps service port names to target ports
    if isinstance(port.target_port, int):
        return port.target_port
    if entry_ports is not None:
        return entry_ports.get(port.target_port)
    return workload.port_named(port.target_port)


class WorkloadIndex:
    """Workloads by (namespace, label, value), for selector matching without a scan of every workload per
    Service (which made `build` O(services × workloads)). Each list keeps the input order, so candidates come
    out in the order a scan would have seen them."""

    def __init__(self, workloads: Sequence[Workload]) -> None:
        self.by_namespace: dict[str, list[tuple[Workload, dict[str, str]]]] = {}
        self._by_label: dict[tuple[str, str, str], list[tuple[Workload, dict[str, str]]]] = {}
        for w in workloads:
            if w.is_waypoint:
                continue  # never a Service endpoint
            item = (w, w.label_map)
            self.by_namespace.setdefault(w.namespace, []).append(item)
            for k, v in w.labels:
                self._by_label.setdefault((w.namespace, k, v), []).append(item)

    def selected(self, namespace: str, selector: Mapping[str, str] | None) -> list[Workload]:
        """Workloads of `namespace` whose labels include all of `selector` (none for an empty selector)."""
        if not selector:
            return []
        k, v = next(iter(selector.items()))
        return [w for w, labels in self._by_label.get((namespace, k, v), ()) if all(labels.get(a) == b for a, b in selector.items())]


def endpoints(
    service: ServiceResource,
    ports: tuple[ServicePort, ...],
    workloads: list[Workload] | WorkloadIndex,
    entry_ports: Mapping[str, Mapping[str, int]],
) -> tuple[tuple[int, tuple[Endpoint, ...]], ...]:
    # A Service selects pods (and WorkloadEntries) of its own namespace only.
    index = workloads if isinstance(workloads, WorkloadIndex) else WorkloadIndex(workloads)
    selected = index.selected(service.namespace, service.spec.selector)
    out = []
    for port in ports:
        eps = []
        for w in selected:
            target = resolve_target(port, w, entry_ports.get(w.key) if w.kind == "WorkloadEntry" else None)
            if target is None:
                continue
            eps.append(Endpoint(w.key, w.address, target, hbone=w.captured and w.kind == "Pod"))
        out.append((port.port, tuple(sorted(eps, key=lambda e: (e.address, e.port)))))
    return tuple(out)


def pods_of(resources_pods: list[Pod], deployments: list[Deployment]):
    """(namespace, name, owner, labels, spec) for every pod: bare Pods and Deployment replicas."""
    out = []
    for pod in resources_pods:
        out.append((pod.namespace, pod.name, "", dict(pod.labels), pod.spec))
    for d in deployments:
        labels = dict(d.spec.template.metadata.labels)
        for name in pod_names(d):
            out.append((d.namespace, name, d.name, labels, d.spec.template.spec))
    return sorted(out, key=lambda p: (p[0], p[1]))


AUTO_REGISTRATION_GROUP = "istio.io/autoRegistrationGroup"


def entry_workload_fields(entry: WorkloadEntry, group: WorkloadGroup | None = None) -> tuple[dict[str, str], str, tuple[WorkloadPort, ...]]:
    """Labels, service account and ports of a WorkloadEntry; a member of a WorkloadGroup (annotation
    `istio.io/autoRegistrationGroup`) takes what it does not set itself from the group, as Istio's
    auto-registration builds the entry (pilot/pkg/autoregistration workloadEntryFromGroup): labels are
    the template's, overlaid by the group metadata's, overlaid by the entry's own."""
    labels: dict[str, str] = {}
    ports: dict[str, int] = {}
    account = None
    if group is not None:
        labels.update(group.spec.template.labels)
        if group.spec.metadata is not None:
            labels.update(group.spec.metadata.labels)
        ports.update(group.spec.template.ports)
        account = group.spec.template.service_account
    labels.update(entry.labels)
    labels.update(entry.spec.labels)
    ports.update(entry.spec.ports)
    ordered = tuple(WorkloadPort(n, p) for n, p in sorted(ports.items(), key=lambda kv: kv[1]))
    return labels, entry.spec.service_account or account or "default", ordered


def service_entry_ports(entry) -> tuple[ServicePort, ...]:
    """A ServiceEntry's ports: `protocol` plays appProtocol's part; targetPort defaults to the number."""
    out = []
    for p in entry.spec.ports:
        protocol = port_protocol(p.name, (p.protocol or "").lower() or None, "TCP")
        if protocol != "UDP":
            out.append(ServicePort(p.name, p.number, p.target_port or p.number, protocol))
    return tuple(out)


def service_entry_endpoints(entry, ports: tuple[ServicePort, ...], workloads: list[Workload] | WorkloadIndex, host: str | None = None) -> tuple[tuple[int, tuple[Endpoint, ...]], ...]:
    """STATIC/DNS endpoints (plain TCP to the address) or the workloads its workloadSelector picks."""
    out = []
    # Istio's cluster types: DNS → STRICT_DNS (every address), DNS_ROUND_ROBIN → LOGICAL_DNS (the first).
    resolve = {"DNS": "STRICT_DNS", "DNS_ROUND_ROBIN": "LOGICAL_DNS"}.get(entry.spec.resolution, "")
    selector = (entry.spec.workload_selector or {}).get("labels")
    index = workloads if isinstance(workloads, WorkloadIndex) else WorkloadIndex(workloads)
    selected = index.selected(entry.namespace, selector)
    for port in ports:
        eps = []
        if entry.spec.resolution != "NONE":
            for i, ep in enumerate(entry.spec.endpoints):
                eps.append(Endpoint(f"{entry.namespace}/{entry.name}#{i}", ep.address, ep.ports.get(port.name, int(port.target_port)), hbone=False,
                                    resolve=resolve if not is_ip(ep.address) else ""))
            if resolve and not entry.spec.endpoints:
                # DNS without endpoints: the proxies resolve the hosts themselves (Istio: one endpoint per host).
                for name in [host] if host else entry.spec.hosts:
                    eps.append(Endpoint(f"{entry.namespace}/{entry.name}#{name}", name, int(port.target_port), hbone=False, resolve=resolve))
            for w in selected:
                target = w.port_named(port.name) or int(port.target_port)
                eps.append(Endpoint(w.key, w.address, target, hbone=w.captured and w.kind == "Pod"))
        out.append((port.port, tuple(sorted(eps, key=lambda e: (e.address, e.port)))))
    return tuple(out)

