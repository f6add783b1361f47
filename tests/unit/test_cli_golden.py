"""CLI table outputs on a fixed mesh (tests/golden/cli/mesh.yaml), compared with golden files.

Plain text (what a pipe or a file gets). Regenerate after an intended change with
`WAYPOST_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/unit/test_cli_golden.py` and review the diff.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from waypost.api import load_paths
from waypost.cli import authz_check as ac
from waypost.cli import get as getter
from waypost.cli import waypoint as wp
from waypost.cli import ztunnel_config as zc
from waypost.local.documents import resource_documents
from waypost.mesh import AddressPlan, build

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "cli"
MESH = GOLDEN / "mesh.yaml"
CREATED = "2030-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def mesh():
    result = load_paths([MESH])
    assert not result.errors, [d.render() for d in result.errors]
    snapshot = build(result.resources, AddressPlan(1))
    docs = resource_documents(result.resources, snapshot, CREATED)
    return result.resources, snapshot, docs


def compare(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("WAYPOST_UPDATE_GOLDEN"):
        path.write_text(text + "\n")
    assert path.exists(), f"{path} is missing; run with WAYPOST_UPDATE_GOLDEN=1 and review it"
    assert text + "\n" == path.read_text(), f"{name} differs from {path}; regenerate with WAYPOST_UPDATE_GOLDEN=1 and review the diff"


@pytest.fixture
def fixed_now(monkeypatch):
    class Fixed(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2030, 1, 1, 1, 0, 0, tzinfo=UTC)

    monkeypatch.setattr(getter, "datetime", Fixed)


@pytest.mark.parametrize("kind", ["service", "deployment", "pod", "gateway", "httproute", "authorizationpolicy"])
def test_get_tables(mesh, fixed_now, kind):
    _, snapshot, docs = mesh
    from waypost.local.documents import mesh_view

    state = mesh_view(snapshot)
    resolved = getter.kind_of(kind)
    selected = getter.select(docs + getter.pod_documents(state), resolved, None, None)
    compare(f"get-{kind}", getter.render(resolved, selected, "", state, True, single=False))


def test_waypoint_list_and_status(mesh):
    _, _, docs = mesh
    compare("waypoint-list", wp.list_table(wp.waypoints(docs, None), True))
    compare("waypoint-status", wp.status_table(wp.waypoints(docs, "shop")))


@pytest.mark.parametrize("kind", zc.KINDS)
def test_ztunnel_config(mesh, kind):
    _, snapshot, _ = mesh
    compare(f"ztunnel-config-{kind}", zc.render(kind, snapshot, "short"))


CHECKS = {
    "allowed-through-waypoint": ("shop/web", "http://api/items/1", "GET"),
    "denied-by-deny-policy": ("shop/web", "http://api/admin/x", "GET"),
    "denied-no-allow-match": ("shop/web", "http://api/items/1", "POST"),
    "redirected-by-route": ("shop/web", "http://api/old", "GET"),
    "ztunnel-reset": ("shop/web", "http://db/", "GET"),
    "plaintext-outsider": ("outside/stranger", "http://db.shop/", "GET"),
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_authz_check_text(name):
    source, url, method = CHECKS[name]
    evaluation, workload, _ = ac.run(ac.offline_mesh([str(MESH)]), source, url, method, [], now=1_900_000_000)
    compare(f"authz-check-{name}", ac.render_text(evaluation, workload, url))
