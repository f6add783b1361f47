"""AuthorizationPolicy attachment: which proxy enforces which policy, and the status conditions.

Shared/spec/istio-ambient-semantics.md §4.1–§4.6 (Istio `pilot/pkg/model/policyattachment.go`,
`pilot/pkg/serviceregistry/ambient/authorization.go`):
- policies with `targetRefs` are enforced by waypoints only: Gateway (same namespace, that waypoint),
  GatewayClass `istio-waypoint` (root namespace only; every waypoint), Service (same namespace, the
  Service's chains in its waypoint). A target without a waypoint is enforced nowhere (status says so);
- policies without `targetRefs` are enforced by the destination ztunnel only: selector → matching
  workloads of the policy's namespace (any namespace when the policy is in the root namespace);
  no selector → the namespace; no selector in the root namespace → every workload.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from waypost.api.security import AuthorizationPolicy

from .model import Condition, ResourceStatus, Service, Waypoint, WaypointRef, Workload, service_key
from .waypoints import WAYPOINT_CLASS



def targets_waypoint(policy: AuthorizationPolicy, waypoint: Waypoint, root_namespace: str) -> bool:
    """Gateway- or GatewayClass-targeted: the policy applies to every chain of the waypoint."""
    for ref in policy.spec.targets:
        if ref.kind == "Gateway" and policy.namespace == waypoint.namespace and ref.name == waypoint.name:
            return True
        if ref.kind == "GatewayClass" and ref.name == WAYPOINT_CLASS and policy.namespace == root_namespace:
            return True
    return False


def targets_service(policy: AuthorizationPolicy, service: Service) -> bool:
    return any(
        ref.kind == service.kind and policy.namespace == service.namespace and ref.name == service.name for ref in policy.spec.targets
    )


class TargetIndex:
    """Policies (any kind with `spec.targets`) indexed by what their targetRefs name, so that the policies of
    one waypoint chain are dict lookups instead of a scan of every policy per chain, which made waypoint
    translation O(services × policies). Built once per snapshot (`MeshSnapshot.policy_chains` and the like);
    read-only afterwards. `chain` returns exactly what a scan with `targets_waypoint`/`targets_service` would,
    in the same (input) order."""

    def __init__(self, policies: Sequence) -> None:
        self.policies = tuple(policies)
        self._gateways: dict[tuple[str, str], list[int]] = {}  # (policy ns, Gateway name) -> positions
        self._classes: dict[str, list[int]] = {}  # policy ns (GatewayClass istio-waypoint) -> positions
        self._services: dict[tuple[str, str, str], list[int]] = {}  # (kind, policy ns, name) -> positions
        for index, p in enumerate(self.policies):
            for ref in p.spec.targets:
                if ref.kind == "Gateway":
                    self._gateways.setdefault((p.namespace, ref.name), []).append(index)
                elif ref.kind == "GatewayClass" and ref.name == WAYPOINT_CLASS:
                    self._classes.setdefault(p.namespace, []).append(index)
                self._services.setdefault((ref.kind, p.namespace, ref.name), []).append(index)

    def chain(self, waypoint: Waypoint, service: Service | None, root_namespace: str) -> list:
        found = set(self._gateways.get((waypoint.namespace, waypoint.name), ()))
        found.update(self._classes.get(root_namespace, ()))
        if service is not None:
            found.update(self._services.get((service.kind, service.namespace, service.name), ()))
        return [self.policies[i] for i in sorted(found)]


def for_waypoint_chain(policies: Sequence | TargetIndex, waypoint: Waypoint, service: Service | None, root_namespace: str) -> list:
    """Policies (AuthorizationPolicy or RequestAuthentication) a waypoint applies on one chain (a service
    port's, or a workload's when service is None). Selector and namespace-wide ones never apply.

    Pass a `TargetIndex` when asking for many chains of the same policies (translation does)."""
    index = policies if isinstance(policies, TargetIndex) else TargetIndex(policies)
    return index.chain(waypoint, service, root_namespace)


def for_ztunnel(policies: Sequence[AuthorizationPolicy], workload: Workload, root_namespace: str) -> list[AuthorizationPolicy]:
    """Policies the destination ztunnel enforces for connections to `workload`."""
    out = []
    labels = workload.label_map
    for p in policies:
        if p.spec.targets:
            continue
        if p.namespace != workload.namespace and p.namespace != root_namespace:
            continue
        selector = p.spec.selector
        if selector is not None and selector.match_labels and not all(labels.get(k) == v for k, v in selector.match_labels.items()):
            continue
        out.append(p)
    return out


def has_http_fields(rule) -> list[str]:
    """The HTTP-only (L7) attributes a rule uses, as Istio names them in its warnings."""
    found = []
    for f in rule.from_ or []:
        for field, name in (("request_principals", "requestPrincipals"), ("not_request_principals", "notRequestPrincipals"),
                            ("remote_ip_blocks", "remoteIpBlocks"), ("not_remote_ip_blocks", "notRemoteIpBlocks")):
            if getattr(f.source, field):
                found.append(name)
    for t in rule.to or []:
        for field, name in (("hosts", "hosts"), ("not_hosts", "notHosts"), ("methods", "methods"), ("not_methods", "notMethods"),
                            ("paths", "paths"), ("not_paths", "notPaths")):
            if getattr(t.operation, field):
                found.append(name)
    for c in rule.when:
        if c.key not in ("source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"):
            found.append(c.key)
    return found


ZTUNNEL_PREFIX = "ztunnel does not support HTTP attributes (found: {found}). In ambient mode you must use a waypoint proxy to enforce HTTP rules. "


def ztunnel_condition(policy: AuthorizationPolicy) -> Condition:
    if policy.spec.action in ("AUDIT", "CUSTOM"):
        return Condition("ZtunnelAccepted", "False", "UnsupportedValue", f"ztunnel does not support the {policy.spec.action} action")
    found = sorted({a for r in policy.spec.rules or [] for a in has_http_fields(r)})
    if not found:
        return Condition("ZtunnelAccepted", "True", "Accepted", "attached to ztunnel")
    prefix = ZTUNNEL_PREFIX.format(found=", ".join(found))
    if policy.spec.action == "ALLOW":
        return Condition("ZtunnelAccepted", "True", "UnsupportedValue", prefix + "Within an ALLOW policy, rules matching HTTP attributes are omitted. This will be more restrictive than requested.")
    from .ztunnel_authz import reduce_policy

    if not reduce_policy(policy).groups:
        return Condition(
            "ZtunnelAccepted", "True", "UnsupportedValue",
            prefix + "After omitting unsupported HTTP attributes, this DENY policy has no enforceable rules at ztunnel and will have no effect. Deploy a waypoint proxy and use a targetRef to enforce this policy.",
        )
    return Condition("ZtunnelAccepted", "True", "UnsupportedValue", prefix + "DENY policy with HTTP attributes is enforced without the HTTP rules. This will be more restrictive than requested.")


def waypoint_condition(policy: AuthorizationPolicy, waypoints: Mapping[WaypointRef, Waypoint], services: Mapping[str, Service], root_namespace: str) -> Condition:
    results: list[tuple[bool, str, str, str]] = []  # (bound, reason, message, ref text)
    for ref in policy.spec.targets:
        text = f"{ref.kind}.{ref.group or 'core'}:{policy.namespace}/{ref.name}"
        if ref.kind == "Gateway":
            w = waypoints.get(WaypointRef(policy.namespace, ref.name))
            if w is None or not w.ready:
                results.append((False, "TargetNotFound", f"Gateway {policy.namespace}/{ref.name} was not found", text))
            else:
                results.append((True, "Accepted", f"bound to {w.ref}", text))
        elif ref.kind == "GatewayClass":
            if policy.namespace != root_namespace:
                results.append((False, "Invalid", f"{policy.KIND} must be in the root namespace `{root_namespace}` when referencing a GatewayClass", text))
            elif ref.name != WAYPOINT_CLASS:
                results.append((False, "Invalid", f"GatewayClass {ref.name} is not handled by the mesh controller", text))
            else:
                results.append((True, "Accepted", f"bound to every waypoint of class {WAYPOINT_CLASS}", text))
        elif ref.kind in ("Service", "ServiceEntry"):
            s = services.get(service_key(ref.kind, policy.namespace, ref.name))
            if s is None:
                results.append((False, "TargetNotFound", f"{ref.kind} {policy.namespace}/{ref.name} was not found", text))
            elif s.waypoint is None:
                results.append((False, "AncestorNotBound", f"{ref.kind} {policy.namespace}/{ref.name} is not bound to a waypoint", text))
            else:
                results.append((True, "Accepted", f"bound to {s.waypoint}", text))
        else:
            results.append((False, "TargetNotFound", f"{ref.kind} {policy.namespace}/{ref.name} was not found", text))
    if len(results) == 1:
        bound, reason, message, _ = results[0]
        return Condition("WaypointAccepted", "True" if bound else "False", reason, message)
    unbound = [text for bound, _, _, text in results if not bound]
    if not unbound:
        return Condition("WaypointAccepted", "True", "Accepted", "bound to all targets")
    message = "Invalid targetRefs: " + ", ".join(unbound)
    if len(unbound) < len(results):
        return Condition("WaypointAccepted", "True", "PartiallyInvalid", message)
    return Condition("WaypointAccepted", "False", "Invalid", message)


def statuses(policies: Sequence[AuthorizationPolicy], waypoints: Mapping[WaypointRef, Waypoint], services: Mapping[str, Service], root_namespace: str) -> list[ResourceStatus]:
    out = []
    for p in policies:
        condition = waypoint_condition(p, waypoints, services, root_namespace) if p.spec.targets else ztunnel_condition(p)
        out.append(ResourceStatus("AuthorizationPolicy", p.namespace, p.name, (condition,)))
    return out


def extension_statuses(extensions: Sequence, waypoints: Mapping[WaypointRef, Waypoint], services: Mapping[str, Service], root_namespace: str) -> list[ResourceStatus]:
    """WasmPlugin/TrafficExtension: `Accepted` says which waypoint runs it, or why none does.

    Istio writes no status for them; waypost does, since a plugin that silently never loads is the
    complaint users have (the module's own fetch and load status is added by the local layer)."""
    out = []
    for e in extensions:
        if e.spec.targets:
            bound = waypoint_condition(e, waypoints, services, root_namespace)
            condition = Condition("Accepted", bound.status, bound.reason, bound.message)
        else:
            condition = Condition(
                "Accepted", "False", "NotWaypointAttached",
                "attached by selector or namespace, which applies to sidecars only: waypoints run extensions attached with targetRefs",
            )
        out.append(ResourceStatus(e.KIND, e.namespace, e.name, (condition,)))
    return out


def telemetry_statuses(telemetries: Sequence, waypoints: Mapping[WaypointRef, Waypoint], services: Mapping[str, Service], root_namespace: str, mesh) -> list[ResourceStatus]:
    """Telemetry: `Accepted` says where it applies, and names what waypost does not act on (tracing, providers
    that are not Prometheus or file access logs). Istio writes no status for Telemetry."""
    out = []
    for t in telemetries:
        if t.spec.targets:
            bound = waypoint_condition(t, waypoints, services, root_namespace)
            condition = Condition("Accepted", bound.status, bound.reason, bound.message)
        elif t.spec.selector is not None and t.spec.selector.match_labels:
            condition = Condition("Accepted", "False", "NotWaypointAttached", "attached by selector, which applies to sidecars only: use targetRefs, or a namespace-wide Telemetry")
        elif t.namespace == root_namespace:
            condition = Condition("Accepted", "True", "Accepted", "mesh-wide (root namespace)")
        else:
            condition = Condition("Accepted", "True", "Accepted", f"namespace-wide: waypoints in, and services of, namespace {t.namespace}")
        ignored = []
        if t.spec.tracing:
            ignored.append("tracing (waypost exports no traces)")
        known = {"prometheus", "envoy"} | {p.name for p in (mesh.extension_providers if mesh is not None else []) if p.envoy_file_access_log is not None}
        for name in sorted({p.name for m in t.spec.metrics for p in m.providers} - {"prometheus"}):
            ignored.append(f"metrics provider {name!r} (only prometheus)")
        for name in sorted({p.name for a in t.spec.access_logging for p in a.providers} - known):
            ignored.append(f"access-log provider {name!r} (not an envoyFileAccessLog provider of MeshConfig)")
        conditions = [condition]
        if ignored:
            conditions.append(Condition("Ignored", "True", "UnsupportedValue", "not applied: " + "; ".join(ignored)))
        out.append(ResourceStatus("Telemetry", t.namespace, t.name, tuple(conditions)))
    return out


def mtls_mode(peer_authentications: Sequence, workload: Workload, port: int, root_namespace: str) -> str:
    """The PeerAuthentication mode for plaintext to `workload`'s target `port`: STRICT refuses it.

    Istio's precedence (pilot/pkg/serviceregistry/ambient/authorization.go, convertPeerAuthentication and
    the static strict policies): port-level mTLS of the workload's policy, then the workload policy's mode,
    the namespace's, the mesh's (root namespace, no selector); UNSET inherits; within a scope the oldest
    policy wins. Without any, PERMISSIVE. In ambient, DISABLE allows plaintext like PERMISSIVE (mesh
    traffic is HBONE regardless)."""
    labels = workload.label_map

    def first(candidates: list):
        return candidates[0] if candidates else None

    mesh = first([p for p in peer_authentications if p.namespace == root_namespace and not (p.spec.selector and p.spec.selector.match_labels)])
    namespace = first([p for p in peer_authentications if p.namespace == workload.namespace and workload.namespace != root_namespace
                       and not (p.spec.selector and p.spec.selector.match_labels)])
    selected = first([p for p in peer_authentications if p.namespace == workload.namespace and p.spec.selector and p.spec.selector.match_labels
                      and all(labels.get(k) == v for k, v in p.spec.selector.match_labels.items())])
    mode = "PERMISSIVE"
    for policy in (mesh, namespace, selected):
        if policy is not None and policy.spec.mtls is not None and policy.spec.mtls.mode != "UNSET":
            mode = policy.spec.mtls.mode
    if selected is not None and selected.spec.port_level_mtls:
        port_mode = selected.spec.port_level_mtls.get(port)
        if port_mode is not None and port_mode.mode != "UNSET":
            mode = port_mode.mode
    return "STRICT" if mode == "STRICT" else "PERMISSIVE"
