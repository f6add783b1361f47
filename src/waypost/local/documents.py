"""What the supervisor writes for the CLI to read: the mesh view in `state.json` and `resources.json`."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from waypost.api.meta import Resource
from waypost.mesh import MeshSnapshot
from waypost.mesh.tracking import Diff, Recorder

from .manifests import Key, ResourceHistory


ViewCache = dict[int, tuple[object, str]]  # id(snapshot value) -> (the value, its view entry's JSON)


def mesh_view(snapshot: MeshSnapshot) -> dict[str, Any]:
    """The parts of a snapshot that `status`, `request` and `describe` need, as JSON."""
    return {part: [render(value) for value in getattr(snapshot, values)] for part, values, render in _VIEW_PARTS}


def mesh_view_texts_cached(snapshot: MeshSnapshot, cache: ViewCache | None) -> tuple[dict[str, str], ViewCache]:
    """The mesh view as state.json writes it: per view key, its value's JSON (`json.dumps(..., sort_keys=True)`
    of the list `mesh_view` gives). The cache keeps each entry's JSON, not the entry: at 1000 Services the
    view's dicts were megabytes held only to be written again (issue 8, control-plane memory)."""
    texts: dict[str, str] = {}
    kept: ViewCache = {}
    for part, values, render in _VIEW_PARTS:
        entries = []
        for value in getattr(snapshot, values):
            hit = cache.get(id(value)) if cache is not None else None
            text = hit[1] if hit is not None and hit[0] is value else json.dumps(render(value), sort_keys=True)
            kept[id(value)] = (value, text)
            entries.append(text)
        texts[part] = "[" + ", ".join(entries) + "]"  # json.dumps's own separators
    return texts, kept


def _service_entry(s: Any) -> dict[str, Any]:
    return {
        "namespace": s.namespace,
        "name": s.name,
        "kind": s.kind,
        "hostname": s.fqdn,
        "vip": s.vip,
        "ports": [{"name": p.name, "port": p.port, "targetPort": p.target_port, "protocol": p.protocol} for p in s.ports],
        "waypoint": str(s.waypoint) if s.waypoint else None,
        "endpoints": sorted({e.workload for _, eps in s.endpoints for e in eps}),
    }


def _workload_entry(w: Any) -> dict[str, Any]:
    return {
        "kind": w.kind,
        "namespace": w.namespace,
        "pod": w.name,
        "owner": w.owner,
        "address": w.address,
        "app_address": w.app_address,
        "identity": w.identity,
        "captured": w.captured,
        "node": w.node,
        "echo": w.echo,
        "waypoint": str(w.waypoint) if w.waypoint else None,
    }


def _waypoint_entry(w: Any) -> dict[str, Any]:
    return {"namespace": w.namespace, "name": w.name, "address": w.address, "identity": w.identity, "for": w.traffic_for}


def _status_entry(st: Any) -> dict[str, Any]:
    return {
        "kind": st.kind,
        "namespace": st.namespace,
        "name": st.name,
        "conditions": [c.as_dict() for c in st.conditions],
        "parents": [{"parentRef": p, "conditions": [c.as_dict() for c in cs]} for p, cs in st.parents],
    }


# view key, snapshot field, how one value of it is shown
_VIEW_PARTS = (
    ("services", "services", _service_entry),
    ("workloads", "workloads", _workload_entry),
    ("waypoints", "waypoints", _waypoint_entry),
    ("conditions", "statuses", _status_entry),
)


