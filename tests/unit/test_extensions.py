"""WasmPlugin/TrafficExtension without processes: validation, attachment, phase placement and filter configs."""

from __future__ import annotations

import dataclasses

import pytest

from tests.manifests import ambient_namespace, waypoint
from waypost.api import load_text
from waypost.envoy import translate
from waypost.mesh.addresses import AddressPlan
from waypost.mesh.build import build
from waypost.mesh.model import WasmModule

BASE = ambient_namespace("app", "waypoint") + waypoint("app") + """
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: app}
spec: {selector: {app: svc}, ports: [{name: http, port: 80}, {name: http-alt, port: 8080}, {name: tcp, port: 9000}]}
"""
URL = "file:///modules/m.wasm"
SHA = "a" * 64


def ext(name: str, extra: str, kind: str = "WasmPlugin", target: str = "kind: Service, group: '', name: svc") -> str:
    body = "".join(f"  {line}\n" for line in extra.strip("\n").splitlines())
    return f"\n---\napiVersion: extensions.istio.io/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}, namespace: app}}\nspec:\n  targetRefs: [{{{target}}}]\n{body}"


def chains(text: str, *, loaded: bool = True):
    result = load_text(BASE + text, "t.yaml")
    assert not result.errors, [d.render() for d in result.errors]
    snapshot = build(result.resources, AddressPlan(5))
    if loaded:
        snapshot = dataclasses.replace(snapshot, wasm_modules=(WasmModule(URL, SHA, "/cache/m.wasm"),))
    config = translate(snapshot)["waypoint~app~waypoint"]
    listener = next(l for l in config.listeners if l["name"] == "main_internal")
    out = {}
    for chain in listener["filter_chains"]:
        last = chain["filters"][-1]
        if last["name"] == "envoy.filters.network.http_connection_manager":
            out[chain["name"]] = last["typed_config"]["http_filters"]
        else:
            out[chain["name"]] = chain["filters"]
    return snapshot, out


def names(filters) -> list[str]:
    return [f["name"].removeprefix("extensions.istio.io/trafficextension/") for f in filters]


def test_phases_and_priorities_place_filters():
    text = (
        ext("authn", f"url: {URL}\nphase: AUTHN")
        + ext("authz-low", f"url: {URL}\nphase: AUTHZ\npriority: 1")
        + ext("authz-high", f"url: {URL}\nphase: AUTHZ\npriority: 5")
        + ext("stats", f"url: {URL}\nphase: STATS")
        + ext("last", f"url: {URL}")
        + ext("lua", "phase: AUTHN\nlua: {inlineCode: 'function envoy_on_request(h) end'}", kind="TrafficExtension")
        + "\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: app}\n"
        "spec:\n  targetRefs: [{kind: Service, group: '', name: svc}]\n  rules: [{}]\n"
    )
    _, out = chains(text)
    assert names(out["svc.app.svc.cluster.local:80"])[:8] == [
        "app.authn", "app.lua", "app.authz-high", "app.authz-low", "envoy.filters.http.rbac", "envoy.filters.http.cors", "app.stats", "app.last",
    ]


def test_wasm_filter_config():
    text = ext("w", f"url: {URL}\nsha256: '{SHA}'\npluginName: root\npluginConfig: {{b: 1, a: x}}\nfailStrategy: FAIL_OPEN\n"
                    "vmConfig: {env: [{name: A, value: '1'}, {name: HOME, valueFrom: HOST}]}")
    _, out = chains(text)
    (wasm,) = [f for f in out["svc.app.svc.cluster.local:80"] if f["name"].endswith("app.w")]
    config = wasm["typed_config"]["config"]
    assert wasm["typed_config"]["@type"].endswith("filters.http.wasm.v3.Wasm")
    assert config["root_id"] == "root" and config["failure_policy"] == "FAIL_OPEN"
    assert config["configuration"] == {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": '{"a":"x","b":1}'}
    assert config["vm_config"]["code"] == {"local": {"filename": "/cache/m.wasm"}}
    assert config["vm_config"]["runtime"] == "envoy.wasm.runtime.v8"
    assert config["vm_config"]["environment_variables"] == {"key_values": {"A": "1"}, "host_env_keys": ["HOME"]}


def test_match_ports_and_network_plugins():
    text = (
        ext("only-8080", f"url: {URL}\nmatch: [{{mode: SERVER, ports: [{{number: 8080}}]}}]")
        + ext("client-only", f"url: {URL}\nmatch: [{{mode: CLIENT}}]")
        + ext("net", f"url: {URL}\ntype: NETWORK")
    )
    _, out = chains(text)
    assert "app.only-8080" not in names(out["svc.app.svc.cluster.local:80"])
    assert "app.only-8080" in names(out["svc.app.svc.cluster.local:8080"])
    assert not any("client-only" in n for chain in out.values() for n in names(chain))  # waypoints serve SERVER traffic
    assert names(out["svc.app.svc.cluster.local:9000"])[0] == "app.net"
    assert "app.net" not in names(out["svc.app.svc.cluster.local:80"])


@pytest.mark.parametrize(("strategy", "expected"), [("FAIL_CLOSE", "deny"), ("FAIL_OPEN", None)])
def test_unloaded_module(strategy, expected):
    _, out = chains(ext("w", f"url: {URL}\nfailStrategy: {strategy}"), loaded=False)
    stand_in = [f for f in out["svc.app.svc.cluster.local:80"] if f["name"].endswith("app.w")]
    if expected is None:
        assert stand_in == []
    else:
        (f,) = stand_in
        assert f["typed_config"]["@type"].endswith("rbac.v3.RBAC") and f["typed_config"]["rules"] == {"action": "ALLOW"}


def test_sha256_pin_is_per_plugin():
    _, out = chains(ext("pinned-wrong", f"url: {URL}\nsha256: '{'b' * 64}'") + ext("unpinned", f"url: {URL}"))
    filters = {f["name"].rsplit(".", 1)[-1]: f["typed_config"]["@type"] for f in out["svc.app.svc.cluster.local:80"] if f["name"].startswith("extensions.")}
    assert filters["pinned-wrong"].endswith("rbac.v3.RBAC") and filters["unpinned"].endswith("wasm.v3.Wasm")


def test_status_and_validation():
    snapshot, _ = chains(
        ext("by-selector", f"url: {URL}").replace("targetRefs: [{kind: Service, group: '', name: svc}]", "selector: {matchLabels: {app: svc}}")
        + ext("nowhere", f"url: {URL}", target="kind: Service, group: '', name: missing")
    )
    (c,) = snapshot.status_of("WasmPlugin", "app", "by-selector").conditions
    assert (c.type, c.status, c.reason) == ("Accepted", "False", "NotWaypointAttached")
    (c,) = snapshot.status_of("WasmPlugin", "app", "nowhere").conditions
    assert (c.status, c.reason) == ("False", "TargetNotFound")
    bad = load_text(ext("both", f"lua: {{inlineCode: x}}\nwasm: {{url: {URL}}}", kind="TrafficExtension")
                    + ext("neither", "phase: AUTHN", kind="TrafficExtension") + ext("scheme", "url: ftp://x/y.wasm"), "t.yaml")
    messages = sorted(d.message for d in bad.errors)
    assert messages == ["exactly one of wasm or lua must be set", "exactly one of wasm or lua must be set", "url contains unsupported scheme: ftp"]
