"""Resources → MeshSnapshot: the one pure entry point of the `mesh` layer."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from waypost.api.core import ConfigMap, Deployment, Namespace, Pod, Service as ServiceResource
from waypost.api.extensions import TrafficExtension, WasmPlugin
from waypost.api.envoyfilter import EnvoyFilter
from waypost.api.telemetry import Telemetry
from waypost.api.gateway import Gateway, GatewayClass
from waypost.api.grpcroute import GRPCRoute
from waypost.api.httproute import HTTPRoute
from waypost.api.l4routes import TCPRoute, TLSRoute
from waypost.api.meshconfig import MESH_CONFIGMAP_KEY, MESH_CONFIGMAP_NAME, MESH_CONFIGMAP_NAMESPACE, MeshConfig, parse_mesh_config
from waypost.api.meta import Resource
from waypost.api.destinationrule import DestinationRule
from waypost.api.networking import ServiceEntry, WorkloadEntry, WorkloadGroup
from waypost.api.virtualservice import VirtualService
from waypost.api.security import AuthorizationPolicy, PeerAuthentication, RequestAuthentication

from .destinations import DestinationRuleIndex
from .http import WithHosts
from . import l4routes, policies as authz, registry, routes as route_attachment, virtualservices, waypoints as binding
from .addresses import AddressPlan
from .model import AuthzProvider, Condition, MeshSnapshot, ResourceStatus, Service, Waypoint, WaypointRef, Workload, entry_host_key

DEFAULT_NODE = "node-0"


def _allocate(
    keys: Sequence[str], previous: Mapping[str, str], make: Callable[[int], str], prefix: str
) -> dict[str, str]:
    """Stable addresses: keys keep the address they had in `previous`; new keys take the lowest free index."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for key in keys:
        addr = previous.get(f"{prefix}/{key}")
        if addr and addr not in taken:
            out[key] = addr
            taken.add(addr)
    index = 0
    for key in keys:
        if key in out:
            continue
        while make(index) in taken:
            index += 1
        out[key] = make(index)
        taken.add(out[key])
    return out


def address_assignments(snapshot: MeshSnapshot) -> dict[str, str]:
    """The addresses of a snapshot in the form `build(previous=...)` accepts, to keep them across reloads."""
    return _assignments(snapshot.workloads, snapshot.services, snapshot.waypoints, dict(snapshot.node_addresses))


def _assignments(workloads: Iterable[Workload], services: Iterable[Service], waypoints: Iterable[Waypoint], nodes: Mapping[str, str]) -> dict[str, str]:
    """Pod, Service, waypoint and (non-default) node addresses by `kind/key` (`address_assignments`)."""
    out = {f"pod/{w.key}": w.address for w in workloads if w.kind == "Pod"}
    out.update({f"svc/{s.key}": s.vip for s in services})
    out.update({f"waypoint/{w.ref}": w.address for w in waypoints})
    out.update({f"node/{name}": address for name, address in nodes.items() if name != DEFAULT_NODE})
    return out


def mesh_config_of(resources: Sequence[Resource], base: MeshConfig | None = None) -> MeshConfig:
    """The MeshConfig in effect: `base` (from `up --mesh-config`) overlaid with the `istio` ConfigMap's.

    The loader has validated the ConfigMap's MeshConfig (an invalid one never gets here)."""
    mesh = base or MeshConfig()
    for r in resources:
        if isinstance(r, ConfigMap) and (r.namespace, r.name) == (MESH_CONFIGMAP_NAMESPACE, MESH_CONFIGMAP_NAME):
            text = r.data.get(MESH_CONFIGMAP_KEY)
            if text is not None:
                mesh = mesh.overlay(parse_mesh_config(text))
    return mesh


