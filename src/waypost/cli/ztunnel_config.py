"""`waypost ztunnel-config workload|service|policy`: the mesh as the ztunnels see it (istioctl's columns).

The view is the running mesh's `MeshSnapshot`, rebuilt from what the supervisor published: the resources
it runs (resources.json) with the addresses it assigned (state.json), through the same `mesh.build`.
Policies are shown as ztunnels enforce them: Istio's L4 reduction (`mesh.ztunnel_authz`), so an ALLOW
policy whose rules are all HTTP-only shows no rules at all.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from waypost.mesh import MeshSnapshot

from .render import table

KINDS = ("workload", "service", "policy")


class ViewError(ValueError):
    pass


def snapshot_from_documents(state: dict[str, Any], docs: list[dict[str, Any]]) -> MeshSnapshot:
    """The running mesh's snapshot: its resources built with its address plan and the addresses it kept."""
    from waypost.api import load_text
    from waypost.mesh import AddressPlan, build

    result = load_text(yaml.safe_dump_all(docs), "resources.json")
    if result.errors:
        raise ViewError("the mesh's resources.json does not load: " + "; ".join(d.render() for d in result.errors))
    previous = {f"pod/{w['namespace']}/{w['pod']}": w["address"] for w in state.get("workloads", []) if w.get("kind") == "Pod"}
    for s in state.get("services", []):
        key = f"{s['namespace']}/{s['name']}" if s.get("kind", "Service") == "Service" else f"{s['namespace']}/{s['kind']}/{s['name']}"
        previous[f"svc/{key}"] = s["vip"]
    previous.update({f"waypoint/{w['namespace']}/{w['name']}": w["address"] for w in state.get("waypoints", [])})
    if not state.get("block"):
        raise ViewError("state.json names no address block; is the mesh running?")
    return build(result.resources, AddressPlan(int(state["block"])), previous=previous)


def _scope(policy: Any, root_namespace: str) -> str:
    if policy.spec.selector is not None and policy.spec.selector.match_labels:
        return "WorkloadSelector"
    return "Global" if policy.namespace == root_namespace else "Namespace"


def workloads(snapshot: MeshSnapshot) -> list[dict[str, Any]]:
    out = []
    for w in sorted(snapshot.workloads, key=lambda w: (w.namespace, w.name)):
        out.append({
            "namespace": w.namespace, "name": w.name, "kind": w.kind, "address": w.address, "node": w.node,
            "waypoint": w.waypoint.name if w.waypoint else None, "protocol": "HBONE" if w.captured else "TCP",
            "serviceAccount": w.service_account, "identity": w.identity,
        })
    return out


def services(snapshot: MeshSnapshot) -> list[dict[str, Any]]:
    out = []
    for s in sorted(snapshot.services, key=lambda s: (s.namespace, s.name, s.fqdn)):
        endpoints = sorted({e.workload for _, eps in s.endpoints for e in eps})
        out.append({
            "namespace": s.namespace, "name": s.name, "hostname": s.fqdn, "vip": s.vip,
            "waypoint": s.waypoint.name if s.waypoint else None,
            "ports": {str(p.port): p.target_port for p in s.ports}, "endpoints": endpoints,
        })
    return out


def policies(snapshot: MeshSnapshot) -> list[dict[str, Any]]:
    """What ztunnels enforce: selector and namespace policies, ALLOW/DENY, reduced to L4."""
    from waypost.mesh.ztunnel_authz import reduce_policy

    out = []
    for p in sorted(snapshot.authorization_policies, key=lambda p: (p.namespace, p.name)):
        if p.spec.targets or p.spec.action not in ("ALLOW", "DENY"):
            continue  # waypoint policies, and actions a ztunnel does not support
        z = reduce_policy(p)
        out.append({
            "namespace": z.namespace, "name": z.name, "action": z.action.capitalize(), "scope": _scope(p, snapshot.root_namespace),
            "rules": [
                {"clauses": [{"matches": [{k: list(v) for k, v in m.fields} for m in c.matches]} for c in g.clauses]}
                for g in z.groups
            ],
        })
    return out


def render(kind: str, snapshot: MeshSnapshot, output: str, namespace: str | None = None) -> str:
    if kind not in KINDS:
        raise ViewError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    items = {"workload": workloads, "service": services, "policy": policies}[kind](snapshot)
    if namespace:
        items = [i for i in items if i["namespace"] == namespace]
    if output == "json":
        return json.dumps(items, indent=2)
    if output == "yaml":
        return yaml.safe_dump(items, sort_keys=False).rstrip()
    if output != "short":
        raise ViewError(f"output must be short, json or yaml, got {output!r}")
    if kind == "workload":
        return table(["NAMESPACE", "POD NAME", "ADDRESS", "NODE", "WAYPOINT", "PROTOCOL"],
                     [[w["namespace"], w["name"], w["address"], w["node"], w["waypoint"] or "None", w["protocol"]] for w in items])
    if kind == "service":
        return table(["NAMESPACE", "SERVICE NAME", "SERVICE VIP", "WAYPOINT", "ENDPOINTS"],
                     [[s["namespace"], s["name"], s["vip"], s["waypoint"] or "None", f"{len(s['endpoints'])}/{len(s['endpoints'])}"] for s in items])
    return table(["NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"], [[p["namespace"], p["name"], p["action"], p["scope"]] for p in items])
