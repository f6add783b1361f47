"""`waypost describe KIND NAME`: one resource of the running mesh, its conditions, what it attaches to and
what attaches to it, in the shape of `kubectl describe`.

Reads only what the supervisor wrote: resources.json (resources with computed status) and state.json
(services, workloads, waypoints). "Attaches to" is the resource's own references as the mesh resolved
them (a route's parents, a Service's or pod's waypoint); "Attached" is the reverse look-up.
"""

from __future__ import annotations

from typing import Any

from .get import GetError, pod_documents
from .render import table

Doc = dict[str, Any]


def find(docs: list[Doc], state: dict[str, Any], kind: str, name: str, namespace: str, namespaced: bool) -> Doc:
    every = docs + pod_documents(state)
    for d in every:
        meta = d.get("metadata", {})
        if d.get("kind") == kind and meta.get("name") == name and (not namespaced or meta.get("namespace") == namespace):
            return d
    where = f' in namespace "{namespace}"' if namespaced else ""
    raise GetError(f'{kind.lower()}s "{name}" not found{where}')


def describe(doc: Doc, docs: list[Doc], state: dict[str, Any]) -> str:
    kind, meta = doc["kind"], doc["metadata"]
    ns, name = meta.get("namespace", ""), meta["name"]
    lines = [_field("Name", name)]
    if ns:
        lines.append(_field("Namespace", ns))
    lines += [
        _field("Kind", kind),
        _field("API Version", doc.get("apiVersion", "")),
        _field("Labels", _labels(meta.get("labels"))),
    ]
    if meta.get("generation") is not None:
        lines.append(_field("Generation", meta["generation"]))
    if meta.get("creationTimestamp"):
        lines.append(_field("Created", meta["creationTimestamp"]))
    details = _DETAILS.get(kind)
    sections = details(doc, docs, state) if details else []
    sections.append(("Conditions", _conditions(doc.get("status", {}).get("conditions", []))))
    for title, body in sections:
        if not isinstance(body, list):
            lines.append(_field(title, body))
        else:
            lines.append(f"{title}:" if body else _field(title, "<none>"))
            lines += [f"  {line}" for line in body]
    return "\n".join(lines)


def _field(title: str, value: Any) -> str:
    label = f"{title}:"
    return f"{label:<14}{value}" if len(label) < 14 else f"{label} {value}"


