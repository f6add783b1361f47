"""The ztunnel's single-stage chains (`ztunnel._direct_chains`): which VIPs they take, and the budget."""

from __future__ import annotations

import ipaddress

from waypost.api import load_text
from waypost.envoy import ztunnel
from waypost.mesh.addresses import AddressPlan
from waypost.mesh.build import build

from tests.manifests import ambient_namespace, client, waypoint

MESH = (
    ambient_namespace("d")
    + waypoint("d")
    + client("d")
    + "".join(
        f"""
---
apiVersion: v1
kind: Service
metadata: {{name: s{i}, namespace: d{", labels: {istio.io/use-waypoint: waypoint}" if i % 3 else ""}}}
spec:
  selector: {{app: nothing}}
  ports: [{{name: http, port: 80}}, {{name: grpc, port: 9000}}]
"""
        for i in range(12)
    )
)


def snapshot():
    loaded = load_text(MESH, "direct.yaml")
    assert not loaded.errors, [d.render() for d in loaded.errors]
    return build(loaded.resources, AddressPlan(63))


def outbound(config) -> dict:
    return next(l for l in config["listeners"] if l["name"] == ztunnel.OUTBOUND)


def covered(ranges) -> set[str]:
    return {str(a) for r in ranges for a in ipaddress.ip_network(f"{r['address_prefix']}/{r['prefix_len']}")}


def test_direct_chains_take_exactly_the_vips_bound_to_the_waypoint():
    snap = snapshot()
    config = ztunnel.translate(snap, snap.nodes[0])
    direct = [ch for ch in outbound(config)["filter_chains"] if ch["name"].startswith("direct|")]
    assert len(direct) == 1  # one source group (the client), one waypoint
    bound = {s.vip for s in snap.services if s.waypoint is not None}
    assert bound and covered(direct[0]["filter_chain_match"]["prefix_ranges"]) == bound
    client_ip = next(w.address for w in snap.workloads if w.owner == "client")
    assert covered(direct[0]["filter_chain_match"]["source_prefix_ranges"]) == {client_ip}
    proxy = direct[0]["filters"][0]["typed_config"]
    # The same tunnel the dispatch chain builds after the PROXY hop: client identity's waypoint cluster,
    # CONNECT to the dialled VIP:port, the client's labels as headers.
    assert proxy["cluster"] == "hbone_waypoint|d/default|d/waypoint"  # the client runs as d/default
    assert proxy["tunneling_config"]["hostname"] == "%DOWNSTREAM_LOCAL_ADDRESS%"
    headers = {h["header"]["key"]: h["header"]["value"] for h in proxy["tunneling_config"]["headers_to_add"]}
    assert headers["x-waypost-source-workload"] == "client" and headers["x-waypost-source-workload-namespace"] == "d"
    assert proxy["cluster"] in {c["name"] for c in config["clusters"]}


def test_beyond_the_budget_only_the_two_stage_path_remains(monkeypatch):
    monkeypatch.setattr(ztunnel, "DIRECT_BUDGET", 0)
    snap = snapshot()
    config = ztunnel.translate(snap, snap.nodes[0])
    assert not [ch for ch in outbound(config)["filter_chains"] if ch["name"].startswith("direct|")]
    assert [ch for ch in outbound(config)["filter_chains"] if ch["name"].startswith("out|")]  # stage 1 stays
