"""`waypost analyze`: findings about a set of manifests, offline, in istioctl's style. Pure.

Codes: Istio's where Istio has the check (IST0101 referenced resource not found, IST0106 schema
validation error), `WPT` codes for the ambient traps Istio's analyzers do not report:

| code    | level   | finding |
| ------- | ------- | ------- |
| IST0101 | Error   | a reference (parentRef, backendRef, targetRef, use-waypoint) names nothing |
| IST0106 | Error   | the resource is invalid (what `up` refuses) |
| WPT0001 | Error   | a selector/namespace ALLOW policy uses HTTP attributes: the ztunnel drops those rules, denying traffic |
| WPT0002 | Warning | a selector/namespace DENY policy has only HTTP attributes: it has no effect at the ztunnel |
| WPT0003 | Warning | a targetRefs policy targets something no waypoint serves: it is enforced nowhere |
| WPT0004 | Warning | a route attaches to a Service without a waypoint: ambient clients ignore it |
| WPT0005 | Warning | a waypoint binding does not take effect (not ready, not allowed, wrong traffic type) |
| WPT0006 | Warning | pods behind a waypoint-enforced policy are reachable by clients outside the mesh, bypassing it |
| WPT0007 | Error   | a CUSTOM policy's provider is unusable (undeclared, unresolvable, or several on one chain): its rules deny |
| WPT0008 | Warning | a CUSTOM or AUDIT policy attached by selector/namespace: ztunnel does not support it, nothing enforces it |
| WPT0009 | Error   | a VirtualService and an HTTPRoute/GRPCRoute route the same service port: the HTTPRoute wins, the VirtualService does not apply there |
"""

from __future__ import annotations

from dataclasses import dataclass

from waypost.api.diagnostics import Diagnostic
from waypost.api.meta import Resource

from .model import MeshSnapshot
from .policies import for_waypoint_chain, for_ztunnel, ztunnel_condition

LEVELS = ("Info", "Warning", "Error")


@dataclass(frozen=True, order=True)
class Finding:
    level: str
    code: str
    kind: str
    namespace: str
    name: str
    file: str
    line: int
    message: str

    def render(self) -> str:
        ident = f"{self.namespace}/{self.name}" if self.namespace else self.name
        where = f" {self.file}:{self.line}" if self.file else ""
        return f"{self.level} [{self.code}] ({self.kind} {ident}{where}) {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "level": self.level, "code": self.code, "origin": f"{self.kind} {self.namespace}/{self.name}".replace(" /", " "),
            "reference": f"{self.file}:{self.line}" if self.file else "", "message": self.message,
        }


def _finding(level: str, code: str, r: Resource, message: str) -> Finding:
    return Finding(level, code, r.KIND, r.namespace if r.NAMESPACED else "", r.name, r.source.file, r.source.line, message)


def from_diagnostics(diagnostics: list[Diagnostic]) -> list[Finding]:
    out = []
    for d in diagnostics:
        if d.severity.value != "Error":
            continue
        message = f"{d.field}: {d.message}" if d.field else d.message
        out.append(Finding("Error", "IST0106", d.kind or "File", d.namespace, d.name or "-", d.file, d.line, f"Schema validation error: {message}"))
    return out


