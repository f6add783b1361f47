"""`waypost get KIND [NAME]`: the running mesh's resources with their computed status, kubectl-style."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import yaml

from .render import table

# kind → (names users type, kubectl's columns)
KINDS: dict[str, tuple[tuple[str, ...], bool]] = {
    "Namespace": (("namespace", "namespaces", "ns"), False),
    "ServiceAccount": (("serviceaccount", "serviceaccounts", "sa"), True),
    "Service": (("service", "services", "svc"), True),
    "ConfigMap": (("configmap", "configmaps", "cm"), True),
    "Deployment": (("deployment", "deployments", "deploy"), True),
    "Pod": (("pod", "pods", "po"), True),
    "GatewayClass": (("gatewayclass", "gatewayclasses", "gc"), False),
    "Gateway": (("gateway", "gateways", "gtw"), True),
    "HTTPRoute": (("httproute", "httproutes"), True),
    "GRPCRoute": (("grpcroute", "grpcroutes"), True),
    "TCPRoute": (("tcproute", "tcproutes"), True),
    "TLSRoute": (("tlsroute", "tlsroutes"), True),
    "WorkloadEntry": (("workloadentry", "workloadentries", "we"), True),
    "WorkloadGroup": (("workloadgroup", "workloadgroups", "wg"), True),
    "ReferenceGrant": (("referencegrant", "referencegrants", "refgrant"), True),
    "ServiceEntry": (("serviceentry", "serviceentries", "se"), True),
    "VirtualService": (("virtualservice", "virtualservices", "vs"), True),
    "DestinationRule": (("destinationrule", "destinationrules", "dr"), True),
    "RequestAuthentication": (("requestauthentication", "requestauthentications", "ra"), True),
    "AuthorizationPolicy": (("authorizationpolicy", "authorizationpolicies", "ap"), True),
    "WasmPlugin": (("wasmplugin", "wasmplugins"), True),
    "TrafficExtension": (("trafficextension", "trafficextensions"), True),
    "Telemetry": (("telemetry", "telemetries"), True),
    "EnvoyFilter": (("envoyfilter", "envoyfilters"), True),
}


class GetError(ValueError):
    pass


def kind_of(text: str) -> str:
    lowered = text.lower().split(".", 1)[0]
    for kind, (names, _) in KINDS.items():
        if lowered in names:
            return kind
    raise GetError(f'the server doesn\'t have a resource type "{text}"')


def _age(created: str | None, now: datetime) -> str:
    if not created:
        return "<unknown>"
    try:
        then = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return "<unknown>"
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def pod_documents(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Pods of Deployments exist only in the mesh's state: show them as Pod objects."""
    docs = []
    for w in state.get("workloads", []):
        if w["kind"] != "Pod":
            continue
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": w["pod"], "namespace": w["namespace"], "creationTimestamp": state.get("started")},
                "spec": {"nodeName": w.get("node", "node-0")},
                "status": {"phase": "Running", "podIP": w["address"], "podIPs": [{"ip": w["address"]}]},
                "_identity": w["identity"],
                "_waypoint": w.get("waypoint"),
            }
        )
    return docs


def select(docs: list[dict[str, Any]], kind: str, name: str | None, namespace: str | None) -> list[dict[str, Any]]:
    namespaced = KINDS[kind][1]
    out = [d for d in docs if d.get("kind") == kind]
    if namespaced and namespace is not None:
        out = [d for d in out if d["metadata"].get("namespace") == namespace]
    if name is not None:
        out = [d for d in out if d["metadata"]["name"] == name]
        if not out:
            where = f' in namespace "{namespace}"' if namespaced and namespace else ""
            raise GetError(f'{kind.lower()}s "{name}" not found{where}')
    return sorted(out, key=lambda d: (d["metadata"].get("namespace", ""), d["metadata"]["name"]))


def _condition(doc: dict[str, Any], type_: str) -> str:
    for c in doc.get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return c["status"]
    return "Unknown"


