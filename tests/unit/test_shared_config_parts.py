"""Translation shares constant parts of the config between resources (the same dict object in every chain
that uses it: transport sockets, protocol options, filter-state setters, tunnelling headers...), which
took a third of the dicts out of a 1000-Service mesh's configs (issue 8, memory). That is only sound if no
later stage changes a config in place; this checks the whole path a config takes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.test_envoyfilter import LUA, MESH
from waypost.api import load_paths, load_text
from waypost.envoy import translate_incremental, with_patch_status
from waypost.local.fleet import xds_snapshot
from waypost.local.rollout import _bridge
from waypost.mesh import AddressPlan, build
from waypost.xds.server import XdsServer

REPO = Path(__file__).resolve().parents[2]


def _dump(configs) -> str:
    return json.dumps({pid: [c.listeners, c.clusters, c.routes] for pid, c in configs.items()}, sort_keys=True)


def test_no_stage_after_translation_changes_a_config_in_place():
    meshes = [load_paths([REPO / "examples" / name]).resources for name in ("quickstart", "routing", "extauthz")]
    meshes.append(load_text(MESH + LUA, "envoyfilter.yaml").resources)  # EnvoyFilter patches run on a copy
    server = XdsServer("127.0.0.1", 0)
    for resources in meshes:
        snapshot = build(resources, AddressPlan(70))
        configs, _ = translate_incremental(snapshot)
        before = _dump(configs)
        with_patch_status(snapshot, configs)
        for pid, config in configs.items():
            server.set_snapshot(pid, xds_snapshot(config, {}))  # digests and encoding (fast path and ParseDict)
            _bridge(config, config)
        assert _dump(configs) == before
        # A second translation shares the same constant parts; they are still what they were.
        again, _ = translate_incremental(build(resources, AddressPlan(70)))
        assert _dump(again) == before


def test_the_constant_parts_are_shared_objects():
    snapshot = build(load_paths([REPO / "examples" / "quickstart"]).resources, AddressPlan(70))
    configs, _ = translate_incremental(snapshot)
    waypoint = next(c for c in configs.values() if c.kind == "waypoint")
    sockets = [cl["transport_socket"] for cl in waypoint.clusters if cl["name"].startswith("inbound-vip|")]
    assert len(sockets) >= 2 and all(s is sockets[0] for s in sockets)
