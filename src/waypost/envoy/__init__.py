"""MeshSnapshot → per-proxy Envoy resources (plain dicts, sorted, deterministic). Pure: no I/O."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from waypost.mesh.model import Condition, MeshSnapshot, ResourceStatus
from waypost.mesh.tracking import Diff, Recorder

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


@dataclass(frozen=True)
class TranslationCache:
    """What one translation leaves for the next one (`translate_incremental`): the snapshot it translated,
    each proxy's config, what the ztunnels read from that snapshot, and each waypoint's section memo. An
    immutable value: the caller keeps it and hands it back; nothing is cached behind its back."""

    snapshot: MeshSnapshot | None = None
    configs: Mapping[str, ProxyConfig] = field(default_factory=dict)
    ztunnel_reads: Mapping[str, tuple[tuple, tuple]] = field(default_factory=dict)  # proxy -> (args, reads)
    waypoint_memos: Mapping[str, waypoint_config.Memo] = field(default_factory=dict)
    patched: Mapping[str, tuple[tuple, tuple]] = field(default_factory=dict)  # proxy -> (generated + filters, patched)


def translate(snapshot: MeshSnapshot) -> dict[str, ProxyConfig]:
    out: dict[str, ProxyConfig] = {}
    for node in snapshot.nodes:
        r = ztunnel_config.translate(snapshot, node)
        pid = ztunnel_config.proxy_id(node)
        out[pid] = ProxyConfig(pid, "ztunnel", snapshot.ztunnel_address(node), tuple(r["listeners"]), tuple(r["clusters"]), tuple(r["routes"]), tuple(r["secrets"]))
    for wp in snapshot.waypoints:
        out[wp.proxy_id] = _waypoint(snapshot, wp, waypoint_config.translate(snapshot, wp), None, {})
    return dict(sorted(out.items()))


def _waypoint(snapshot: MeshSnapshot, wp, r: dict[str, Any], cache: TranslationCache | None, patched_out: dict) -> ProxyConfig:
    listeners, clusters, routes, reports = tuple(r["listeners"]), tuple(r["clusters"]), tuple(r["routes"]), ()
    selecting = snapshot.envoy_filters_for(wp)
    if selecting:
        # EnvoyFilter patches apply last, to the generated config, as istiod applies them (spec §8.3).
        inputs = (listeners, clusters, routes, selecting, snapshot.root_namespace)
        previous = cache.patched.get(wp.proxy_id) if cache is not None else None
        if previous is not None and previous[0] == inputs:
            listeners, clusters, routes, reports = previous[1]
        else:
            patched = envoyfilter.apply(listeners, clusters, routes, envoyfilter.order(list(selecting), snapshot.root_namespace))
            listeners, clusters, routes, reports = tuple(patched.listeners), tuple(patched.clusters), tuple(patched.routes), patched.report
        patched_out[wp.proxy_id] = (inputs, (listeners, clusters, routes, reports))
    return ProxyConfig(wp.proxy_id, "waypoint", wp.address, listeners, clusters, routes, tuple(r["secrets"]), reports)


def _reuse(previous: ProxyConfig | None, config: ProxyConfig) -> ProxyConfig:
    """The earlier config object when equal, so the fleet and xDS see "unchanged" at the cost of an identity
    check (unchanged resources are the very same objects, so the comparison is cheap)."""
    return previous if previous is not None and previous == config else config


def translate_incremental(snapshot: MeshSnapshot, cache: TranslationCache | None = None) -> tuple[dict[str, ProxyConfig], TranslationCache]:
    """`translate`, redoing only what changed since the translation that left `cache`.

    A ztunnel is translated again only when something it read from the snapshot changed; a waypoint only
    for the services whose inputs changed (`waypoint.translate_cached`). Unchanged resources and configs
    are the earlier objects. The result equals `translate(snapshot)`."""
    cache = cache or TranslationCache()
    diff = Diff(cache.snapshot, snapshot)
    out: dict[str, ProxyConfig] = {}
    ztunnel_reads: dict[str, tuple[tuple, tuple]] = {}
    for node in snapshot.nodes:
        pid = ztunnel_config.proxy_id(node)
        address = snapshot.ztunnel_address(node)
        args = (node, address)
        previous = cache.ztunnel_reads.get(pid)
        if previous is not None and pid in cache.configs and previous[0] == args and not diff.any_changed(previous[1]):
            out[pid], ztunnel_reads[pid] = cache.configs[pid], previous
            continue
        recorder = Recorder(snapshot)
        r = ztunnel_config.translate(recorder, node)  # type: ignore[arg-type] - reads like a MeshSnapshot
        ztunnel_reads[pid] = (args, tuple(recorder.deps))
        config = ProxyConfig(pid, "ztunnel", address, tuple(r["listeners"]), tuple(r["clusters"]), tuple(r["routes"]), tuple(r["secrets"]))
        out[pid] = _reuse(cache.configs.get(pid), config)
    memos: dict[str, waypoint_config.Memo] = {}
    patched: dict[str, tuple[tuple, tuple]] = {}
    for wp in snapshot.waypoints:
        r, memos[wp.proxy_id] = waypoint_config.translate_cached(snapshot, wp, cache.waypoint_memos.get(wp.proxy_id), diff)
        out[wp.proxy_id] = _reuse(cache.configs.get(wp.proxy_id), _waypoint(snapshot, wp, r, cache, patched))
    configs = dict(sorted(out.items()))
    return configs, TranslationCache(snapshot, configs, ztunnel_reads, memos, patched)


def with_patch_status(snapshot: MeshSnapshot, configs: dict[str, ProxyConfig]) -> MeshSnapshot:
    """The snapshot with each EnvoyFilter's conditions: which waypoints it selects, and which patches matched
    nothing there (istiod reports neither; users are left guessing why a patch has no effect)."""
    if not snapshot.envoy_filters and not any(s.kind == "EnvoyFilter" for s in snapshot.statuses):
        return snapshot  # nothing to report (the build's statuses are already in this order)
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


__all__ = ["ProxyConfig", "TranslationCache", "bootstrap", "translate", "translate_incremental", "with_patch_status"]
