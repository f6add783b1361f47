"""WasmPlugin and TrafficExtension on a waypoint, with real proxy-wasm modules (wasm/out) and Lua.

Each behaviour has its own Service (plugins attach by targetRefs) in one shared mesh: phase placement
relative to RBAC, priority order, Lua phase order on the response path (catalogue C69), failStrategy with
a trapping module, sha256 mismatch, file/http/oci URLs, Gateway vs Service scope, and removal.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import REPO
from tests.manifests import waypoint
from waypost.local.client import RequestError

pytestmark = pytest.mark.e2e

MODULES = REPO / "wasm" / "out"
SERVE_AT = f"127.251.{os.getpid() % 250 + 1}.1"
HTTP_PORT, REGISTRY_PORT = 18090, 18091
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"

SERVICES = ("lua", "authn", "stats", "gate", "prio", "trap-closed", "trap-open", "bad-sha", "fetched", "oci", "removed", "scope-a", "scope-b", "te-wasm")


def module(name: str) -> str:
    return f"file://{MODULES / (name + '.wasm')}"


def sha(name: str) -> str:
    return hashlib.sha256((MODULES / (name + ".wasm")).read_bytes()).hexdigest()


def mesh_text() -> str:
    doc = """
apiVersion: v1
kind: Namespace
metadata: {name: ext, labels: {istio.io/dataplane-mode: ambient}}
""" + waypoint("ext", "w1") + waypoint("ext", "w2") + """
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: ext}
spec:
  selector: {matchLabels: {app: client}}
  template: {metadata: {labels: {app: client}}, spec: {containers: [{name: c, image: curl}]}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend, namespace: ext}
spec:
  selector: {matchLabels: {app: backend}}
  template: {metadata: {labels: {app: backend}}, spec: {containers: [{name: c, image: waypost/echo, ports: [{containerPort: 8080}]}]}}