def _row(kind: str, d: dict[str, Any], now: datetime, state: dict[str, Any], wide: bool) -> list[Any]:
    meta, spec, status = d["metadata"], d.get("spec", {}), d.get("status", {})
    age = _age(meta.get("creationTimestamp"), now)
    if kind == "Service":
        ports = ",".join(f"{p['port']}/{p.get('protocol', 'TCP')}" for p in spec.get("ports", []))
        row = [meta["name"], spec.get("type", "ClusterIP"), spec.get("clusterIP", "<none>"), "<none>", ports, age]
        if wide:
            selector = ",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).items()) or "<none>"
            waypoint = next((s.get("waypoint") for s in state.get("services", []) if s["namespace"] == meta["namespace"] and s["name"] == meta["name"]), None)
            row += [selector, waypoint or "<none>"]
        return row
    if kind == "Gateway":
        addresses = [a["value"] for a in status.get("addresses", []) if a["type"] == "IPAddress"]
        return [meta["name"], spec.get("gatewayClassName"), addresses[0] if addresses else "", _condition(d, "Programmed"), age]
    if kind == "GatewayClass":
        return [meta["name"], spec.get("controllerName"), _condition(d, "Accepted"), age]
    if kind in ("HTTPRoute", "GRPCRoute", "TLSRoute"):
        return [meta["name"], ",".join(spec.get("hostnames", [])), age]
    if kind == "Deployment":
        replicas = spec.get("replicas", 1)
        return [meta["name"], f"{replicas}/{replicas}", replicas, replicas, age]
    if kind == "Pod":
        row = [meta["name"], "1/1", status.get("phase"), 0, age]
        if wide:
            row += [status.get("podIP"), spec.get("nodeName"), d.get("_waypoint") or "<none>"]
        return row
    if kind == "Namespace":
        return [meta["name"], "Active", age]
    if kind == "WorkloadEntry":
        return [meta["name"], age, spec.get("address")]
    if kind == "ServiceAccount":
        return [meta["name"], 0, age]
    if kind == "ConfigMap":
        return [meta["name"], len(d.get("data") or {}) + len(d.get("binaryData") or {}), age]
    if kind == "AuthorizationPolicy":
        return [meta["name"], spec.get("action", "ALLOW"), age]
    if kind == "ServiceEntry":
        return [meta["name"], ",".join(spec.get("hosts", [])), spec.get("location", "MESH_EXTERNAL"), spec.get("resolution", "NONE"), age]
    if kind == "VirtualService":
        # istioctl's columns (GATEWAYS, HOSTS), plus whether a waypoint applies it.
        return [meta["name"], ",".join(spec.get("gateways", [])) or "<none>", ",".join(spec.get("hosts", [])), _condition(d, "Accepted"), age]
    if kind == "DestinationRule":
        return [meta["name"], spec.get("host", ""), age]
    return [meta["name"], age]


HEADERS = {
    "Service": ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"],
    "Gateway": ["NAME", "CLASS", "ADDRESS", "PROGRAMMED", "AGE"],
    "GatewayClass": ["NAME", "CONTROLLER", "ACCEPTED", "AGE"],
    "HTTPRoute": ["NAME", "HOSTNAMES", "AGE"],
    "GRPCRoute": ["NAME", "HOSTNAMES", "AGE"],
    "TLSRoute": ["NAME", "HOSTNAMES", "AGE"],
    "Deployment": ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
    "Pod": ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
    "Namespace": ["NAME", "STATUS", "AGE"],
    "WorkloadEntry": ["NAME", "AGE", "ADDRESS"],
    "ServiceAccount": ["NAME", "SECRETS", "AGE"],
    "ConfigMap": ["NAME", "DATA", "AGE"],
    "AuthorizationPolicy": ["NAME", "ACTION", "AGE"],
    "ServiceEntry": ["NAME", "HOSTS", "LOCATION", "RESOLUTION", "AGE"],
    "VirtualService": ["NAME", "GATEWAYS", "HOSTS", "ACCEPTED", "AGE"],
    "DestinationRule": ["NAME", "HOST", "AGE"],
}
WIDE = {"Service": ["SELECTOR", "WAYPOINT"], "Pod": ["IP", "NODE", "WAYPOINT"]}


def render(kind: str, docs: list[dict[str, Any]], output: str, state: dict[str, Any], all_namespaces: bool, single: bool) -> str:
    clean = [{k: v for k, v in d.items() if not k.startswith("_")} for d in docs]
    if output in ("yaml", "json"):
        if single and len(clean) == 1:
            payload: Any = clean[0]
        else:
            payload = {"apiVersion": "v1", "kind": "List", "items": clean}
        return json.dumps(payload, indent=2) if output == "json" else yaml.safe_dump(payload, sort_keys=False).rstrip()
    if not docs:
        return "No resources found"
    now = datetime.now(timezone.utc)
    wide = output == "wide"
    headers = HEADERS.get(kind, ["NAME", "AGE"]) + (WIDE.get(kind, []) if wide else [])
    rows = [_row(kind, d, now, state, wide) for d in docs]
    if all_namespaces and KINDS[kind][1]:
        headers = ["NAMESPACE", *headers]
        rows = [[d["metadata"].get("namespace"), *r] for d, r in zip(docs, rows)]
    return table(headers, rows)