def _labels(labels: dict[str, str] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or "<none>"


def _conditions(conditions: list[dict[str, Any]]) -> list[str]:
    if not conditions:
        return []
    rows = [[c.get("type"), c.get("status"), c.get("reason"), c.get("message")] for c in conditions]
    return table(["TYPE", "STATUS", "REASON", "MESSAGE"], rows).splitlines()


def _ref_text(ref: dict[str, Any], default_ns: str) -> str:
    text = f"{ref.get('kind', 'Service')} {ref.get('namespace') or default_ns}/{ref['name']}"
    if ref.get("sectionName"):
        text += f" section {ref['sectionName']}"
    if ref.get("port") is not None:
        text += f" port {ref['port']}"
    return text


def _summary(conditions: list[dict[str, Any]]) -> str:
    return " ".join(f"{c['type']}={c['status']}" + ("" if c["status"] == "True" else f" ({c.get('reason')}: {c.get('message')})") for c in conditions)


def _routes(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d.get("kind", "").endswith("Route")]


def _route(doc: Doc, docs: list[Doc], state: dict[str, Any]) -> list[tuple[str, Any]]:
    ns = doc["metadata"]["namespace"]
    parents = []
    for parent in doc.get("status", {}).get("parents", []):
        parents.append(_ref_text(parent["parentRef"], ns))
        parents += [f"  {line}" for line in _conditions(parent.get("conditions", []))]
    declared = len(doc.get("spec", {}).get("parentRefs", []))
    if declared > len(doc.get("status", {}).get("parents", [])):
        parents.append(f"({declared - len(doc.get('status', {}).get('parents', []))} parentRef(s) of other controllers not shown)")
    backends = []
    for index, rule in enumerate(doc.get("spec", {}).get("rules", [])):
        for ref in rule.get("backendRefs", []):
            weight = f", weight {ref['weight']}" if "weight" in ref else ""
            backends.append(f"rule {index}: {_ref_text({**ref, 'kind': ref.get('kind', 'Service')}, ns)}{weight}")
    return [("Attaches to", parents), ("Backends", backends)]


def _attached_routes(docs: list[Doc], kind: str, ns: str, name: str) -> list[str]:
    out = []
    for route in _routes(docs):
        rns = route["metadata"]["namespace"]
        for parent in route.get("status", {}).get("parents", []):
            ref = parent["parentRef"]
            if ref.get("kind") == kind and (ref.get("namespace") or rns) == ns and ref["name"] == name:
                port = f" (port {ref['port']})" if ref.get("port") is not None else ""
                out.append(f"{route['kind']} {rns}/{route['metadata']['name']}{port}: {_summary(parent.get('conditions', []))}")
    return out


def _service(doc: Doc, docs: list[Doc], state: dict[str, Any]) -> list[tuple[str, Any]]:
    ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
    spec = doc.get("spec", {})
    view = next((s for s in state.get("services", []) if (s["namespace"], s["name"]) == (ns, name)), {})
    ports = [f"{p.get('name') or '<unnamed>'} {p['port']} → {p.get('targetPort')} ({p.get('protocol')})" for p in view.get("ports", [])]
    pods = {f"{w['namespace']}/{w['pod']}": w for w in state.get("workloads", [])}
    endpoints = [f"{key} {pods[key]['address']}" if key in pods else key for key in view.get("endpoints", [])]
    backend_of = []
    for route in _routes(docs):
        rns = route["metadata"]["namespace"]
        for rule in route.get("spec", {}).get("rules", []):
            for ref in rule.get("backendRefs", []):
                if ref.get("kind", "Service") == "Service" and (ref.get("namespace") or rns) == ns and ref["name"] == name:
                    backend_of.append(f"{route['kind']} {rns}/{route['metadata']['name']}")
    return [
        ("VIP", view.get("vip") or spec.get("clusterIP", "<none>")),
        ("Selector", _labels(spec.get("selector"))),
        ("Ports", ports),
        ("Attaches to", [f"waypoint {view['waypoint']}"] if view.get("waypoint") else []),
        ("Attached routes", _attached_routes(docs, "Service", ns, name)),
        ("Backend of", sorted(set(backend_of))),
        ("Endpoints", endpoints),
    ]


def _gateway(doc: Doc, docs: list[Doc], state: dict[str, Any]) -> list[tuple[str, Any]]:
    ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
    ref = f"{ns}/{name}"
    status = doc.get("status", {})
    listeners = []
    for listener in status.get("listeners", []):
        listeners.append(f"{listener['name']}")
        listeners += [f"  {line}" for line in _conditions(listener.get("conditions", []))]
    services = [f"Service {s['namespace']}/{s['name']}" for s in state.get("services", []) if s.get("waypoint") == ref]
    workloads = [f"{w['kind']} {w['namespace']}/{w['pod']}" for w in state.get("workloads", []) if w.get("waypoint") == ref]
    return [
        ("Class", doc.get("spec", {}).get("gatewayClassName", "")),
        ("Addresses", ", ".join(a["value"] for a in status.get("addresses", [])) or "<none>"),
        ("Attaches to", [f"GatewayClass {doc.get('spec', {}).get('gatewayClassName', '')}"]),
        ("Attached", services + workloads + _attached_routes(docs, "Gateway", ns, name)),
        ("Listeners", listeners),
    ]


def _pod(doc: Doc, docs: list[Doc], state: dict[str, Any]) -> list[tuple[str, Any]]:
    ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
    workload = next((w for w in state.get("workloads", []) if (w["namespace"], w["pod"]) == (ns, name)), {})
    services = [f"Service {s['namespace']}/{s['name']}" for s in state.get("services", []) if f"{ns}/{name}" in s.get("endpoints", [])]
    return [
        ("Address", workload.get("address", "<none>")),
        ("Identity", workload.get("identity", "<none>")),
        ("Captured", "yes (ambient)" if workload.get("captured") else "no"),
        ("Attaches to", [f"waypoint {workload['waypoint']}"] if workload.get("waypoint") else []),
        ("Attached", services),
    ]


def _deployment(doc: Doc, docs: list[Doc], state: dict[str, Any]) -> list[tuple[str, Any]]:
    ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
    pods = [f"Pod {w['namespace']}/{w['pod']} {w['address']}" for w in state.get("workloads", []) if w["namespace"] == ns and w.get("owner") == name]
    return [("Replicas", doc.get("spec", {}).get("replicas", 1)), ("Pods", pods)]


def _namespace(doc: Doc, docs: list[Doc], state: dict[str, Any]) -> list[tuple[str, Any]]:
    name = doc["metadata"]["name"]
    labels = doc["metadata"].get("labels", {})
    waypoint = labels.get("istio.io/use-waypoint")
    return [
        ("Dataplane", labels.get("istio.io/dataplane-mode", "<none>")),
        ("Attaches to", [f"waypoint {labels.get('istio.io/use-waypoint-namespace', name)}/{waypoint}"] if waypoint else []),
    ]


_DETAILS = {
    "HTTPRoute": _route,
    "GRPCRoute": _route,
    "TCPRoute": _route,
    "TLSRoute": _route,
    "Service": _service,
    "Gateway": _gateway,
    "Pod": _pod,
    "WorkloadEntry": _pod,
    "Deployment": _deployment,
    "Namespace": _namespace,
}