def analyze(resources: list[Resource], snapshot: MeshSnapshot) -> list[Finding]:
    """Findings from the resources and snapshot (refused documents are reported from the load's diagnostics)."""
    by_key = {(r.KIND, r.namespace, r.name): r for r in resources}
    out: list[Finding] = []
    out.extend(_mixed_routing(by_key, snapshot))

    # IST0101 and WPT0003-5 from the computed status conditions.
    for status in snapshot.statuses:
        r = by_key.get((status.kind, status.namespace, status.name))
        if r is None:
            continue
        for parent, conditions in status.parents:
            for c in conditions:
                if c.status == "False" and c.reason in ("NoMatchingParent", "BackendNotFound"):
                    out.append(_finding("Error", "IST0101", r, f"Referenced {('parent' if c.type == 'Accepted' else 'backend')} not found: {c.message} ({parent})"))
                elif c.type == "ResolvedWaypoints" and "label missing" in c.message:
                    out.append(_finding("Warning", "WPT0004", r, f"{parent} has no waypoint, so ambient clients ignore this route; label the Service or its namespace with istio.io/use-waypoint"))
        for c in status.conditions:
            if status.kind == "VirtualService" and c.type == "ResolvedRefs" and c.status == "False":
                out.append(_finding("Error", "IST0101", r, f"Referenced destination {c.message}"))
            elif c.type == "istio.io/WaypointBound" and c.status == "False":
                code, level = ("IST0101", "Error") if c.reason == "WaypointIsNotReady" else ("WPT0005", "Warning")
                out.append(_finding(level, code, r, f"{c.message}; traffic to it flows without a waypoint (L4 only)"))
            elif c.type == "WaypointAccepted" and c.status == "False":
                if c.reason == "TargetNotFound":
                    out.append(_finding("Error", "IST0101", r, f"{c.message}: the policy is enforced nowhere"))
                else:
                    out.append(_finding("Warning", "WPT0003", r, f"{c.message}: the policy is enforced nowhere; bind the target to a waypoint (istio.io/use-waypoint)"))
            elif c.type == "ZtunnelAccepted" and c.status == "False" and c.reason == "UnsupportedValue":
                out.append(_finding("Warning", "WPT0008", r, f"{c.message}: the policy is enforced nowhere; attach it to a waypoint with targetRefs"))
            elif c.type == "ZtunnelAccepted" and c.reason == "UnsupportedValue" and c.status == "True":
                if "ALLOW" in c.message:
                    out.append(_finding("Error", "WPT0001", r, c.message + " Traffic these rules were meant to admit is denied."))
                elif "no effect" in c.message:
                    out.append(_finding("Warning", "WPT0002", r, c.message))

    # IST0101 for backends of routes whose parent is missing too (the route status then has no ResolvedRefs).
    services = {s.key for s in snapshot.services}
    for r in resources:
        if r.KIND not in ("HTTPRoute", "GRPCRoute"):
            continue
        for rule in r.spec.rules:
            for ref in rule.backend_refs:
                key = f"{ref.namespace or r.namespace}/{ref.name}"
                if ref.kind == "Service" and ref.group in ("", "core") and key not in services:
                    out.append(_finding("Error", "IST0101", r, f"Referenced backend not found: Service {key}"))

    # WPT0007: CUSTOM policies whose external authorizer cannot be called deny what their rules match.
    for policy in snapshot.authorization_policies:
        if policy.spec.action != "CUSTOM" or not policy.spec.targets or policy.spec.provider is None:
            continue
        r = by_key.get(("AuthorizationPolicy", policy.namespace, policy.name))
        provider = snapshot.authz_provider(policy.spec.provider.name)
        if r is not None and provider.error:
            hint = (
                "declare it in MeshConfig extensionProviders (ConfigMap istio-system/istio)" if provider.config is None
                else "make its service a Service or ServiceEntry host of the mesh"
            )
            out.append(_finding("Error", "WPT0007", r, f"{provider.error}; requests its rules match are denied: {hint}"))
    for waypoint in snapshot.waypoints:
        for service in [s for s in snapshot.services if s.waypoint == waypoint.ref] + [None]:
            chain = [p for p in for_waypoint_chain(snapshot.authorization_policies, waypoint, service, snapshot.root_namespace) if p.spec.action == "CUSTOM" and p.spec.provider]
            names = sorted({p.spec.provider.name for p in chain})
            if len(names) > 1:
                where = service.key if service is not None else f"workloads of waypoint {waypoint.ref}"
                for p in chain:
                    r = by_key.get(("AuthorizationPolicy", p.namespace, p.name))
                    if r is not None:
                        out.append(_finding("Error", "WPT0007", r, f"{where} has CUSTOM policies of several providers {names}; only one is supported per workload, so requests their rules match are denied"))

    # WPT0006: a waypoint-enforced policy can be bypassed by clients outside the mesh.
    uncaptured = sorted({w.namespace for w in snapshot.workloads if not w.captured})
    if uncaptured:
        for policy in snapshot.authorization_policies:
            if not policy.spec.targets:
                continue
            for service in snapshot.services:
                if service.waypoint is None or not any(
                    ref.kind == "Service" and ref.name == service.name and policy.namespace == service.namespace for ref in policy.spec.targets
                ) and not any(ref.kind == "Gateway" and ref.name == service.waypoint.name and policy.namespace == service.waypoint.namespace for ref in policy.spec.targets):
                    continue
                exposed = []
                for _, endpoints in service.endpoints:
                    for e in endpoints:
                        workload = snapshot.workload(e.workload)
                        if workload is None:
                            continue
                        guards = for_ztunnel(snapshot.authorization_policies, workload, snapshot.root_namespace)
                        if not any(p.spec.action == "ALLOW" for p in guards):
                            exposed.append(workload.key)
                if exposed:
                    r = by_key.get(("AuthorizationPolicy", policy.namespace, policy.name))
                    if r is not None:
                        out.append(
                            _finding(
                                "Warning", "WPT0006", r,
                                f"clients outside the mesh (namespaces {', '.join(uncaptured)}) can reach {service.key}'s pods directly and bypass this "
                                f"policy; add a selector ALLOW policy on them admitting only the waypoint's identity ({service.waypoint})",
                            )
                        )
    return sorted(set(out), key=lambda f: (-LEVELS.index(f.level), f.code, f.kind, f.namespace, f.name, f.message))


__all__ = ["Finding", "LEVELS", "analyze", "from_diagnostics", "ztunnel_condition"]


def _mixed_routing(by_key: dict, snapshot: MeshSnapshot) -> list[Finding]:
    """WPT0009: a VirtualService that loses service ports to an HTTPRoute/GRPCRoute (waypost's mixing rule,
    `mesh.virtualservices`): it is recorded in the VirtualService's `Conflicted` condition."""
    out = []
    for status in snapshot.statuses:
        if status.kind != "VirtualService":
            continue
        for condition in status.conditions:
            if condition.type == "Conflicted" and condition.status == "True":
                vs = by_key.get(("VirtualService", status.namespace, status.name))
                file, line = (vs.source.file, vs.source.line) if vs is not None else ("", 0)
                out.append(
                    Finding(
                        "Error", "WPT0009", "VirtualService", status.namespace, status.name, file, line,
                        f"{condition.message}; mixing VirtualService and Gateway API routing for one service port is "
                        "undefined in Istio, and waypost applies only the Gateway API route there: route it with one API only",
                    )
                )
    return out
