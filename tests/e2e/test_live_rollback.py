"""A change that an Envoy rejects (NACK) is rolled back: the proxies return to the running config."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, waypost
from waypost.local.client import send
from waypost.local.state import StateDir

pytestmark = pytest.mark.e2e

WAYPOINT = "waypoint~quickstart~waypoint"
ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-split, namespace: quickstart}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules: [{backendRefs: [{name: echo-v2, port: 80}]}]
"""

# A supervisor whose changes translate to a waypoint route config that names its domains twice, which
# Envoy's RDS refuses. The first configuration (start-up) is translated correctly.
BROKEN_SUPERVISOR = """
import copy, dataclasses, sys
from waypost.local import changes, supervisor

real = changes.translate

def broken(snapshot):
    configs = real(snapshot)
    config = configs[{waypoint!r}]
    route = copy.deepcopy(config.routes[0])
    route["virtual_hosts"].append({{**copy.deepcopy(route["virtual_hosts"][0]), "name": "twin"}})
    configs[{waypoint!r}] = dataclasses.replace(config, routes=(route, *config.routes[1:]))
    return configs

changes.translate = broken
sys.exit(supervisor.main(sys.argv[1:]))
"""


def test_a_change_an_envoy_rejects_is_rolled_back_and_reported(tmp_path: Path):
    state = StateDir(tmp_path / "state")
    state.ensure()
    code = BROKEN_SUPERVISOR.format(waypoint=WAYPOINT)
    with open(tmp_path / "supervisor.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "-f", str(REPO / "examples" / "quickstart"), "--state-dir", str(state.root)],
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while (state.read_state() or {}).get("phase") != "ready":
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "supervisor.log").read_text()
            time.sleep(0.05)
        (tmp_path / "route.yaml").write_text(ROUTE)

        result = waypost("apply", "-f", str(tmp_path / "route.yaml"), "--state-dir", str(state.root))

        assert result.returncode == 1 and result.stdout == ""
        assert f"the change was not applied: {WAYPOINT} rejected its new RouteConfiguration configuration" in result.stderr
        assert "the previous configuration was restored" in result.stderr
        current = state.read_state()
        assert current["config_generation"] == 1
        waypoint = next(p for p in current["proxies"] if p["name"] == WAYPOINT)
        assert waypoint["ready"] and waypoint["version"] == 1
        body = json.loads(send(current, "quickstart/client", "http://echo/other").body)
        assert body["pod"].startswith("echo-v1-")  # the route that was running still is
    finally:
        waypost("down", "--state-dir", str(state.root))
        proc.wait(30)
