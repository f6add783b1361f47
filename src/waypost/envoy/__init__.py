"""MeshSnapshot → per-proxy Envoy resources (plain dicts, sorted, deterministic). Pure: no I/O."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from waypost.mesh.model import Condition, MeshSnapshot, ResourceStatus

from . import envoyfilter
from . import waypoint as waypoint_config
from . import ztunnel as ztunnel_config
from .bootstrap import bootstrap


@dataclass(frozen=True)
class ProxyConfig:
    """One Envoy's configuration: listeners, clusters, routes, and the names of the SDS secrets it needs."""

    proxy_id: str
    kind: str  # "ztunnel" | "waypoint"
    address: str
    listeners: tuple[dict[str, Any], ...]
    clusters: tuple[dict[str, Any], ...]
    routes: tuple[dict[str, Any], ...]
    secrets: tuple[str, ...]
    patch_reports: tuple = ()  # envoyfilter.PatchReport per EnvoyFilter patch that selected this proxy


def translate(snapshot: MeshSnapshot) -> dict[str, ProxyConfig]:
    out: dict[str, ProxyConfig] = {}
    for index, node in enumerate(snapshot.nodes):
        r = ztunnel_config.translate(snapshot, node)
        pid = ztunnel_config.proxy_id(node)
        out[pid] = ProxyConfig(pid, "ztunnel", snapshot.plan.ztunnel(index), tuple(r["listeners"]), tuple(r["clusters"]), tuple(r["routes"]), tuple(r["secrets"]))
    for wp in snapshot.waypoints:
        r = waypoint_config.translate(snapshot, wp)
        listeners, clusters, routes, reports = tuple(r["listeners"]), tuple(r["clusters"]), tuple(r["routes"]), ()
        selecting = [f for f in snapshot.envoy_filters if f.selects_waypoint(wp.namespace, wp.name, snapshot.root_namespace)]
        if selecting:
            # EnvoyFilter patches apply last, to the generated config, as istiod applies them (spec §8.3).
            patched = envoyfilter.apply(listeners, clusters, routes, envoyfilter.order(selecting, snapshot.root_namespace))
            listeners, clusters, routes, reports = patched.listeners, patched.clusters, patched.routes, patched.report
        out[wp.proxy_id] = ProxyConfig(wp.proxy_id, "waypoint", wp.address, listeners, clusters, routes, tuple(r["secrets"]), reports)
    return dict(sorted(out.items()))


def with_patch_status(snapshot: MeshSnapshot, configs: dict[str, ProxyConfig]) -> MeshSnapshot:
    """The snapshot with each EnvoyFilter's conditions: which waypoints it selects, and which patches matched
    nothing there (istiod reports neither; users are left guessing why a patch has no effect)."""
    statuses = [s for s in snapshot.statuses if s.kind != "EnvoyFilter"]
    for f in snapshot.envoy_filters:
        key = f"{f.namespace}/{f.name}"
        proxies = [c for c in configs.values() if any(r.envoyfilter == key for r in c.patch_reports)]
        if not proxies:
            accepted = Condition("Accepted", "False", "NoWaypointSelected",
                                 "selects no waypoint: use targetRefs to a waypoint Gateway of this namespace, or GatewayClass istio-waypoint from the root namespace")
            statuses.append(ResourceStatus("EnvoyFilter", f.namespace, f.name, (accepted,)))
            continue
        accepted = Condition("Accepted", "True", "Accepted", "applied to " + ", ".join(sorted(c.proxy_id for c in proxies)))
        idle, failed = [], []
        for index, cp in enumerate(f.spec.config_patches):
            reports = [r for c in proxies for r in c.patch_reports if r.envoyfilter == key and r.index == index]
            if not reports:
                continue
            where = f"configPatches[{index}] ({cp.apply_to} {cp.patch.operation if cp.patch else ''})".replace(" )", ")")
            errors = sorted({e for r in reports for e in r.errors})
            if errors:
                failed.append(f"{where}: {'; '.join(errors)}")
            elif not any(r.matched for r in reports):
                notes = sorted({n for r in reports for n in r.notes})
                idle.append(where + (f": {'; '.join(notes)}" if notes else ""))
        if failed:
            patched = Condition("Patched", "False", "PatchFailed", "; ".join(failed))
        elif idle:
            patched = Condition("Patched", "False", "PatchMatchedNothing", "matched nothing: " + "; ".join(idle))
        else:
            patched = Condition("Patched", "True", "Applied", "every patch matched")
        statuses.append(ResourceStatus("EnvoyFilter", f.namespace, f.name, (accepted, patched)))
    return dataclasses.replace(snapshot, statuses=tuple(sorted(statuses, key=lambda s: (s.kind, s.namespace, s.name))))


__all__ = ["ProxyConfig", "bootstrap", "translate", "with_patch_status"]
