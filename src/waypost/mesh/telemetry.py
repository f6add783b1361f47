"""Which Telemetry resources shape one waypoint chain, merged the way istiod merges them.

Source: istio `pilot/pkg/model/telemetry.go` (applicableTelemetries, mergeMetrics, mergeLogs). For a waypoint
chain (listener class SIDECAR_INBOUND, so workload mode SERVER):
1. the namespace-wide Telemetry of the root namespace (no selector labels, no targetRefs), then that of
   the waypoint's namespace, then that of the service's namespace when it differs;
2. then the Telemetries of that last namespace that target the chain: targetRefs to the waypoint Gateway,
   the GatewayClass (root namespace) or the chain's Service/ServiceEntry (selectors attach to sidecars).
Later entries win. Metrics: the last level that names providers sets them (default: MeshConfig
defaultProviders, Istio's `prometheus`); overrides accumulate, tag by tag; `ALL_METRICS` + `disabled`
drops every metric of the mode. Access logging: the last level naming providers sets them; each
provider's last matching entry decides whether it logs and with which filter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from waypost.api.telemetry import Telemetry

from . import policies
from .model import MeshSnapshot, Service, Waypoint

MODE = "SERVER"  # a waypoint chain is inbound-class traffic
PROMETHEUS = "prometheus"
ALL_METRICS = ("REQUEST_COUNT", "REQUEST_DURATION", "REQUEST_SIZE", "RESPONSE_SIZE", "TCP_OPENED_CONNECTIONS", "TCP_CLOSED_CONNECTIONS",
               "TCP_SENT_BYTES", "TCP_RECEIVED_BYTES", "GRPC_REQUEST_MESSAGES", "GRPC_RESPONSE_MESSAGES")


@dataclass(frozen=True)
class MetricOverride:
    disabled: bool = False
    tags: tuple[tuple[str, bool, str], ...] = ()  # (tag, remove?, CEL value), sorted by tag


@dataclass(frozen=True)
class LogProvider:
    name: str
    disabled: bool = False
    filter: str | None = None  # CEL expression


@dataclass(frozen=True)
class ChainTelemetry:
    metrics: bool = True  # False: no metric at all on this chain
    overrides: tuple[tuple[str, MetricOverride], ...] = ()  # metric name → override
    logging: tuple[LogProvider, ...] | None = None  # None: no Telemetry says anything: MeshConfig's legacy settings
    sources: tuple[str, ...] = field(default=())  # ns/name of the Telemetries that applied, in order

    def override(self, metric: str) -> MetricOverride:
        return dict(self.overrides).get(metric, MetricOverride())


def applicable(snapshot: MeshSnapshot, waypoint: Waypoint, service: Service | None) -> list[Telemetry]:
    telemetries = [t for t in snapshot.telemetries]

    def namespace_wide(namespace: str) -> Telemetry | None:
        return next((t for t in telemetries if t.namespace == namespace and t.namespace_wide), None)

    out = []
    root = snapshot.root_namespace
    if (t := namespace_wide(root)) is not None:
        out.append(t)
    namespace = waypoint.namespace
    if namespace != root and (t := namespace_wide(namespace)) is not None:
        out.append(t)
    if service is not None and service.namespace != namespace:
        namespace = service.namespace
        if (t := namespace_wide(namespace)) is not None:
            out.append(t)
    targeted = [t for t in telemetries if t.namespace == namespace and t.spec.targets]
    out.extend(policies.for_waypoint_chain(targeted, waypoint, service, root))
    return out


def _modes(mode: str) -> set[str]:
    return {"CLIENT", "SERVER"} if mode == "CLIENT_AND_SERVER" else {mode}


def merge(chain: list[Telemetry], default_metrics: tuple[str, ...], default_logging: tuple[str, ...]) -> ChainTelemetry:
    metric_levels = [m for t in chain for m in t.spec.metrics]
    providers = list(default_metrics)
    for m in metric_levels:
        if m.providers:
            providers = [p.name for p in m.providers]
    in_scope = set(providers)
    all_disabled = False
    overrides: dict[str, dict] = {}
    parent = list(default_metrics)
    for m in metric_levels:
        names = [p.name for p in m.providers] or parent
        parent = names
        if PROMETHEUS not in names or PROMETHEUS not in in_scope:
            continue
        for o in m.overrides:
            mode = o.match.mode if o.match else "CLIENT_AND_SERVER"
            if MODE not in _modes(mode):
                continue
            metric = o.match.metric if o.match and o.match.metric else ("ALL_METRICS" if not (o.match and o.match.custom_metric) else None)
            if metric == "ALL_METRICS" and o.disabled:
                all_disabled = True
                continue
            all_disabled = False  # a later, narrower level turns metrics back on
            names_ = ALL_METRICS if metric == "ALL_METRICS" else ((metric,) if metric else (o.match.custom_metric,))
            for name in names_:
                entry = overrides.setdefault(name, {"disabled": False, "tags": {}})
                if o.disabled is not None:
                    entry["disabled"] = o.disabled
                for tag, tag_override in o.tag_overrides.items():
                    entry["tags"][tag] = (tag_override.operation == "REMOVE", tag_override.value or "")
    metrics_on = PROMETHEUS in in_scope and not all_disabled
    merged = tuple(
        (name, MetricOverride(entry["disabled"], tuple((tag, remove, value) for tag, (remove, value) in sorted(entry["tags"].items()))))
        for name, entry in sorted(overrides.items())
    )
    return ChainTelemetry(metrics_on, merged, _logging(chain, default_logging), tuple(f"{t.namespace}/{t.name}" for t in chain))


def _logging(chain: list[Telemetry], defaults: tuple[str, ...]) -> tuple[LogProvider, ...] | None:
    levels = [t.spec.access_logging for t in chain if t.spec.access_logging]
    if not levels:
        return None if not defaults else tuple(LogProvider(name) for name in defaults)
    names = list(defaults)
    filters: dict[str, str | None] = {}
    for level in levels:
        seen: list[str] = []
        for entry in level:
            if entry.match is not None and MODE not in _modes(entry.match.mode):
                continue
            for p in entry.providers:
                seen.append(p.name)
                filters[p.name] = entry.filter.expression if entry.filter else None
        if seen:
            names = seen
    in_scope = set(names)
    result: dict[str, LogProvider] = {}
    parent = list(defaults)
    for level in levels:
        for entry in level:
            entry_names = [p.name for p in entry.providers] or parent
            parent = entry_names
            if entry.match is not None and MODE not in _modes(entry.match.mode):
                continue
            for name in entry_names:
                if name not in in_scope:
                    continue
                result[name] = LogProvider(name, disabled=True) if entry.disabled else LogProvider(name, filter=filters.get(name))
    return tuple(result[k] for k in sorted(result))


def for_chain(snapshot: MeshSnapshot, waypoint: Waypoint, service: Service | None) -> ChainTelemetry:
    mesh = snapshot.mesh_config
    defaults = mesh.default_providers if mesh is not None and mesh.default_providers is not None else None
    metrics = tuple(defaults.metrics) if defaults is not None and defaults.metrics else (PROMETHEUS,)
    logging = tuple(defaults.access_logging) if defaults is not None else ()
    return merge(applicable(snapshot, waypoint, service), metrics, logging)