def resolve_authz_providers(mesh: MeshConfig, services: Sequence[Service]) -> tuple[AuthzProvider, ...]:
    """Each ext_authz provider's `service` looked up as istiod's LookupCluster does (pilot/pkg/model/telemetry_logging.go).

    `[<Namespace>/]<Hostname>`: a bare hostname must name exactly one namespace's service."""
    out = []
    for provider in mesh.extension_providers:
        config = provider.ext_authz
        if config is None:
            continue
        grpc = provider.envoy_ext_authz_grpc is not None
        namespace, _, host = config.service.rpartition("/")
        found = [s for s in services if s.fqdn == host and (not namespace or s.namespace == namespace)]
        error = None
        if not found:
            error = f"could not find service {config.service} in the service registry"
        elif len(found) > 1:
            namespaces = sorted(s.namespace for s in found)
            error = f"found {host} in multiple namespaces {namespaces}, specify the namespace explicitly in the format of <Namespace>/<Hostname>"
        service = found[0] if len(found) == 1 else None
        out.append(
            AuthzProvider(
                name=provider.name, grpc=grpc, config=config, hostname=host, port=config.port,
                service=service.key if service is not None and error is None else None,
                error=f"failed to parse extension provider {provider.name!r}: {error}" if error else None,
            )
        )
    return tuple(out)

T = TypeVar("T")


def _same(a: Any, b: Any) -> bool:
    """The same object; for lists and tuples, the same objects in the same order; for a value (a string, the
    MeshConfig), equal."""
    if a is b:
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(x is y for x, y in zip(a, b))
    if isinstance(a, (list, tuple, dict)) or isinstance(b, (list, tuple, dict)):
        return False  # a mapping of services or waypoints: the same object only (comparing them costs as much as the work)
    return a == b  # a name, the MeshConfig


def interned(values: Iterable[T], earlier: Mapping[Any, T] | None, key: Callable[[T], Any]) -> tuple[T, ...]:
    """`values`, each replaced by the earlier value of the same key (in `earlier`) when the two are equal: the
    next change then compares them (translation's and the status documents' read tracking) by identity,
    one cheap `is` instead of a deep comparison in every place that reads them."""
    if not earlier:
        return tuple(values)
    out = []
    for value in values:
        before = earlier.get(key(value))
        out.append(before if before is not None and (before is value or before == value) else value)
    return tuple(out)


def _by_kind(resources: Sequence[Resource]) -> Callable[[type], list]:
    """`of(cls)`: the resources that are `cls` instances, in input order, from one pass over the resources
    (a scan per kind was 19 scans of the whole mesh per build)."""
    by_type: dict[type, list] = {}
    for r in resources:
        by_type.setdefault(type(r), []).append(r)

    def of(cls: type) -> list:
        kinds = [t for t in by_type if issubclass(t, cls)]
        if len(kinds) == 1:
            return list(by_type[kinds[0]])
        if not kinds:
            return []
        return [r for r in resources if isinstance(r, cls)]  # several types: keep their interleaved order

    return of


@dataclass(frozen=True)
class _Registry:
    """The part of a build that depends only on namespaces, gateways, workloads and services (not on routes
    or policies): what `build` may take unchanged from the previous snapshot when those inputs are the same
    objects (a route or policy change leaves them all alone)."""

    inputs: tuple  # the resources it was built from, by kind (kept: identity is what is compared)
    previous: Mapping[str, str]  # the address assignments it was given
    assigned: Mapping[str, str]  # and those it made (`address_assignments` of its result)
    plan: AddressPlan
    namespace_labels: dict[str, dict[str, str]]
    waypoint_gateways: dict[WaypointRef, Gateway]
    waypoints: dict[WaypointRef, Waypoint]
    workloads: list[Workload]
    services: dict[str, Service]
    statuses: list[ResourceStatus]
    service_labels: dict[str, dict[str, str]]
    nodes: tuple[str, ...]  # the default node first (it has the outbound capture), then the others pods name, sorted
    node_addresses: dict[str, str]  # node -> its ztunnel's address

    def same_inputs(self, inputs: tuple, previous: Mapping[str, str], plan: AddressPlan) -> bool:
        return (
            self.plan == plan
            and len(self.inputs) == len(inputs)
            and all(len(a) == len(b) and all(x is y for x, y in zip(a, b)) for a, b in zip(self.inputs, inputs))
            and (previous == self.assigned or previous == self.previous)  # either way every address stays
        )


REGISTRY_KINDS = (Namespace, GatewayClass, Gateway, Pod, Deployment, WorkloadEntry, WorkloadGroup, ServiceResource, ServiceEntry)


