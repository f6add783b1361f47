"""The pieces of live configuration that need no Envoy: the control channel, the watcher, and the
incremental property the rollout relies on (a change touches only the proxies it concerns)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from tests.conftest import REPO
from waypost.api import load_paths, load_text
from waypost.envoy import translate
from waypost.local.control import ControlError, ControlServer, call, diagnostic_from_json, diagnostic_to_json
from waypost.local.watch import ManifestWatcher
from waypost.mesh import AddressPlan, address_assignments, build

QUICKSTART = REPO / "examples" / "quickstart"


# -- control channel -----------------------------------------------------------------------------------


@pytest.fixture
def long_dir(tmp_path):
    # Longer than a Unix socket path may be (108 bytes): the channel must still work.
    path = tmp_path / ("d" * 60) / ("e" * 60)
    path.mkdir(parents=True)
    return path


def test_control_channel_answers_one_json_line_per_request(long_dir):
    seen = []

    def handler(request):
        seen.append(threading.current_thread().name)
        if request["op"] == "boom":
            raise RuntimeError("kaput")
        return {"ok": True, "echo": request}

    server = ControlServer(long_dir / "control.sock", handler)
    server.start()
    try:
        assert oct(os.stat(long_dir / "control.sock").st_mode & 0o777) == "0o600"
        answer = call(long_dir / "control.sock", {"op": "apply", "paths": ["/x"]}, timeout=5)
        assert answer["ok"] and answer["echo"] == {"op": "apply", "paths": ["/x"]} and answer["protocol"] == 1
        failed = call(long_dir / "control.sock", {"op": "boom"}, timeout=5)
        assert failed == {"protocol": 1, "ok": False, "errors": ["internal error: kaput"]}
    finally:
        server.stop()
    assert not (long_dir / "control.sock").exists()
    with pytest.raises(ControlError, match="no control socket"):
        call(long_dir / "control.sock", {"op": "ping"}, timeout=1)


def test_diagnostics_cross_the_channel_unchanged():
    (d,) = load_text("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: x}]}\n", "m.yaml").errors
    assert diagnostic_from_json(diagnostic_to_json(d)) == d


# -- watcher -------------------------------------------------------------------------------------------


def test_watcher_reports_content_changes_once_and_ignores_touch(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("a: 1\n")
    watcher = ManifestWatcher([str(tmp_path)])
    assert not watcher.changed()
    later = time.time() + 5
    os.utime(manifest, (later, later))
    assert not watcher.changed()  # same bytes
    manifest.write_text("a: 2\n")
    assert watcher.changed()
    assert not watcher.changed()
    (tmp_path / "new.yml").write_text("b: 1\n")
    assert watcher.changed()
    (tmp_path / "notes.txt").write_text("not a manifest")
    assert not watcher.changed()


def test_watcher_notices_a_missing_file_appearing(tmp_path):
    watcher = ManifestWatcher([str(tmp_path / "later.yaml")])
    (tmp_path / "later.yaml").write_text("a: 1\n")
    assert watcher.changed()


# -- incremental builds --------------------------------------------------------------------------------

NEW_ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: only-v2, namespace: quickstart}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules: [{backendRefs: [{name: echo-v2, port: 80}]}]
"""

NEW_WORKLOAD = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: aaa, namespace: quickstart}
spec:
  replicas: 2
  selector: {matchLabels: {app: aaa}}
  template:
    metadata: {labels: {app: aaa}}
    spec: {containers: [{name: echo, image: waypost/echo, ports: [{containerPort: 9090}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: aaa, namespace: quickstart}
spec: {selector: {app: aaa}, ports: [{name: http, port: 80, targetPort: 9090}]}
"""


def quickstart():
    resources = load_paths([QUICKSTART]).resources
    return resources, build(resources, AddressPlan(77))


def test_a_new_route_changes_only_the_waypoint_config():
    resources, before = quickstart()
    after = build(resources + load_text(NEW_ROUTE).resources, before.plan, previous=address_assignments(before))
    old, new = translate(before), translate(after)
    assert {pid for pid in new if new[pid] != old.get(pid)} == {"waypoint~quickstart~waypoint"}


def test_new_workloads_keep_every_existing_address():
    resources, before = quickstart()
    # "aaa" sorts first: without `previous`, it would take the addresses the existing pods have.
    after = build(load_text(NEW_WORKLOAD).resources + resources, before.plan, previous=address_assignments(before))
    kept = address_assignments(before)
    assert {k: v for k, v in address_assignments(after).items() if k in kept} == kept
    assert len(address_assignments(after)) == len(kept) + 3
