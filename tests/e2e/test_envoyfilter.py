"""EnvoyFilter on a waypoint, end to end: a Lua filter inserted by a patch changes responses, a patch
that matches nothing is reported, and a patch Envoy rejects leaves the running config (and traffic) as
they were, with the rejection naming the EnvoyFilter."""

from __future__ import annotations

import time

import pytest

from tests.manifests import ambient_with_waypoint, echo_service

pytestmark = pytest.mark.e2e

MESH = ambient_with_waypoint("shop") + echo_service("shop")
# A second waypoint, in a namespace no EnvoyFilter targets: a NACK on shop's waypoint leaves it alone.
OTHER = ambient_with_waypoint("other") + echo_service("other")


def envoy_filter(name: str, patches: str) -> str:
    body = "".join(f"  {line}\n" for line in patches.strip("\n").splitlines())
    return (
        f"\n---\napiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n"
        f"  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]\n  configPatches:\n{body}"
    )


LUA = envoy_filter("lua-response", """
- applyTo: HTTP_FILTER
  match:
    context: SIDECAR_INBOUND
    listener:
      filterChain:
        filter:
          name: envoy.filters.network.http_connection_manager
          subFilter: {name: envoy.filters.http.router}
  patch:
    operation: INSERT_BEFORE
    value:
      name: envoy.lua
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
        defaultSourceCode:
          inlineString: |
            function envoy_on_response(handle)
              handle:headers():add("x-envoyfilter", "lua")
            end
""")
NOTHING = envoy_filter("no-match", """
- applyTo: HTTP_FILTER
  match:
    context: SIDECAR_INBOUND
    listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager, subFilter: {name: envoy.filters.http.nothing}}}}
  patch: {operation: REMOVE}
""")
AFTER_ROUTER = envoy_filter("after-router", """
- applyTo: HTTP_FILTER
  match:
    context: SIDECAR_INBOUND
    listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager}}}
  patch:
    operation: ADD
    value:
      name: envoy.filters.http.cors
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}
""")


def status(mesh, name: str) -> dict[str, dict]:
    entry = next(c for c in mesh.state["conditions"] if (c["kind"], c["name"]) == ("EnvoyFilter", name))
    return {c["type"]: c for c in entry["conditions"]}


def test_envoyfilter_patches_report_and_rejection(start_mesh, tmp_path):
    mesh = start_mesh(MESH + OTHER + LUA + NOTHING, name="envoyfilter")
    r = mesh.request("shop/client", "http://svc/")
    assert r.status == 200 and r.as_json()["headers"]["x-envoyfilter"] == ["lua"]
    lua = status(mesh, "lua-response")
    assert lua["Accepted"]["status"] == "True" and "waypoint~shop~waypoint" in lua["Accepted"]["message"]
    assert (lua["Patched"]["status"], lua["Patched"]["reason"]) == ("True", "Applied")
    idle = status(mesh, "no-match")["Patched"]
    assert (idle["status"], idle["reason"]) == ("False", "PatchMatchedNothing") and "configPatches[0] (HTTP_FILTER REMOVE)" in idle["message"]

    bystanders = {p["name"]: (p["pid"], p["version"], p["xds_versions"]) for p in mesh.state["proxies"] if p["name"] != "waypoint~shop~waypoint"}
    assert "waypoint~other~waypoint" in bystanders
    bad = tmp_path / "bad.yaml"
    bad.write_text(AFTER_ROUTER)
    proc = mesh.cli("apply", "-f", str(bad), check=False)
    assert proc.returncode != 0
    output = proc.stderr + proc.stdout
    assert "rejected its new Listener configuration" in output and "must be the last filter" in output  # Envoy's NACK
    assert "patches changed by this update: EnvoyFilter shop/after-router" in output
    # Envoy kept its last good config: the Lua patch still applies and requests still succeed.
    for _ in range(5):
        r = mesh.request("shop/client", "http://svc/")
        assert r.status == 200 and r.as_json()["headers"]["x-envoyfilter"] == ["lua"]
        time.sleep(0.1)
    assert not any(c["name"] == "after-router" for c in mesh.state["conditions"])
    # The other proxies were not touched: same process, same config generation, same xDS versions.
    assert {p["name"]: (p["pid"], p["version"], p["xds_versions"]) for p in mesh.state["proxies"] if p["name"] in bystanders} == bystanders
    assert mesh.request("other/client", "http://svc/").status == 200

    # A bad update of an EnvoyFilter that runs: rolled back, and the running one's status says so.
    bad_lua = tmp_path / "bad-lua.yaml"
    bad_lua.write_text(LUA.replace("operation: INSERT_BEFORE", "operation: ADD").replace("subFilter: {name: envoy.filters.http.router}", "subFilter: {name: envoy.filters.http.cors}"))
    assert mesh.cli("apply", "-f", str(bad_lua), check=False).returncode != 0
    rejected = status(mesh, "lua-response")["LastUpdateRejected"]
    assert rejected["status"] == "True" and "must be the last filter" in rejected["message"]
    assert mesh.request("shop/client", "http://svc/").as_json()["headers"]["x-envoyfilter"] == ["lua"]

    # Removal takes the Lua filter out again.
    lua_file = tmp_path / "lua.yaml"
    lua_file.write_text(LUA)
    mesh.cli("delete", "-f", str(lua_file))
    assert "x-envoyfilter" not in mesh.request("shop/client", "http://svc/").as_json()["headers"]
