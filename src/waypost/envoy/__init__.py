"""MeshSnapshot → per-proxy Envoy resources (plain dicts, sorted, deterministic). Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from waypost.mesh.model import MeshSnapshot

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


def translate(snapshot: MeshSnapshot) -> dict[str, ProxyConfig]:
    out: dict[str, ProxyConfig] = {}
    for index, node in enumerate(snapshot.nodes):
        r = ztunnel_config.translate(snapshot, node)
        pid = ztunnel_config.proxy_id(node)
        out[pid] = ProxyConfig(pid, "ztunnel", snapshot.plan.ztunnel(index), tuple(r["listeners"]), tuple(r["clusters"]), tuple(r["routes"]), tuple(r["secrets"]))
    for wp in snapshot.waypoints:
        r = waypoint_config.translate(snapshot, wp)
        out[wp.proxy_id] = ProxyConfig(wp.proxy_id, "waypoint", wp.address, tuple(r["listeners"]), tuple(r["clusters"]), tuple(r["routes"]), tuple(r["secrets"]))
    return dict(sorted(out.items()))


__all__ = ["ProxyConfig", "bootstrap", "translate"]
