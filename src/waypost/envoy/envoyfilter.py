"""EnvoyFilter patches applied to one waypoint's Envoy config. Pure: dicts in, new dicts and a report out.

Semantics are istiod's (istio/istio `pilot/pkg/networking/core/envoyfilter/{listener,cluster,rc}_patch.go`,
`extension_configuration_patch.go`, `util.go`, `pilot/pkg/model/envoyfilter.go`, `pkg/proto/merge`), walked
in the same order over the same structure:

* Contexts. A waypoint's listeners and route configurations are built in the SIDECAR_INBOUND context
  (`listener_builder.go` patchListeners; `buildSidecarInboundHTTPRouteConfig`). Its clusters are not:
  istiod patches the `outbound|port|subset|host` clusters of a waypoint in SIDECAR_OUTBOUND
  (`cluster.go`, case model.Waypoint: outboundPatcher), never patches its inbound ones (`inbound-vip|…`,
  `main_internal`, `connect_originate`: built without a patcher), and adds clusters (CLUSTER ADD) only for
  an explicit SIDECAR_INBOUND context. A LISTENER ADD or CLUSTER ADD with context ANY is not applied to
  waypoints (istio/istio#49863). ANY matches everything else; WAYPOINT-context patches are never applied
  (istiod has no code for them). EXTENSION_CONFIG ignores the context, as istiod does.
* MERGE is `pkg/proto/merge` on the Envoy messages (by descriptor): scalars replaced, messages merged,
  lists appended (replaced by MERGE_AND_REPLACE_LIST), map entries replaced per key, Durations replaced
  whole, and an `Any` (a typed_config) replaced whole. Filters (listener/network/HTTP) and transport
  sockets are the exception: their typed_configs are unpacked and merged field by field
  (`util.MergeAnyWithAny`) when the patch names the same type. Filter merges use MERGE only.
* INSERT_BEFORE/AFTER/FIRST are kept for HTTP/network/listener filters and HTTP routes and turn into ADD
  elsewhere (`convertToEnvoyFilterWrapper`).

Where waypost's layout differs from Istio's, the rules are mapped onto ours: route configuration names are
`<fqdn>:<port>` (RDS) or `<address>:<port>` (inline, workload chains), and `routeConfiguration.portNumber`
matches that port; the inline route configs of `main_internal`'s chains are patched like RDS ones, before
the listener patches (istiod patches them when it builds them; it never patches connect_terminate's). ECDS is not served: an EXTENSION_CONFIG ADD is resolved
into every filter whose `config_discovery` asks for that name. BOOTSTRAP (deprecated, never applied by
istiod) is MERGEd into the bootstrap dict when one is given. `filterClass` (never implemented by istiod,
istio/istio#51177) places an HTTP_FILTER ADD as the API documents it: AUTHN after jwt_authn, AUTHZ after
the RBAC filters, STATS before the telemetry filters.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from waypost.api.envoyfilter import (
    HCM,
    VALUE_TYPES,
    EnvoyConfigObjectMatch,
    EnvoyFilter,
    canonical_value,
)

from . import common as c
from . import extauthz, jwt, routing, telemetry
from .waypoint import MAIN_INTERNAL

# The Istio version waypost's proxies report to `match.proxy.proxyVersion` (ISTIO_VERSION node metadata):
# the Istio release whose semantics waypost follows (istio/istio master, VERSION 1.32, with Envoy 1.40).
ISTIO_VERSION = "1.32.0"

WAYPOINT_CONTEXT = "SIDECAR_INBOUND"
OUTBOUND_CONTEXT = "SIDECAR_OUTBOUND"
VIRTUAL_LISTENERS = ("virtualInbound", "virtualOutbound")  # istiod's; a waypoint has none
MAX_PROXY_VERSION_LEN = 1024

_FILTER_KINDS = ("HTTP_FILTER", "NETWORK_FILTER", "HTTP_ROUTE", "LISTENER_FILTER")
_MERGES = ("MERGE", "MERGE_AND_REPLACE_LIST")
_INSERTS = ("INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST")

# What istiod does with each (applyTo, operation); anything else is accepted by validation and ignored.
SUPPORTED: dict[str, frozenset[str]] = {
    "LISTENER": frozenset({"MERGE", "MERGE_AND_REPLACE_LIST", "REMOVE", "ADD"}),
    "FILTER_CHAIN": frozenset({"MERGE", "MERGE_AND_REPLACE_LIST", "REMOVE", "ADD"}),
    "NETWORK_FILTER": frozenset({"MERGE", "ADD", "REMOVE", "REPLACE", *_INSERTS}),
    "HTTP_FILTER": frozenset({"MERGE", "ADD", "REMOVE", "REPLACE", *_INSERTS}),
    "LISTENER_FILTER": frozenset({"MERGE", "ADD", "REMOVE", "REPLACE", *_INSERTS}),
    "ROUTE_CONFIGURATION": frozenset({"MERGE", "MERGE_AND_REPLACE_LIST"}),
    "VIRTUAL_HOST": frozenset({"MERGE", "MERGE_AND_REPLACE_LIST", "REMOVE", "REPLACE", "ADD"}),
    "HTTP_ROUTE": frozenset({"MERGE", "MERGE_AND_REPLACE_LIST", "REMOVE", "ADD", *_INSERTS}),
    "CLUSTER": frozenset({"MERGE", "MERGE_AND_REPLACE_LIST", "REMOVE", "ADD"}),
    "EXTENSION_CONFIG": frozenset({"ADD"}),
    "BOOTSTRAP": frozenset({"MERGE", "MERGE_AND_REPLACE_LIST"}),
}

# filterClass: where an HTTP_FILTER ADD goes, as "before the first of our filters ranked at least N".
_HTTP_FILTER_RANK = {
    extauthz.HTTP_RBAC: 2,  # 0 when it holds only shadow rules (CUSTOM's marker, which runs before authn)
    "envoy.filters.http.ext_authz": 0,
    jwt.JWT_FILTER: 1,
    routing.CORS_FILTER: 3,
    **{name: 4 for name in telemetry.TELEMETRY_HTTP_FILTERS},
    "envoy.filters.http.router": 5,
}
_FILTER_CLASS_BEFORE = {"AUTHN": 2, "AUTHZ": 3, "STATS": 4}


@dataclass(frozen=True)
class Patch:
    """One configPatch of one EnvoyFilter, in the order it applies."""

    envoyfilter: str  # namespace/name
    index: int  # position in spec.configPatches
    apply_to: str
    operation: str
    value: dict[str, Any] | None  # canonical (see waypost.api.envoyfilter)
    match: EnvoyConfigObjectMatch | None = None
    filter_class: str = "UNSPECIFIED"

    @property
    def context(self) -> str:
        return self.match.context if self.match is not None else "ANY"

    @property
    def key(self) -> tuple[str, int]:
        return (self.envoyfilter, self.index)


@dataclass(frozen=True)
class PatchReport:
    """What one patch did to one proxy: `matched` objects its match selected (or containers it added to),
    `changed` objects it added, removed, replaced or modified. `matched == 0` is "matched nothing"."""

    envoyfilter: str
    index: int
    apply_to: str
    operation: str
    matched: int = 0
    changed: int = 0
    errors: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, int]:
        return (self.envoyfilter, self.index)


@dataclass(frozen=True)
class Patched:
    listeners: tuple[dict[str, Any], ...]
    clusters: tuple[dict[str, Any], ...]
    routes: tuple[dict[str, Any], ...]
    bootstrap: dict[str, Any] | None
    report: tuple[PatchReport, ...]


def order(envoyfilters: Iterable[EnvoyFilter], root_namespace: str) -> list[Patch]:
    """The patches of the EnvoyFilters selecting one proxy, in istiod's order (PushContext.EnvoyFilters):
    priority ascending, then root-namespace filters first, then creation time, then `name.namespace`;
    within a filter, configPatches in list order. Null patches are skipped as istiod skips them."""
    ordered = sorted(
        envoyfilters,
        key=lambda ef: (ef.spec.priority, ef.namespace != root_namespace, ef.creation_time, f"{ef.name}.{ef.namespace}"),
    )
    out: list[Patch] = []
    for ef in ordered:
        for index, cp in enumerate(ef.spec.config_patches):
            if cp is None or cp.patch is None:
                continue
            out.append(Patch(f"{ef.namespace}/{ef.name}", index, cp.apply_to, cp.patch.operation, cp.patch.value, cp.match, cp.patch.filter_class))
    return out


class _Run:
    """Counters for the report, one slot per input patch."""

    def __init__(self, patches: Sequence[Patch]) -> None:
        self.matched = [0] * len(patches)
        self.changed = [0] * len(patches)
        self.errors: list[list[str]] = [[] for _ in patches]
        self.notes: list[list[str]] = [[] for _ in patches]

    def hit(self, p: _P, matched: int = 1, changed: int = 1) -> None:
        self.matched[p.pos] += matched
        self.changed[p.pos] += changed

    def error(self, p: _P, message: str) -> None:
        if message not in self.errors[p.pos]:
            self.errors[p.pos].append(message)

    def note(self, p: _P, message: str) -> None:
        if message not in self.notes[p.pos]:
            self.notes[p.pos].append(message)


@dataclass
class _P:
    """A patch as applied: its position in the input, and its effective operation."""

    pos: int
    patch: Patch
    operation: str
    value: dict[str, Any] | None

    @property
    def match(self) -> EnvoyConfigObjectMatch | None:
        return self.patch.match

    @property
    def context(self) -> str:
        return self.patch.context


def apply(
    listeners: Sequence[Mapping[str, Any]],
    clusters: Sequence[Mapping[str, Any]],
    routes: Sequence[Mapping[str, Any]],
    patches: Sequence[Patch],
    bootstrap: Mapping[str, Any] | None = None,
    *,
    proxy_version: str = ISTIO_VERSION,
    proxy_metadata: Mapping[str, str] | None = None,
) -> Patched:
    """Apply `patches` (already in order, see `order`) to one waypoint's resources; the inputs are not modified.

    `proxy_version` and `proxy_metadata` are what `match.proxy` is compared with (the node's ISTIO_VERSION and
    its metadata; waypost's bootstrap sends no metadata). Every patch gets one PatchReport, in input order.
    """
    run = _Run(patches)
    by_kind: dict[str, list[_P]] = {k: [] for k in VALUE_TYPES}
    for pos, patch in enumerate(patches):
        _prepare(pos, patch, run, by_kind, proxy_version, proxy_metadata or {})
    out_clusters = _patch_clusters([copy.deepcopy(dict(x)) for x in clusters], by_kind, run)
    out_routes = [copy.deepcopy(dict(x)) for x in routes]
    for rc in out_routes:
        _patch_route_configuration(rc, by_kind, run)
    out_listeners = [copy.deepcopy(dict(x)) for x in listeners]
    for lis in out_listeners:
        if lis.get("name") == MAIN_INTERNAL:  # the service/workload chains; not connect_terminate's CONNECT routes
            for rc in _inline_route_configs(lis):
                _patch_route_configuration(rc, by_kind, run)
    out_listeners = _patch_listeners(out_listeners, by_kind, run)
    _resolve_extension_configs(out_listeners, by_kind["EXTENSION_CONFIG"], run)
    out_bootstrap = copy.deepcopy(dict(bootstrap)) if bootstrap is not None else None
    for p in by_kind["BOOTSTRAP"]:
        if out_bootstrap is None:
            run.note(p, "no bootstrap to patch")
        elif p.operation in _MERGES and _context_ok(p, WAYPOINT_CONTEXT):
            _merge_into(run, p, VALUE_TYPES["BOOTSTRAP"], out_bootstrap)
    _check_duplicates(out_listeners, out_clusters, patches, run)
    report = tuple(
        PatchReport(p.envoyfilter, p.index, p.apply_to, p.operation, run.matched[i], run.changed[i], tuple(run.errors[i]), tuple(run.notes[i]))
        for i, p in enumerate(patches)
    )
    return Patched(tuple(out_listeners), tuple(out_clusters), tuple(out_routes), out_bootstrap, report)


def _prepare(pos: int, patch: Patch, run: _Run, by_kind: dict[str, list[_P]], version: str, metadata: Mapping[str, str]) -> None:
    kind = patch.apply_to
    operation = patch.operation
    if kind not in VALUE_TYPES:
        run.errors[pos].append(f"unknown applyTo {kind}")
        return
    if operation in _INSERTS and kind not in _FILTER_KINDS:
        operation = "ADD"  # convertToEnvoyFilterWrapper
    if patch.context == "WAYPOINT":
        run.notes[pos].append("istiod applies no patch with context WAYPOINT")
        return
    if patch.context == "GATEWAY":
        run.notes[pos].append("context GATEWAY never selects a waypoint's config")
    elif patch.context == OUTBOUND_CONTEXT and kind not in ("CLUSTER", "EXTENSION_CONFIG"):
        run.notes[pos].append("a waypoint's listeners and route configurations are in context SIDECAR_INBOUND")
    if not _proxy_match(patch, version, metadata):
        run.notes[pos].append(f"match.proxy does not select this proxy (ISTIO_VERSION {version})")
        return
    if operation not in SUPPORTED[kind]:
        run.notes[pos].append(f"istiod does not apply {patch.operation} to {kind}")
        return
    value = patch.value
    if value is not None:
        try:
            value = canonical_value(kind, value)
        except ValueError as exc:
            run.errors[pos].append(str(exc))
            return
    elif operation != "REMOVE":
        run.errors[pos].append("Envoy filter: missing patch value for non-remove operation")
        return
    by_kind[kind].append(_P(pos, patch, operation, value))


def _proxy_match(patch: Patch, version: str, metadata: Mapping[str, str]) -> bool:
    """proxyMatch (pilot/pkg/model/envoyfilter.go): RE2 `MatchString` is a search, not a full match."""
    proxy = patch.match.proxy if patch.match is not None else None
    if proxy is None:
        return True
    if proxy.proxy_version:
        if len(proxy.proxy_version) > MAX_PROXY_VERSION_LEN or not version:
            return False
        try:
            if re.search(proxy.proxy_version, version) is None:
                return False
        except re.error:
            return False
    return all(metadata.get(k) == v for k, v in proxy.metadata.items())


def _context_ok(p: _P, context: str) -> bool:
    return p.context in (context, "ANY")


# ---------------------------------------------------------------------------------------------- merging


def _message_class(type_name: str):
    # The Envoy API's generated classes, loaded once by the codec (descriptor lookups only; no I/O).
    from waypost.xds import codec

    return codec.message_class("type.googleapis.com/" + type_name)


def proto_merge(dst, src, replace_list: bool = False) -> None:
    """istio `pkg/proto/merge`: Merge, or MergeWithReplaceList, of `src` into `dst` (same message type)."""
    for fd, value in src.ListFields():
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            target = getattr(dst, fd.name)
            value_fd = fd.message_type.fields_by_name["value"]
            for key in value:
                if value_fd.message_type is not None:
                    target[key].CopyFrom(value[key])  # map entries are replaced, not merged
                else:
                    target[key] = value[key]
        elif fd.is_repeated:
            target = getattr(dst, fd.name)
            if replace_list:
                del target[:]
            target.extend(value)
        elif fd.message_type is not None:
            target = getattr(dst, fd.name)
            if fd.message_type.full_name == "google.protobuf.Duration":
                target.CopyFrom(value)  # istio's ReplaceMergeFn for Duration
            else:
                target.SetInParent()
                proto_merge(target, value, replace_list)
        else:
            setattr(dst, fd.name, value)


def _parse(type_name: str, value: Mapping[str, Any]):
    from google.protobuf import json_format

    message = _message_class(type_name)()
    json_format.ParseDict(value, message)
    return message


def _dump(message) -> dict[str, Any]:
    from google.protobuf import json_format

    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def merge_value(type_name: str, dst: Mapping[str, Any], src: Mapping[str, Any], replace_list: bool = False) -> dict[str, Any]:
    """`src` proto-merged into `dst`, both JSON-form dicts of the Envoy message `type_name`."""
    message = _parse(type_name, dst)
    before = _dump(message)
    proto_merge(message, _parse(type_name, src), replace_list)
    return _restore(dst, before, _dump(message))


def _restore(original: Any, before: Any, after: Any) -> Any:
    """`after` (a merge result in canonical JSON form), keeping `original`'s own spelling of every part the
    merge left alone (`before` is `original` in canonical form): an untouched `codec_type: AUTO` or
    `value_fixed: 1` stays as written instead of becoming absent (a default) or "1" (an int64)."""
    if after == before:
        return copy.deepcopy(original)
    if isinstance(original, Mapping) and isinstance(before, dict) and isinstance(after, dict):
        out = {}
        for key, value in after.items():
            out[key] = _restore(original[key], before[key], value) if key in original and key in before else value
        for key, value in original.items():
            if key not in before and key not in after:
                out[key] = copy.deepcopy(value)  # a default value, written out; the merge did not set it
        return out
    if isinstance(original, list) and isinstance(before, list) and isinstance(after, list) and len(original) == len(before) <= len(after):
        # a merge appends to a list (or replaces it): the first elements line up with the old ones
        return [_restore(o, b, a) for o, b, a in zip(original, before, after)] + after[len(before) :]
    return after


class _MergeError(ValueError):
    pass


def merge_any(dst: Mapping[str, Any], src: Mapping[str, Any]) -> dict[str, Any]:
    """util.MergeAnyWithAny on two JSON-form `Any`s (typed_config): unpacked, merged, packed again.

    Different types cannot merge (istiod's merge panics on the descriptor mismatch): _MergeError.
    """
    from google.protobuf import any_pb2, json_format

    if dst.get("@type") != src.get("@type"):
        raise _MergeError(f"cannot merge typed_config {src.get('@type')} into {dst.get('@type')}: the types differ")
    packed_dst, packed_src = any_pb2.Any(), any_pb2.Any()
    json_format.ParseDict(dst, packed_dst)
    json_format.ParseDict(src, packed_src)
    cls = _message_class(packed_dst.type_url.split("/", 1)[-1])
    a, b = cls(), cls()
    packed_dst.Unpack(a)
    packed_src.Unpack(b)
    before = json_format.MessageToDict(packed_dst, preserving_proto_field_name=True)
    proto_merge(a, b)
    out = any_pb2.Any()
    out.Pack(a, deterministic=True)
    return _restore(dst, before, json_format.MessageToDict(out, preserving_proto_field_name=True))


def _merge_into(run: _Run, p: _P, type_name: str, target: dict[str, Any]) -> bool:
    """Generic MERGE/MERGE_AND_REPLACE_LIST of the patch value into `target`, in place."""
    try:
        merged = merge_value(type_name, target, p.value or {}, p.operation == "MERGE_AND_REPLACE_LIST")
    except Exception as exc:  # noqa: BLE001 - the target is ours and valid: a failure here is a patch we cannot apply
        run.error(p, f"merge failed: {exc}")
        return False
    target.clear()
    target.update(merged)
    run.hit(p)
    return True


def _merge_filter(run: _Run, p: _P, target: dict[str, Any]) -> None:
    """The MERGE of a listener/network/HTTP filter: rename if the value has a name, merge typed_config field-wise."""
    if target.get("typed_config") is None:
        run.hit(p, 1, 0)
        run.note(p, f"filter {target.get('name', '')!r} has no typed_config: istiod skips the merge")
        return
    user = p.value or {}
    if user.get("typed_config") is not None:
        try:
            target["typed_config"] = merge_any(target["typed_config"], user["typed_config"])
        except _MergeError as exc:
            run.error(p, f"filter {target.get('name', '')!r}: {exc}")
            return
    if user.get("name"):
        target["name"] = user["name"]
    run.hit(p)


# --------------------------------------------------------------------------------------------- clusters


def parse_subset_key(name: str) -> tuple[str, str, str, int]:
    """model.ParseSubsetKey: `direction|port|subset|hostname` → (direction, subset, hostname, port)."""
    sep = "_." if name.startswith(("outbound_.", "inbound_.")) else "|"
    parts = name.split(sep, 3)
    direction = parts[0] if len(parts) > 1 else ""
    port = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else 0
    subset = parts[2] if len(parts) > 3 else ""
    hostname = parts[3] if len(parts) > 3 and sep not in parts[3] else ""
    return direction, subset, hostname, port


def cluster_context(name: str) -> str | None:
    """The context istiod patches a waypoint cluster in: outbound clusters in SIDECAR_OUTBOUND; the rest never."""
    return OUTBOUND_CONTEXT if name.startswith("outbound|") else None


def _cluster_match(cluster: Mapping[str, Any], p: _P) -> bool:
    m = p.match.cluster if p.match is not None else None
    if m is None:
        return True
    if m.name:
        return m.name == cluster.get("name", "")
    _, subset, hostname, port = parse_subset_key(cluster.get("name", ""))
    if m.subset and m.subset != subset:
        return False
    if m.service and m.service != hostname:
        return False
    return not (m.port_number and m.port_number != port)


def _merge_cluster_transport_socket(cluster: dict[str, Any], value: Mapping[str, Any]) -> bool:
    """mergeTransportSocketCluster: True when the transport socket part of the patch was handled here."""
    patch_socket = value.get("transport_socket")
    if patch_socket is None:
        return False
    socket = None
    matches = cluster.get("transport_socket_matches") or []
    if matches:
        for entry in matches:
            if entry.get("transport_socket") is not None and entry["transport_socket"].get("name", "") == patch_socket.get("name", ""):
                socket = entry["transport_socket"]
                break
        if socket is None:
            return True  # a transport_socket next to transport_socket_matches would be invalid: dropped
    elif cluster.get("transport_socket") is not None and cluster["transport_socket"].get("name", "") == patch_socket.get("name", ""):
        socket = cluster["transport_socket"]
    if socket is None:
        cluster["transport_socket"] = copy.deepcopy(dict(patch_socket))
    elif socket.get("typed_config") is not None and patch_socket.get("typed_config") is not None:
        socket["typed_config"] = merge_any(socket["typed_config"], patch_socket["typed_config"])
    return True


def _patch_clusters(clusters: list[dict[str, Any]], by_kind: dict[str, list[_P]], run: _Run) -> list[dict[str, Any]]:
    out = []
    for cluster in clusters:
        context = cluster_context(cluster.get("name", ""))
        removed = False
        for p in by_kind["CLUSTER"] if context is not None else ():
            if not (_context_ok(p, context) and _cluster_match(cluster, p)):
                continue
            if p.operation == "REMOVE":
                run.hit(p)
                removed = True
                break
            if p.operation in _MERGES:
                _merge_with_transport_socket(run, p, cluster, "CLUSTER", _merge_cluster_transport_socket, f"cluster {cluster.get('name')!r}")
        if not removed:
            out.append(cluster)
    return out + _added(by_kind["CLUSTER"], run, "a waypoint adds clusters only for context SIDECAR_INBOUND")


def _added(patches: list[_P], run: _Run, wrong_context: str) -> list[dict[str, Any]]:
    """The values of the top-level ADD patches (clusters, listeners) whose context is the waypoint's."""
    out = []
    for p in patches:
        if p.operation != "ADD":
            continue
        if p.context != WAYPOINT_CONTEXT:
            run.note(p, wrong_context)
            continue
        out.append(copy.deepcopy(p.value or {}))
        run.hit(p)
    return out


# ------------------------------------------------------------------------------------------------ routes


def route_port(name: str) -> int:
    """The service port a route configuration serves, from waypost's names `<fqdn>:<port>` / `<ip>:<port>`.

    istiod reads it from `inbound|port|…` names or a bare port number (getListenerPortFromName).
    """
    if name.startswith("inbound"):
        return parse_subset_key(name)[3]
    tail = name.rpartition(":")[2]
    return int(tail) if tail.isdigit() else 0


def _rc_match(rc: Mapping[str, Any], p: _P) -> bool:
    m = p.match.route_configuration if p.match is not None else None
    if m is None:
        return True
    if m.name and m.name != rc.get("name", ""):
        return False
    return not (m.port_number and m.port_number != route_port(rc.get("name", "")))


def _vhost_match(vhost: Mapping[str, Any] | None, p: _P) -> bool:
    m = p.match.route_configuration if p.match is not None else None
    if m is None or m.vhost is None:
        return True
    if vhost is None:
        return False
    return (not m.vhost.name or m.vhost.name == vhost.get("name", "")) and (
        not m.vhost.domain_name or m.vhost.domain_name in vhost.get("domains", [])
    )


def _has_route_match(p: _P) -> bool:
    m = p.match.route_configuration if p.match is not None else None
    return m is not None and m.vhost is not None and m.vhost.route is not None


def _route_match(route: Mapping[str, Any] | None, p: _P) -> bool:
    if not _has_route_match(p):
        return True
    if route is None:
        return False
    m = p.match.route_configuration.vhost.route  # type: ignore[union-attr]
    if m.name and m.name != route.get("name", ""):
        return False
    if m.action != "ANY":
        for key, action in (("route", "ROUTE"), ("redirect", "REDIRECT"), ("direct_response", "DIRECT_RESPONSE")):
            if key in route:
                return m.action == action
    return True


def _ctx_rc(p: _P, rc: Mapping[str, Any]) -> bool:
    return _context_ok(p, WAYPOINT_CONTEXT) and _rc_match(rc, p)


def _patch_route_configuration(rc: dict[str, Any], by_kind: dict[str, list[_P]], run: _Run) -> None:
    """ApplyRouteConfigurationPatches, in place."""
    for p in by_kind["ROUTE_CONFIGURATION"]:
        if p.operation in _MERGES and _ctx_rc(p, rc):
            _merge_into(run, p, VALUE_TYPES["ROUTE_CONFIGURATION"], rc)
    vhosts: list[dict[str, Any]] = rc.get("virtual_hosts", [])
    removed: set[str] = set()
    for i in range(len(vhosts)):
        if _patch_virtual_host(rc, vhosts, i, by_kind, run):
            removed.add(vhosts[i].get("name", ""))
    for p in by_kind["VIRTUAL_HOST"]:
        if p.operation == "ADD" and _ctx_rc(p, rc):
            vhosts.append(copy.deepcopy(p.value or {}))
            run.hit(p)
    if removed:  # by name: an added virtual host of a removed name goes too
        vhosts = [v for v in vhosts if v.get("name", "") not in removed]
    _set_list(rc, "virtual_hosts", vhosts)


def _patch_virtual_host(rc: dict[str, Any], vhosts: list[dict[str, Any]], i: int, by_kind: dict[str, list[_P]], run: _Run) -> bool:
    for p in by_kind["VIRTUAL_HOST"]:
        if not (_ctx_rc(p, rc) and _vhost_match(vhosts[i], p)):
            continue
        if p.operation == "REMOVE":
            run.hit(p)
            return True
        if p.operation in _MERGES:
            _merge_into(run, p, VALUE_TYPES["VIRTUAL_HOST"], vhosts[i])
        elif p.operation == "REPLACE":
            vhosts[i] = copy.deepcopy(p.value or {})
            run.hit(p)
    _patch_http_routes(rc, vhosts[i], by_kind, run)
    return False


def _patch_http_routes(rc: dict[str, Any], vhost: dict[str, Any], by_kind: dict[str, list[_P]], run: _Run) -> None:
    routes: list[dict[str, Any] | None] = list(vhost.get("routes", []))
    for index in range(len(routes)):
        for p in by_kind["HTTP_ROUTE"]:
            if not (_ctx_rc(p, rc) and _vhost_match(vhost, p) and _route_match(routes[index], p)):
                continue
            if p.operation == "REMOVE":
                routes[index] = None
                run.hit(p)
                break
            if p.operation in _MERGES:
                _merge_into(run, p, VALUE_TYPES["HTTP_ROUTE"], routes[index])  # type: ignore[arg-type]
    for p in by_kind["HTTP_ROUTE"]:
        if not (_ctx_rc(p, rc) and _vhost_match(vhost, p)):
            continue
        value = p.value or {}
        if p.operation == "ADD":
            routes.append(copy.deepcopy(value))
            run.hit(p)
        elif p.operation in ("INSERT_BEFORE", "INSERT_AFTER") and not _has_route_match(p):
            # without a route match: INSERT_AFTER is ADD, INSERT_BEFORE goes first
            routes.insert(0 if p.operation == "INSERT_BEFORE" else len(routes), copy.deepcopy(value))
            run.hit(p)
        elif p.operation in ("INSERT_BEFORE", "INSERT_AFTER"):
            at = _first(routes, lambda r, p=p: _route_match(r, p))
            if at is not None:
                routes.insert(at if p.operation == "INSERT_BEFORE" else at + 1, copy.deepcopy(value))
                run.hit(p)
        elif p.operation == "INSERT_FIRST":
            # with a route match, only when a matching route exists; always at the top
            if not _has_route_match(p) or _first(routes, lambda r, p=p: _route_match(r, p)) is not None:
                routes.insert(0, copy.deepcopy(value))
                run.hit(p)
    _set_list(vhost, "routes", [r for r in routes if r is not None])


def _inline_route_configs(listener: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for chain in _chains(listener):
        for f in chain.get("filters", []):
            config = f.get("typed_config") or {}
            if f.get("name") == HCM and config.get("@type") == c.T_HCM and isinstance(config.get("route_config"), dict):
                out.append(config["route_config"])
    return out


# --------------------------------------------------------------------------------------------- listeners


def _chains(listener: Mapping[str, Any]) -> list[dict[str, Any]]:
    chains = list(listener.get("filter_chains", []))
    if listener.get("default_filter_chain"):
        chains.append(listener["default_filter_chain"])
    return chains


def _listener_match(listener: Mapping[str, Any], p: _P) -> bool:
    m = p.match.listener if p.match is not None else None
    if m is None:
        return True
    if m.name and m.name != listener.get("name", ""):
        return False
    if p.patch.apply_to != "LISTENER" and listener.get("name") in VIRTUAL_LISTENERS:
        return True
    if m.port_number:
        port = ((listener.get("address") or {}).get("socket_address") or {}).get("port_value")
        if port != m.port_number:
            return False
    return True


def _chain_match(listener: Mapping[str, Any], chain: Mapping[str, Any], p: _P) -> bool:
    m = p.match.listener if p.match is not None else None
    if m is None:
        return True
    fcm = chain.get("filter_chain_match")
    if listener.get("name") in VIRTUAL_LISTENERS and m.port_number and (fcm or {}).get("destination_port") != m.port_number:
        return False
    match = m.filter_chain
    if match is None:
        return True
    if match.name and match.name != chain.get("name", ""):
        return False
    if match.sni and match.sni not in (fcm or {}).get("server_names", []):
        return False
    if match.transport_protocol and (fcm is None or fcm.get("transport_protocol", "") != match.transport_protocol):
        return False
    if match.application_protocols:
        if fcm is None:
            return False
        if any(proto not in fcm.get("application_protocols", []) for proto in match.application_protocols.split(",")):
            return False
    return not (match.destination_port and (fcm is None or fcm.get("destination_port") != match.destination_port))


def _ctx_chain(p: _P, listener: Mapping[str, Any], chain: Mapping[str, Any]) -> bool:
    return _context_ok(p, WAYPOINT_CONTEXT) and _listener_match(listener, p) and _chain_match(listener, chain, p)


def _has_network_filter_match(p: _P) -> bool:
    m = p.match.listener if p.match is not None else None
    return m is not None and m.filter_chain is not None and m.filter_chain.filter is not None


def _network_filter_match(f: Mapping[str, Any], p: _P) -> bool:
    return not _has_network_filter_match(p) or p.match.listener.filter_chain.filter.name == f.get("name", "")  # type: ignore[union-attr]


def _has_http_filter_match(p: _P) -> bool:
    return _has_network_filter_match(p) and p.match.listener.filter_chain.filter.sub_filter is not None  # type: ignore[union-attr]


def _http_filter_match(f: Mapping[str, Any], p: _P) -> bool:
    return not _has_http_filter_match(p) or p.match.listener.filter_chain.filter.sub_filter.name == f.get("name", "")  # type: ignore[union-attr]


def _has_listener_filter_match(p: _P) -> bool:
    m = p.match.listener if p.match is not None else None
    return m is not None and bool(m.listener_filter)


def _listener_filter_match(f: Mapping[str, Any], p: _P) -> bool:
    return not _has_listener_filter_match(p) or p.match.listener.listener_filter == f.get("name", "")  # type: ignore[union-attr]


def _first(items: Sequence[Any], predicate) -> int | None:
    for i, item in enumerate(items):
        if predicate(item):
            return i
    return None


def _set_list(holder: dict[str, Any], key: str, items: list[Any]) -> None:
    if items:
        holder[key] = items
    else:
        holder.pop(key, None)


def _list_op(run: _Run, p: _P, items: list[dict[str, Any]], has_match: bool, match) -> list[dict[str, Any]]:
    """ADD / INSERT_* / REPLACE / REMOVE on a filter list, as listener_patch.go does them for every filter kind;
    `match(filter, patch)` tells whether a filter is the one the patch names."""
    value = p.value or {}
    op = p.operation
    if op == "ADD" or (op == "INSERT_AFTER" and not has_match):
        run.hit(p)
        return items + [copy.deepcopy(value)]
    if op == "INSERT_FIRST" or (op == "INSERT_BEFORE" and not has_match):
        run.hit(p)
        return [copy.deepcopy(value)] + items
    if not has_match or op not in ("INSERT_BEFORE", "INSERT_AFTER", "REPLACE", "REMOVE"):
        return items  # REPLACE/REMOVE need a filter match; MERGE is done per filter
    if op == "REMOVE":
        kept = [f for f in items if not match(f, p)]
        if len(kept) != len(items):
            run.hit(p, len(items) - len(kept), len(items) - len(kept))
        return kept
    at = _first(items, lambda f: match(f, p))
    if at is None:
        return items
    run.hit(p)
    if op == "REPLACE":
        return items[:at] + [copy.deepcopy(value)] + items[at + 1 :]
    at = at if op == "INSERT_BEFORE" else at + 1
    return items[:at] + [copy.deepcopy(value)] + items[at:]


def _patch_listeners(listeners: list[dict[str, Any]], by_kind: dict[str, list[_P]], run: _Run) -> list[dict[str, Any]]:
    """patchListeners: every listener in turn, then listener ADDs; REMOVEd listeners dropped."""
    kept = [lis for lis in listeners if not _patch_listener(lis, by_kind, run)]
    return kept + _added(by_kind["LISTENER"], run, "a listener ADD applies to a waypoint only with context SIDECAR_INBOUND")


def _patch_listener(lis: dict[str, Any], by_kind: dict[str, list[_P]], run: _Run) -> bool:
    """patchListener; True when the listener is removed."""
    for p in by_kind["LISTENER"]:
        if not (_context_ok(p, WAYPOINT_CONTEXT) and _listener_match(lis, p)):
            continue
        if p.operation == "REMOVE":
            run.hit(p)
            return True
        if p.operation in _MERGES:
            _merge_into(run, p, VALUE_TYPES["LISTENER"], lis)
    _patch_listener_filters(lis, by_kind["LISTENER_FILTER"], run)
    _patch_filter_chains(lis, by_kind, run)
    return False


def _patch_listener_filters(lis: dict[str, Any], patches: list[_P], run: _Run) -> None:
    filters = list(lis.get("listener_filters", []))
    for p in patches:
        if not (_context_ok(p, WAYPOINT_CONTEXT) and _listener_match(lis, p)):
            continue
        has = _has_listener_filter_match(p)
        if p.operation == "MERGE":
            # istiod merges into every listener filter here (listener_patch.go); only the matched ones are meant
            for f in filters if has else ():
                if _listener_filter_match(f, p):
                    _merge_listener_filter(run, p, f)
            continue
        filters = _list_op(run, p, filters, has, _listener_filter_match)
    _set_list(lis, "listener_filters", filters)


def _merge_listener_filter(run: _Run, p: _P, target: dict[str, Any]) -> None:
    # mergeListenerFilter: like other filters, except istiod never renames a listener filter.
    if target.get("typed_config") is None:
        run.hit(p, 1, 0)
        return
    user = p.value or {}
    if user.get("typed_config") is not None:
        try:
            target["typed_config"] = merge_any(target["typed_config"], user["typed_config"])
        except _MergeError as exc:
            run.error(p, f"listener filter {target.get('name', '')!r}: {exc}")
            return
    run.hit(p)


def _patch_filter_chains(lis: dict[str, Any], by_kind: dict[str, list[_P]], run: _Run) -> None:
    chains = list(lis.get("filter_chains", []))
    dropped: set[int] = set()
    for chain in chains:
        # istiod skips, then drops, a chain without filters (nil); one emptied by a REMOVE stays.
        if not chain.get("filters") or _patch_filter_chain(lis, chain, by_kind, run):
            dropped.add(id(chain))
    default = lis.get("default_filter_chain")
    if default and default.get("filters") and _patch_filter_chain(lis, default, by_kind, run):
        del lis["default_filter_chain"]
    for p in by_kind["FILTER_CHAIN"]:
        if p.operation == "ADD" and _context_ok(p, WAYPOINT_CONTEXT) and _listener_match(lis, p):
            added = copy.deepcopy(p.value or {})
            if not added.get("filters"):
                run.hit(p, 1, 0)
                run.note(p, "istiod drops an added filter chain without filters")
                continue
            chains.append(added)
            run.hit(p)
    _set_list(lis, "filter_chains", [ch for ch in chains if id(ch) not in dropped])


def _patch_filter_chain(lis: dict[str, Any], chain: dict[str, Any], by_kind: dict[str, list[_P]], run: _Run) -> bool:
    """patchFilterChain; True when the chain is removed."""
    for p in by_kind["FILTER_CHAIN"]:
        if not _ctx_chain(p, lis, chain):
            continue
        if p.operation == "REMOVE":
            run.hit(p)
            return True
        if p.operation in _MERGES:
            _merge_with_transport_socket(run, p, chain, "FILTER_CHAIN", _merge_listener_transport_socket, f"filter chain {chain.get('name', '')!r}")
    _patch_network_filters(lis, chain, by_kind, run)
    return False


def _merge_with_transport_socket(run: _Run, p: _P, target: dict[str, Any], apply_to: str, merge_socket, where: str) -> None:
    """MERGE on a cluster or filter chain: a value carrying a matching transport socket merges only that
    (istiod's mergeTransportSocket* short-cut); anything else is a plain proto merge."""
    try:
        handled = merge_socket(target, p.value or {})
    except _MergeError as exc:
        run.error(p, f"{where}: {exc}")
        return
    if handled:
        run.hit(p)
    else:
        _merge_into(run, p, VALUE_TYPES[apply_to], target)


def _merge_listener_transport_socket(chain: dict[str, Any], value: Mapping[str, Any]) -> bool:
    """mergeTransportSocketListener: a same-named transport socket is merged field-wise and the rest of the
    patch is then ignored; otherwise the caller merges the whole chain."""
    patch_socket = value.get("transport_socket")
    socket = chain.get("transport_socket")
    if patch_socket is None or socket is None or patch_socket.get("name", "") != socket.get("name", ""):
        return False
    if socket.get("typed_config") is not None and patch_socket.get("typed_config") is not None:
        socket["typed_config"] = merge_any(socket["typed_config"], patch_socket["typed_config"])
    return True


def _patch_network_filters(lis: dict[str, Any], chain: dict[str, Any], by_kind: dict[str, list[_P]], run: _Run) -> None:
    filters = list(chain.get("filters", []))
    for p in by_kind["NETWORK_FILTER"]:
        if p.operation != "MERGE" and _ctx_chain(p, lis, chain):
            filters = _list_op(run, p, filters, _has_network_filter_match(p), _network_filter_match)
    chain["filters"] = filters
    for f in filters:  # including the filters just added, as istiod does
        for p in by_kind["NETWORK_FILTER"]:
            if p.operation == "MERGE" and _ctx_chain(p, lis, chain) and _network_filter_match(f, p):
                _merge_filter(run, p, f)
        if f.get("name") == HCM:
            _patch_http_filters(lis, chain, f, by_kind, run)
    _set_list(chain, "filters", filters)


def _patch_http_filters(lis: dict[str, Any], chain: dict[str, Any], hcm: dict[str, Any], by_kind: dict[str, list[_P]], run: _Run) -> None:
    config = hcm.get("typed_config")
    if not isinstance(config, dict) or config.get("@type") != c.T_HCM:
        return  # istiod cannot unmarshal it as an HttpConnectionManager and leaves it alone
    filters = list(config.get("http_filters", []))

    def selected(p: _P) -> bool:
        return _ctx_chain(p, lis, chain) and _network_filter_match(hcm, p)

    for p in by_kind["HTTP_FILTER"]:
        if p.operation == "MERGE" or not selected(p):
            continue
        if p.operation == "ADD" and p.patch.filter_class in _FILTER_CLASS_BEFORE:
            threshold = _FILTER_CLASS_BEFORE[p.patch.filter_class]
            at = _first(filters, lambda f, threshold=threshold: _rank(f) >= threshold)
            filters.insert(len(filters) if at is None else at, copy.deepcopy(p.value or {}))
            run.hit(p)
            continue
        filters = _list_op(run, p, filters, _has_http_filter_match(p), _http_filter_match)
    for f in filters:
        for p in by_kind["HTTP_FILTER"]:
            if p.operation == "MERGE" and selected(p) and _http_filter_match(f, p):
                _merge_filter(run, p, f)
    _set_list(config, "http_filters", filters)


def _rank(f: Mapping[str, Any]) -> int:
    """Where one of waypost's HTTP filters sits in Istio's order; user filters rank nowhere (-1)."""
    name = f.get("name", "")
    config = f.get("typed_config") or {}
    if name == extauthz.HTTP_RBAC and not config.get("rules") and not config.get("matcher"):
        return 0
    return _HTTP_FILTER_RANK.get(name, -1)


# -------------------------------------------------------------------------------------- extension configs


def _resolve_extension_configs(listeners: list[dict[str, Any]], patches: list[_P], run: _Run) -> None:
    """EXTENSION_CONFIG ADD without ECDS: each named TypedExtensionConfig is put in place of the
    `config_discovery` of every filter that asks for that name (Envoy requests ECDS resources by filter name).

    Two ADDs of one name would make istiod send two resources, which Envoy rejects: the first one is kept.
    """
    configs: dict[str, tuple[_P, dict[str, Any]]] = {}
    for p in patches:
        name = (p.value or {}).get("name", "")
        if name in configs:
            run.error(p, f"extension config {name!r} is already added by {configs[name][0].patch.envoyfilter} patch {configs[name][0].patch.index}: Envoy rejects two ECDS resources of one name")
            continue
        configs[name] = (p, p.value or {})
    if not configs:
        return
    for lis in listeners:
        filters = list(lis.get("listener_filters", []))
        for chain in _chains(lis):
            for f in chain.get("filters", []):
                filters.append(f)
                config = f.get("typed_config") or {}
                if f.get("name") == HCM and config.get("@type") == c.T_HCM:
                    filters.extend(config.get("http_filters", []))
        for f in filters:
            discovery = f.get("config_discovery")
            if discovery is None or f.get("name", "") not in configs:
                continue
            p, config = configs[f["name"]]
            typed = config.get("typed_config") or {}
            allowed = discovery.get("type_urls", [])
            types = {typed.get("@type"), typed.get("type_url")}  # a TypedStruct names its real type inside
            if allowed and not types & set(allowed):
                run.error(p, f"filter {f['name']!r} accepts only {', '.join(allowed)}, not {typed.get('@type')}")
                continue
            del f["config_discovery"]
            f["typed_config"] = copy.deepcopy(typed)
            run.hit(p)


# ------------------------------------------------------------------------------------------------ checks


def _check_duplicates(listeners: list[dict[str, Any]], clusters: list[dict[str, Any]], patches: Sequence[Patch], run: _Run) -> None:
    """An ADD of a name that exists already: Envoy rejects the whole response, so the report says which patch."""
    for kind, resources in (("LISTENER", listeners), ("CLUSTER", clusters)):
        seen: set[str] = set()
        for resource in resources:
            name = resource.get("name", "")
            if name in seen:
                for pos, patch in enumerate(patches):
                    if patch.apply_to == kind and (patch.value or {}).get("name") == name and run.changed[pos]:
                        run.errors[pos].append(f"{kind.lower()} {name!r} exists twice: Envoy rejects duplicate names")
            seen.add(name)