def _registry(of: Callable[[type], list], plan: AddressPlan, previous: Mapping[str, str], inputs: tuple) -> _Registry:
    namespace_labels: dict[str, dict[str, str]] = {ns.name: dict(ns.labels) for ns in of(Namespace)}
    ns_labels = lambda ns: namespace_labels.get(ns, {})  # noqa: E731
    statuses: list[ResourceStatus] = []

    # Waypoints: Gateways of a class handled by the mesh controller.
    classes = binding.waypoint_classes(of(GatewayClass))
    waypoint_gateways = {
        WaypointRef(g.namespace, g.name): g for g in of(Gateway) if g.spec.gateway_class_name in classes
    }
    wp_addresses = _allocate([str(k) for k in sorted(waypoint_gateways)], previous, plan.waypoint, "waypoint")
    waypoints: dict[WaypointRef, Waypoint] = {}
    for ref, gateway in sorted(waypoint_gateways.items()):
        waypoints[ref] = Waypoint(
            namespace=ref.namespace,
            name=ref.name,
            address=wp_addresses[str(ref)],
            service_account=binding.service_account(gateway),
            traffic_for=binding.traffic_for(gateway, classes.get(gateway.spec.gateway_class_name)),
            ready=True,
        )
        statuses.append(_gateway_status(gateway, waypoints[ref]))

    def resolve(kind: str, namespace: str, labels: Mapping[str, str]) -> binding.Binding:
        return binding.resolve(
            kind=kind,
            namespace=namespace,
            labels=labels,
            namespace_labels=ns_labels(namespace),
            waypoints=waypoints,
            gateways=waypoint_gateways,
            all_namespace_labels=namespace_labels,
        )

    # Workloads: pods of Deployments, bare Pods, WorkloadEntries.
    pods = registry.pods_of(of(Pod), of(Deployment))
    pod_addresses = _allocate([f"{ns}/{name}" for ns, name, *_ in pods], previous, plan.pod, "pod")
    workloads: list[Workload] = []
    for ns, name, owner, labels, spec in pods:
        address = pod_addresses[f"{ns}/{name}"]
        captured = binding.is_enrolled(ns_labels(ns), labels)
        image, flavor = registry.pod_image_flavor(spec)
        workload_binding = resolve("Pod", ns, labels) if captured else binding.Binding(None, None)
        workloads.append(
            Workload(
                kind="Pod",
                namespace=ns,
                name=name,
                owner=owner,
                labels=tuple(sorted(labels.items())),
                service_account=registry.service_account_of(spec),
                address=address,
                app_address=plan.inside_of(address) if captured else address,
                captured=captured,
                node=spec.node_name or DEFAULT_NODE,
                ports=registry.pod_spec_ports(spec),
                image=image,
                echo=flavor,
                waypoint=workload_binding.waypoint,
            )
        )
    entry_ports: dict[str, dict[str, int]] = {}
    groups = {(g.namespace, g.name): g for g in of(WorkloadGroup)}
    members: dict[tuple[str, str], list[str]] = {}
    for entry in sorted(of(WorkloadEntry), key=lambda e: (e.namespace, e.name)):
        group_name = entry.metadata.annotations.get(registry.AUTO_REGISTRATION_GROUP)
        group = groups.get((entry.namespace, group_name)) if group_name else None
        if group is not None:
            members.setdefault((entry.namespace, group_name), []).append(entry.name)
        entry_conditions: list[Condition] = []
        if group is None and group_name:
            entry_conditions.append(Condition(
                "Accepted", "False", "WorkloadGroupNotFound",
                f"annotation {registry.AUTO_REGISTRATION_GROUP}: no WorkloadGroup {entry.namespace}/{group_name}; the entry is used as written",
            ))
        labels, sa, ports = registry.entry_workload_fields(entry, group)
        captured = binding.is_enrolled(ns_labels(entry.namespace), labels)
        entry_binding = resolve("WorkloadEntry", entry.namespace, labels) if captured else binding.Binding(None, None)
        workloads.append(
            Workload(
                kind="WorkloadEntry",
                namespace=entry.namespace,
                name=entry.name,
                owner="",
                labels=tuple(sorted(labels.items())),
                service_account=sa,
                address=entry.spec.address,
                app_address=entry.spec.address,
                captured=captured,
                node=DEFAULT_NODE,
                ports=ports,
                image="",
                echo=None,
                waypoint=entry_binding.waypoint,
            )
        )
        entry_ports[f"{entry.namespace}/{entry.name}"] = {p.name: p.port for p in ports}
        if entry_binding.condition is not None:
            entry_conditions.append(entry_binding.condition)
        if entry_conditions:
            statuses.append(ResourceStatus("WorkloadEntry", entry.namespace, entry.name, tuple(entry_conditions)))

    for (namespace, name), group in sorted(groups.items()):
        names = members.get((namespace, name), [])
        message = f"{len(names)} WorkloadEntries in the group" + (": " + ", ".join(names) if names else "")
        statuses.append(ResourceStatus("WorkloadGroup", namespace, name, (Condition("Accepted", "True", "Accepted", message),)))

    # Services: VIPs, ports, endpoints and the service waypoint binding.
    service_resources = sorted(of(ServiceResource), key=lambda s: (s.namespace, s.name))
    entries = sorted(of(ServiceEntry), key=lambda e: (e.namespace, e.name))
    vips = _allocate(
        [f"{s.namespace}/{s.name}" for s in service_resources]
        + [entry_host_key(e.namespace, e.name, e.spec.hosts, i) for e in entries if not e.spec.addresses for i in range(len(e.spec.hosts))],
        previous, plan.vip, "svc",
    )
    services: dict[str, Service] = {}
    workload_index = registry.WorkloadIndex(workloads)
    for svc in service_resources:
        ports = registry.service_ports(svc)
        service_binding = resolve("Service", svc.namespace, svc.labels)
        key = f"{svc.namespace}/{svc.name}"
        services[key] = Service(
            namespace=svc.namespace,
            name=svc.name,
            vip=vips[key],
            ports=ports,
            waypoint=service_binding.waypoint,
            endpoints=registry.endpoints(svc, ports, workload_index, entry_ports),
        )
        if service_binding.condition is not None:
            statuses.append(ResourceStatus("Service", svc.namespace, svc.name, (service_binding.condition,)))
    for entry in entries:
        ports = registry.service_entry_ports(entry)
        entry_binding = resolve("Service", entry.namespace, entry.labels)
        for i, host in enumerate(entry.spec.hosts):  # one mesh service per host, as in Istio
            key = entry_host_key(entry.namespace, entry.name, entry.spec.hosts, i)
            services[key] = Service(
                namespace=entry.namespace,
                name=entry.name,
                vip=entry.spec.addresses[0].split("/")[0] if entry.spec.addresses else vips[key],
                ports=ports,
                waypoint=entry_binding.waypoint,
                endpoints=registry.service_entry_endpoints(entry, ports, workload_index, host if len(entry.spec.hosts) > 1 else None),
                kind="ServiceEntry",
                hostname=host,
                key_suffix=f"/{host}" if i else "",
                resolution=entry.spec.resolution,
            )
        entry_conditions = [entry_binding.condition] if entry_binding.condition is not None else []
        if entry_binding.waypoint is None and any(h.startswith("*") for h in entry.spec.hosts):
            # Istio's status for a wildcard entry nobody can serve (only a waypoint resolves per request).
            entry_conditions.append(Condition("istio.io/WaypointMissing", "True", "NoWaypointForWildcardService",
                                              "a wildcard ServiceEntry needs a waypoint: bind it with istio.io/use-waypoint"))
        if entry_conditions:
            statuses.append(ResourceStatus("ServiceEntry", entry.namespace, entry.name, tuple(entry_conditions)))

    service_labels = {
        **{f"{s.namespace}/{s.name}": dict(s.labels) for s in service_resources},
        **{entry_host_key(e.namespace, e.name, e.spec.hosts, i): dict(e.labels) for e in entries for i in range(len(e.spec.hosts))},
    }
    # Each node's ztunnel keeps its address while the node exists (a node added later takes a free one), so
    # adding a node does not move the others' ztunnels. The default node's is the plan's first.
    other_nodes = sorted({w.node for w in workloads} - {DEFAULT_NODE})
    node_addresses = {DEFAULT_NODE: plan.ztunnel(0), **_allocate(other_nodes, previous, lambda i: plan.ztunnel(i + 1), "node")}
    assigned = _assignments(workloads, services.values(), waypoints.values(), node_addresses)
    return _Registry(inputs, dict(previous), assigned, plan, namespace_labels, waypoint_gateways, waypoints, workloads, services, statuses,
                     service_labels, (DEFAULT_NODE, *other_nodes), node_addresses)


