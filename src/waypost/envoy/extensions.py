"""WasmPlugin and TrafficExtension → Envoy Wasm and Lua filters, placed by phase in a waypoint chain.

Istio (`pilot/pkg/model/push_context.go` TrafficExtensionsByListenerInfo, `extensions.go`) converts a
WasmPlugin into a TrafficExtension; both become filters named `extensions.istio.io/trafficextension/<ns>.<name>`
(the ECDS resource name Istio uses; EnvoyFilter matches can name them). For one chain:
- the extensions attached with targetRefs to the waypoint, its GatewayClass (root namespace) or the chain's
  Service/ServiceEntry, looked up in the waypoint's namespace, the root namespace, then the service's;
- whose `match` selects SERVER traffic on the chain's port (a waypoint chain is inbound-class traffic);
- grouped by phase and, within a phase, stably sorted by `priority`, highest first (unset is lowest).

Placement (spec §5.1): AUTHN before jwt_authn, AUTHZ after it and before RBAC, STATS and UNSPECIFIED
after the RBAC filters and CORS, before the router. Envoy runs response-path filters in reverse order,
so phases run AUTHN→AUTHZ→STATS on requests and STATS→AUTHZ→AUTHN on responses (catalogue C69).

A Wasm module that could not be fetched or failed its sha256 check is not loaded: with FAIL_CLOSE (the
default) the plugin is replaced by a filter that denies every request, as Istio's agent does; with
FAIL_OPEN it is left out.
"""

from __future__ import annotations

import json
from typing import Any

from waypost.api.extensions import TrafficExtension, WasmPlugin, phase_of
from waypost.mesh.model import MeshSnapshot, Service, Waypoint

from . import rbac

RESOURCE_PREFIX = "extensions.istio.io/trafficextension/"
T_LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
T_HTTP_WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
T_NET_WASM = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm"
T_STRING = "type.googleapis.com/google.protobuf.StringValue"
WASM_RUNTIME = "envoy.wasm.runtime.v8"
PHASES = ("AUTHN", "AUTHZ", "STATS", "UNSPECIFIED")
_FAILURE_POLICY = {"FAIL_CLOSE": "FAIL_CLOSED", "FAIL_OPEN": "FAIL_OPEN", "FAIL_RELOAD": "FAIL_RELOAD"}


def filter_name(extension: WasmPlugin | TrafficExtension) -> str:
    return f"{RESOURCE_PREFIX}{extension.namespace}.{extension.name}"


def for_chain(snapshot: MeshSnapshot, waypoint: Waypoint, service: Service | None, port: int) -> dict[str, list]:
    """phase → the extensions of one chain, in the order they run on requests."""
    attached = list(snapshot.waypoint_chain("extensions", waypoint.ref, service.key if service is not None else None))
    lookup = [waypoint.namespace, snapshot.root_namespace] + ([service.namespace] if service is not None else [])
    order = {ns: i for i, ns in reversed(list(enumerate(lookup)))}
    selected = [e for e in attached if not e.spec.match or any(m.selects(port) for m in e.spec.match)]
    selected.sort(key=lambda e: (order.get(e.namespace, len(lookup)), e.name))
    out: dict[str, list] = {phase: [] for phase in PHASES}
    for e in selected:
        out[phase_of(e)].append(e)
    for phase in PHASES:
        out[phase].sort(key=lambda e: -(e.spec.priority if e.spec.priority is not None else -(2**31)))
    return out


def _deny_all(name: str, tcp: bool) -> dict[str, Any]:
    # An RBAC ALLOW with no policies admits nothing: Istio's stand-in for a fail-closed plugin that did not load.
    if tcp:
        return {"name": name, "typed_config": {"@type": rbac.T_NET_RBAC, "stat_prefix": "wasm_not_loaded.", "rules": {"action": "ALLOW"}}}
    return {"name": name, "typed_config": {"@type": rbac.T_HTTP_RBAC, "rules": {"action": "ALLOW"}, "rules_stat_prefix": "wasm_not_loaded."}}


def _wasm_config(extension, snapshot: MeshSnapshot) -> dict[str, Any] | None:
    wasm = extension.wasm
    module = snapshot.wasm_module(wasm.url)
    if module.error or (wasm.sha256 and module.sha256 != wasm.sha256):
        return None  # not fetched, or not the module the plugin pinned: not loaded
    env = {"key_values": {e.name: e.value for e in (wasm.vm_config.env if wasm.vm_config else []) if e.value_from == "INLINE"}}
    host = [e.name for e in (wasm.vm_config.env if wasm.vm_config else []) if e.value_from == "HOST"]
    if host:
        env["host_env_keys"] = host
    config: dict[str, Any] = {
        "name": f"{extension.namespace}.{extension.name}",
        "root_id": wasm.plugin_name,
        "vm_config": {
            # One VM per module: plugins sharing a module share its VM, as Envoy does for equal vm_configs.
            "vm_id": module.sha256[:16],
            "runtime": WASM_RUNTIME,
            "code": {"local": {"filename": module.path}},
            "environment_variables": env,
        },
        "failure_policy": _FAILURE_POLICY[wasm.fail_strategy],
    }
    if wasm.plugin_config:
        config["configuration"] = {"@type": T_STRING, "value": json.dumps(wasm.plugin_config, separators=(",", ":"), sort_keys=True)}
    return config


def http_filter(extension, snapshot: MeshSnapshot) -> dict[str, Any] | None:
    """The HTTP filter of one extension; None when it has none (a NETWORK Wasm plugin, or FAIL_OPEN unloaded)."""
    name = filter_name(extension)
    if extension.lua is not None:
        return {"name": name, "typed_config": {"@type": T_LUA, "default_source_code": {"inline_string": extension.lua.inline_code}}}
    if extension.wasm.network:
        return None
    config = _wasm_config(extension, snapshot)
    if config is None:
        return _deny_all(name, tcp=False) if extension.wasm.fail_strategy != "FAIL_OPEN" else None
    return {"name": name, "typed_config": {"@type": T_HTTP_WASM, "config": config}}


def network_filter(extension, snapshot: MeshSnapshot) -> dict[str, Any] | None:
    """The network filter of one extension on a TCP chain: NETWORK Wasm plugins only (Lua is HTTP-only)."""
    if extension.lua is not None or not extension.wasm.network:
        return None
    name = filter_name(extension)
    config = _wasm_config(extension, snapshot)
    if config is None:
        return _deny_all(name, tcp=True) if extension.wasm.fail_strategy != "FAIL_OPEN" else None
    return {"name": name, "typed_config": {"@type": T_NET_WASM, "config": config}}


def http_filters(phases: dict[str, list], snapshot: MeshSnapshot, *names: str) -> list[dict[str, Any]]:
    return [f for phase in names for e in phases[phase] if (f := http_filter(e, snapshot)) is not None]


def network_filters(phases: dict[str, list], snapshot: MeshSnapshot, *names: str) -> list[dict[str, Any]]:
    return [f for phase in names for e in phases[phase] if (f := network_filter(e, snapshot)) is not None]