def resource_documents(
    resources: Sequence[Resource],
    snapshot: MeshSnapshot,
    now: str,
    history: Mapping[Key, ResourceHistory] | None = None,
    previous: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """The resources as `kubectl get -o yaml` would show them: defaults filled in, computed status added.

    `history` supplies each resource's creation time and generation (bumped on every spec change), and
    `previous` the documents written before: a condition whose status did not change keeps its
    `lastTransitionTime`, as the API server keeps it.
    """
    return resource_documents_cached(resources, snapshot, now, history, previous, None)[0]


@dataclass(frozen=True)
class DocumentCache:
    """What `resource_documents_cached` leaves for the next call: the snapshot, and per resource key the
    resource object, its history entry, what its document read from the snapshot, and the document."""

    snapshot: MeshSnapshot | None = None
    # key -> (resource, history, reads, document[, its JSON text]); `resource_texts_cached` keeps a document's
    # kind, name, namespace and status only, with its text.
    documents: Mapping[Key, tuple] = field(default_factory=dict)


def resource_documents_cached(
    resources: Sequence[Resource],
    snapshot: MeshSnapshot,
    now: str,
    history: Mapping[Key, ResourceHistory] | None,
    previous: Sequence[dict[str, Any]],
    cache: DocumentCache | None,
) -> tuple[list[dict[str, Any]], DocumentCache]:
    """`resource_documents`, reusing the earlier document of every resource that is the same object, with
    the same history, whose status reads from the snapshot give the same answers (`cache` is what the call
    that wrote `previous` returned). Dumping every resource's model on every change was O(mesh) per apply."""
    earlier: dict[tuple[str, str, str], dict[str, Any]] | None = None

    def conditions_before() -> Mapping[tuple[str, str, str], dict[str, Any]]:
        nonlocal earlier
        if earlier is None:
            earlier = {_doc_key(d): d for d in previous}
        return earlier

    known = cache.documents if cache is not None else {}
    kept: dict[Key, tuple] = {}
    docs = [entry[3] for entry in _cached(resources, snapshot, now, history, cache, known, kept, conditions_before, lambda doc: (doc,))]
    return docs, DocumentCache(snapshot, kept)


def resource_texts_cached(
    resources: Sequence[Resource],
    snapshot: MeshSnapshot,
    now: str,
    history: Mapping[Key, ResourceHistory] | None,
    cache: DocumentCache | None,
) -> tuple[list[str], DocumentCache]:
    """What `resources.json` holds, one JSON text per resource, as `resource_documents_cached` computes the
    documents; but the cache keeps each document's text and only the parts a later status needs
    (kind, name, namespace and status), not the whole document: the documents of a 1000-Service mesh
    were 13 MB of dicts for 2.6 MB of text (issue 8, control-plane memory)."""
    known = cache.documents if cache is not None else {}
    earlier = {_doc_key(entry[3]): entry[3] for entry in known.values()}
    kept: dict[Key, tuple] = {}

    def store(doc: dict[str, Any]) -> tuple[dict[str, Any], str]:
        meta = doc.get("metadata", {})
        slim = {"kind": doc.get("kind", ""), "metadata": {k: meta[k] for k in ("name", "namespace") if k in meta}}
        if "status" in doc:
            slim["status"] = doc["status"]
        return slim, json.dumps(doc, sort_keys=True)

    texts = [entry[4] for entry in _cached(resources, snapshot, now, history, cache, known, kept, lambda: earlier, store)]
    return texts, DocumentCache(snapshot, kept)


def _cached(resources, snapshot: MeshSnapshot, now: str, history, cache: DocumentCache | None, known, kept: dict, conditions_before, store) -> list[tuple]:
    """The cache entries for `resources`, in order: an earlier entry where the resource is the same object,
    with the same history, whose status reads give the same answers; else a new one, `(resource, history,
    reads, *store(document))`."""
    from waypost.api.gateway import GatewayClass
    from waypost.mesh.waypoints import MESH_CONTROLLER, WAYPOINT_CLASS

    resources = list(resources)
    history = history or {}
    if not any(isinstance(r, GatewayClass) and r.name == WAYPOINT_CLASS for r in resources):
        # Like istiod, the mesh provides the istio-waypoint class when the user did not declare it.
        resources.append(
            GatewayClass.model_validate(
                {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": WAYPOINT_CLASS}, "spec": {"controllerName": MESH_CONTROLLER}}
            )
        )
    diff = Diff(cache.snapshot if cache is not None else None, snapshot)
    out = []
    for r in resources:
        seen = history.get(r.key)
        hit = known.get(r.key)
        if hit is not None and hit[0] is r and seen is not None and hit[1] == seen and not diff.any_changed(hit[2]):
            kept[r.key] = hit
            out.append(hit)
            continue
        recorder = Recorder(snapshot)
        doc = _document(r, recorder, now, seen, conditions_before())  # type: ignore[arg-type] - reads like a MeshSnapshot
        stored = store(doc)
        entry = (r, seen, tuple(recorder.deps), *stored)  # a tuple: 3000 of them, any_changed only iterates
        kept[r.key] = entry
        out.append(entry)
    return out


def _document(r: Resource, snapshot: MeshSnapshot, now: str, seen: ResourceHistory | None, earlier: Mapping[tuple[str, str, str], dict[str, Any]]) -> dict[str, Any]:
    from waypost.mesh.status import resource_status

    doc = _prune(r.model_dump(by_alias=True, exclude_none=True, mode="json"))
    meta = doc.setdefault("metadata", {})
    if r.NAMESPACED:
        meta["namespace"] = r.namespace
    meta.setdefault("creationTimestamp", seen.created if seen else now)
    meta.setdefault("generation", seen.generation if seen else 1)
    if r.KIND == "Service":
        service = snapshot.service(f"{r.namespace}/{r.name}")
        if service is not None:
            doc.setdefault("spec", {})["clusterIP"] = service.vip
            doc["spec"]["clusterIPs"] = [service.vip]
    status = resource_status(r, snapshot)
    if status is not None:
        before = dict(_keyed_conditions(earlier.get(_doc_key(doc), {}).get("status", {})))
        for where, condition in _keyed_conditions(status):
            condition["observedGeneration"] = meta["generation"]
            old = before.get(where)
            if old is not None and old.get("status") == condition.get("status") and old.get("lastTransitionTime"):
                condition["lastTransitionTime"] = old["lastTransitionTime"]
            condition.setdefault("lastTransitionTime", now)
        doc["status"] = status
    return doc


def _doc_key(doc: dict[str, Any]) -> tuple[str, str, str]:
    meta = doc.get("metadata", {})
    return (doc.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))


def _prune(value: Any) -> Any:
    """Drops empty lists and maps that only model defaults produced, as the API server would not show them."""
    if isinstance(value, dict):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v != {} and v != []}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def _keyed_conditions(status: dict[str, Any]) -> Iterator[tuple[tuple[str, str], dict[str, Any]]]:
    """Every condition of a status with a key that names it across rewrites: (its parent or listener, type)."""
    for condition in status.get("conditions", []):
        yield ("", condition.get("type", "")), condition
    for item in status.get("parents", []):
        where = json.dumps(item.get("parentRef", {}), sort_keys=True)
        for condition in item.get("conditions", []):
            yield (where, condition.get("type", "")), condition
    for item in status.get("listeners", []):
        for condition in item.get("conditions", []):
            yield (f"listener/{item.get('name', '')}", condition.get("type", "")), condition