def build(
    resources: Sequence[Resource], plan: AddressPlan, previous: Mapping[str, str] | None = None,
    mesh_config: MeshConfig | None = None, reuse: MeshSnapshot | None = None,
) -> MeshSnapshot:
    """The mesh model of `resources`. `previous`: address assignments to keep; `reuse`: an earlier snapshot
    whose memos may be reused where their inputs did not change (the result is the same without it)."""
    previous = previous or {}
    of = _by_kind(resources)
    mesh = mesh_config_of(resources, mesh_config)
    root_namespace = mesh.effective_root_namespace
    inputs = tuple(tuple(of(kind)) for kind in REGISTRY_KINDS)
    earlier = reuse.registry_memo if reuse is not None else None
    if earlier is not None and earlier.same_inputs(inputs, previous, plan):
        reg = earlier
    else:
        reg = _registry(of, plan, previous, inputs)
        # The previous snapshot's equal values, as the very objects: the rest of this build, and the next
        # one that reuses this registry, then compare them by identity.
        kept_services = interned(reg.services.values(), reuse and reuse._services_by_key, lambda s: s.key)
        reg = replace(reg, workloads=list(interned(reg.workloads, reuse and reuse._workloads_by_key, lambda w: w.key)),
                      services={s.key: s for s in kept_services})
    namespace_labels, waypoint_gateways, waypoints = reg.namespace_labels, reg.waypoint_gateways, reg.waypoints
    workloads, services = reg.workloads, reg.services
    statuses: list[ResourceStatus] = list(reg.statuses)

    lookup = WithHosts(services)  # one set of service indexes for the attachment steps
    routes, route_statuses, rule_memo = route_attachment.attach(
        sorted([*of(HTTPRoute), *of(GRPCRoute)], key=lambda r: (r.KIND, r.namespace, r.name)),
        lookup,
        waypoint_gateways,
        namespace_labels,
        reg.service_labels,
        reuse.rule_memo if reuse is not None else None,
    )
    statuses.extend(route_statuses)
    l4, l4_statuses = l4routes.attach(
        sorted([*of(TCPRoute), *of(TLSRoute)], key=lambda r: (r.KIND, r.namespace, r.name)),
        lookup,
        {(r.service, r.port) for r in routes},
    )
    statuses.extend(l4_statuses)
    destination_rules = tuple(sorted(of(DestinationRule), key=lambda d: (d.metadata.creation_timestamp or "", d.namespace, d.name)))
    # VirtualServices route the service ports no Gateway API route routes (waypost's mixing rule).
    rule_index = DestinationRuleIndex(destination_rules, root_namespace)
    vs_routes, vs_l4, vs_statuses = virtualservices.attach(
        of(VirtualService), lookup,
        {(r.service, r.port): f"{r.entries[0].kind} {r.entries[0].route}" for r in routes if r.entries},
        {(r.service, r.port): f"{r.kind} {r.entries[0].route}" for r in l4 if r.entries},
        rule_index,
    ) if of(VirtualService) else ((), (), ())
    routes = tuple(sorted((*routes, *vs_routes), key=lambda r: (r.service, r.port)))
    l4 = tuple(sorted((*l4, *vs_l4), key=lambda r: (r.service, r.port)))
    statuses.extend(vs_statuses)
    earlier_statuses = reuse.status_memo if reuse is not None and reuse.status_memo is not None else {}
    status_memo: dict[str, tuple[tuple, list]] = {}

    def statuses_of(name: str, compute: Callable, *args) -> list:
        """`compute(*args)`, or the previous build's result when every argument is the same object (a
        policy status reads only its policies, the waypoints and the services)."""
        before = earlier_statuses.get(name)
        if before is not None and len(before[0]) == len(args) and all(_same(x, y) for x, y in zip(before[0], args)):
            result = before[1]
        else:
            result = list(compute(*args))
        status_memo[name] = (args, result)
        return result

    policies = sorted(of(AuthorizationPolicy), key=lambda p: (p.namespace, p.name))
    statuses.extend(statuses_of("authz", authz.statuses, policies, waypoints, services, root_namespace))
    extensions = sorted([*of(WasmPlugin), *of(TrafficExtension)], key=lambda e: (e.namespace, e.name, e.KIND))
    statuses.extend(statuses_of("extensions", authz.extension_statuses, extensions, waypoints, services, root_namespace))
    telemetries = sorted(of(Telemetry), key=lambda t: (t.namespace, t.name))
    statuses.extend(statuses_of("telemetry", authz.telemetry_statuses, telemetries, waypoints, services, root_namespace, mesh))
    def kept(field: str, values: Iterable) -> tuple:
        """`values` as a tuple: the previous snapshot's very tuple when it holds the same objects in the same
        order, so that the next Diff and the snapshot's indexes see "unchanged" by identity (`inherit_indexes`)."""
        values = tuple(values)
        before = getattr(reuse, field) if reuse is not None else None
        return before if before is not None and _same(before, values) else values

    snapshot = MeshSnapshot(
        plan=plan,
        nodes=reg.nodes,
        node_addresses=tuple(sorted(reg.node_addresses.items())),
        workloads=kept("workloads", workloads),
        services=kept("services", services.values()),
        waypoints=kept("waypoints", waypoints.values()),
        routes=kept("routes", interned(routes, reuse and reuse._routes_by_port, lambda r: (r.service, r.port))),
        statuses=kept("statuses", interned(
            sorted(statuses, key=lambda s: (s.kind, s.namespace, s.name)), reuse and reuse._statuses_by_name, lambda s: (s.kind, s.namespace, s.name)
        )),
        l4routes=kept("l4routes", interned(l4, reuse and reuse._l4routes_by_port, lambda r: (r.service, r.port))),
        authorization_policies=kept("authorization_policies", policies),
        request_authentications=tuple(sorted(of(RequestAuthentication), key=lambda p: (p.namespace, p.name))),
        root_namespace=root_namespace,
        authz_providers=resolve_authz_providers(mesh, tuple(services.values())),
        extensions=tuple(extensions),
        telemetries=tuple(telemetries),
        envoy_filters=tuple(sorted(of(EnvoyFilter), key=lambda f: (f.namespace, f.name))),
        # Istio's conflict rule for PeerAuthentications of one scope: the oldest wins.
        destination_rules=destination_rules,
        destination_rule_index=rule_index,
        peer_authentications=tuple(sorted(of(PeerAuthentication), key=lambda p: (p.metadata.creation_timestamp or "", p.namespace, p.name))),
        mesh_config=mesh,
        rule_memo=rule_memo,
        registry_memo=reg,
        status_memo=status_memo,
    )
    if reuse is not None:
        snapshot.inherit_indexes(reuse)
    return snapshot


def _gateway_status(gateway: Gateway, waypoint: Waypoint) -> ResourceStatus:
    conditions = [
        Condition("Accepted", "True", "Accepted", "Resource accepted"),
        Condition("Programmed", "True", "Programmed", f"Resource programmed, assigned to service(s) {waypoint.address}:15008"),
    ]
    listener_conditions = []
    for listener in gateway.spec.listeners:
        if listener.port == 15008 and listener.protocol == "HBONE":
            listener_conditions.append((listener.name, (Condition("Accepted", "True", "Accepted", "No errors found"),)))
        else:
            listener_conditions.append(
                (
                    listener.name,
                    (Condition("Accepted", "False", "UnsupportedProtocol", 'Expected a single listener on port 15008 with protocol "HBONE"'),),
                )
            )
    return ResourceStatus("Gateway", gateway.namespace, gateway.name, tuple(conditions), tuple(listener_conditions))