"""
    for name in SERVICES:
        wp = "w2" if name.startswith("scope") else "w1"
        doc += f"""
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: ext, labels: {{istio.io/use-waypoint: {wp}}}}}
spec: {{selector: {{app: backend}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}
"""
    return doc


def plugin(name: str, target: str, url: str, config: dict | None = None, extra: str = "", kind: str = "Service") -> str:
    group = "gateway.networking.k8s.io" if kind == "Gateway" else "''"
    text = (
        f"\n---\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: {name}, namespace: ext}}\n"
        f"spec:\n  targetRefs: [{{kind: {kind}, group: {group}, name: {target}}}]\n  url: {url}\n"
    )
    if config is not None:
        text += f"  pluginConfig: {json.dumps(config)}\n"
    return text + "".join(f"  {line}\n" for line in extra.splitlines() if line)


def lua(name: str, target: str, phase: str, code: str) -> str:
    body = "\n".join("      " + line for line in code.strip("\n").splitlines())
    return (
        f"\n---\napiVersion: extensions.istio.io/v1alpha1\nkind: TrafficExtension\nmetadata: {{name: {name}, namespace: ext}}\n"
        f"spec:\n  targetRefs: [{{kind: Service, group: '', name: {target}}}]\n  phase: {phase}\n  lua:\n    inlineCode: |\n{body}\n"
    )


def appender(digit: str, extra: str = "") -> str:
    return f"""
function envoy_on_request(h)
  {extra}
end
function envoy_on_response(h)
  local seen = h:headers():get("x-phase-order") or ""
  h:headers():replace("x-phase-order", seen .. "{digit}")
end
"""


ADDED = {"request_header": "x-added", "value": "yes"}
PLUGINS = (
    # C69: three Lua filters in three phases append to one response header: response path runs them reversed.
    lua("lua-authn", "lua", "AUTHN", appender("1", 'h:headers():add("x-lua-injected", "true")'))
    + lua("lua-authz", "lua", "AUTHZ", appender("2"))
    + lua("lua-stats", "lua", "STATS", appender("3"))
    # Placement relative to RBAC: a DENY on a header the plugin adds sees it only when the plugin runs first.
    + plugin("add-authn", "authn", module("add_header"), ADDED, "phase: AUTHN")
    + plugin("add-stats", "stats", module("add_header"), ADDED, "phase: STATS")
    # Placement between plugins: AUTHN adds the header the AUTHZ gate requires.
    + plugin("gate-opener", "gate", module("add_header"), {"request_header": "x-wasm-allow", "value": "1"}, "phase: AUTHN")
    + plugin("gate", "gate", module("deny_without_header"), {}, "phase: AUTHZ")
    # Priority: higher first within a phase; unset is lowest.
    + plugin("prio-low", "prio", module("add_header"), {"request_header": "x-wasm-trace", "value": "p10"}, "priority: 10")
    + plugin("prio-none", "prio", module("add_header"), {"request_header": "x-wasm-trace", "value": "unset"})
    + plugin("prio-high", "prio", module("add_header"), {"request_header": "x-wasm-trace", "value": "p30"}, "priority: 30")
    + plugin("trap-closed", "trap-closed", module("trap"), {"trap_on": "request_headers"})
    + plugin("trap-open", "trap-open", module("trap"), {"trap_on": "request_headers"}, "failStrategy: FAIL_OPEN")
    + plugin("bad-sha", "bad-sha", module("add_header"), {"header": "x-wasm", "value": "never"}, "sha256: '" + "0" * 64 + "'")
    + plugin("fetched", "fetched", f"http://{SERVE_AT}:{HTTP_PORT}/add_header.wasm", {"header": "x-wasm", "value": "over-http"}, "sha256: '" + sha("add_header") + "'")
    + plugin("oci", "oci", f"oci://{SERVE_AT}:{REGISTRY_PORT}/waypost/add-header:v1", {"header": "x-wasm", "value": "from-oci"})
    + plugin("removed", "removed", module("add_header"), {"header": "x-wasm", "value": "present"})
    + plugin("whole-waypoint", "w2", module("add_header"), {"header": "x-gateway-scope", "value": "yes"}, kind="Gateway")
    + plugin("one-service", "scope-a", module("add_header"), {"header": "x-service-scope", "value": "yes"})
    # TrafficExtension carrying a Wasm module (the newer kind WasmPlugin converts to).
    + "\n---\napiVersion: extensions.istio.io/v1alpha1\nkind: TrafficExtension\nmetadata: {name: te-wasm, namespace: ext}\n"
    "spec:\n  targetRefs: [{kind: Service, group: '', name: te-wasm}]\n  phase: STATS\n"
    f"  wasm: {{url: '{module('add_header')}', pluginConfig: {{header: x-wasm, value: traffic-extension}}}}\n"
    + "\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-added, namespace: ext}\n"
    "spec:\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: w1}]\n  action: DENY\n"
    "  rules: [{when: [{key: 'request.headers[x-added]', values: ['*']}]}]\n"
)


class _Modules(BaseHTTPRequestHandler):
    """Serves wasm/out over HTTP, and one OCI artifact (`waypost/add-header:v1`) with the distribution API."""

    def do_GET(self) -> None:  # noqa: N802
        wasm = (MODULES / "add_header.wasm").read_bytes()
        digest = "sha256:" + hashlib.sha256(wasm).hexdigest()
        config = b"{}"
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.wasm.config.v1+json", "digest": "sha256:" + hashlib.sha256(config).hexdigest(), "size": len(config)},
            "layers": [{"mediaType": WASM_LAYER, "digest": digest, "size": len(wasm)}],
        }).encode()
        routes = {
            "/add_header.wasm": (wasm, "application/wasm"),
            "/v2/waypost/add-header/manifests/v1": (manifest, "application/vnd.oci.image.manifest.v1+json"),
            f"/v2/waypost/add-header/blobs/{digest}": (wasm, "application/octet-stream"),
        }
        body, kind = routes.get(self.path, (None, None))
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def mesh(start_mesh_module):
    servers = [ThreadingHTTPServer((SERVE_AT, port), _Modules) for port in (HTTP_PORT, REGISTRY_PORT)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield start_mesh_module(mesh_text() + PLUGINS, name="extensions")
    for server in servers:
        server.shutdown()


def get(mesh, service: str, **kw):
    return mesh.request("ext/client", f"http://{service}/", timeout=5, **kw)


def seen_headers(response) -> dict:
    return json.loads(response.body)["headers"]


def condition(mesh, kind: str, name: str, type_: str) -> dict:
    status = next(s for s in mesh.state["conditions"] if (s["kind"], s["name"]) == (kind, name))
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_lua_phases_run_reversed_on_the_response_path(mesh):
    r = get(mesh, "lua")
    assert r.status == 200
    assert r.as_json()["headers"]["x-phase-order"] == ["321"]  # catalogue C69
    assert seen_headers(r)["X-Lua-Injected"] == ["true"]


def test_phase_placement_around_rbac(mesh):
    denied = get(mesh, "authn")
    assert (denied.status, denied.body) == (403, "RBAC: access denied")  # AUTHN runs before RBAC: it saw x-added
    allowed = get(mesh, "stats")
    assert allowed.status == 200 and seen_headers(allowed)["X-Added"] == ["yes"]  # STATS runs after RBAC
    gate = get(mesh, "gate")
    assert gate.status == 200, gate.body  # AUTHN plugin added what the AUTHZ plugin requires


def test_priority_orders_plugins_within_a_phase(mesh):
    assert seen_headers(get(mesh, "prio"))["X-Wasm-Trace"] == ["p30", "p10", "unset"]


def test_fail_strategies_with_a_trapping_module(mesh):
    assert [get(mesh, "trap-closed").status for _ in range(3)] == [503, 503, 503]
    statuses = [get(mesh, "trap-open").status for _ in range(4)]
    # FAIL_OPEN: the request in flight when the VM traps fails; after that the plugin is skipped.
    assert statuses[-2:] == [200, 200] and statuses.count(503) <= 1, statuses


def test_sha256_mismatch_is_not_loaded_and_fails_closed(mesh):
    r = get(mesh, "bad-sha")
    assert (r.status, r.body) == (403, "RBAC: access denied")
    loaded = condition(mesh, "WasmPlugin", "bad-sha", "Loaded")
    assert (loaded["status"], loaded["reason"]) == ("False", "DigestMismatch") and "0" * 64 in loaded["message"]
    assert condition(mesh, "WasmPlugin", "removed", "Loaded")["status"] == "True"


def test_traffic_extension_with_a_wasm_module(mesh):
    assert get(mesh, "te-wasm").as_json()["headers"]["x-wasm"] == ["traffic-extension"]
    assert condition(mesh, "TrafficExtension", "te-wasm", "Loaded")["status"] == "True"


def test_modules_over_http_and_from_an_oci_registry(mesh):
    assert get(mesh, "fetched").as_json()["headers"]["x-wasm"] == ["over-http"]
    assert get(mesh, "oci").as_json()["headers"]["x-wasm"] == ["from-oci"]


def test_gateway_and_service_scope(mesh):
    a, b = get(mesh, "scope-a").as_json()["headers"], get(mesh, "scope-b").as_json()["headers"]
    assert a["x-gateway-scope"] == ["yes"] and b["x-gateway-scope"] == ["yes"]
    assert a["x-service-scope"] == ["yes"] and "x-service-scope" not in b
    assert "x-gateway-scope" not in get(mesh, "removed").as_json()["headers"]  # another waypoint
    accepted = condition(mesh, "WasmPlugin", "one-service", "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("True", "Accepted")


def test_removal_takes_effect(mesh, tmp_path):
    assert get(mesh, "removed").as_json()["headers"]["x-wasm"] == ["present"]
    doc = tmp_path / "removed.yaml"
    doc.write_text(plugin("removed", "removed", module("add_header"), {"header": "x-wasm", "value": "present"}))
    mesh.cli("delete", "-f", str(doc))
    deadline = time.monotonic() + 10
    while "x-wasm" in get(mesh, "removed").as_json()["headers"]:
        assert time.monotonic() < deadline, "the plugin is still applied"
        time.sleep(0.2)
