import os, socket, sys, threading, socketserver, json
import pytest
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/tmp/exp")
from tests.manifests import ambient_with_waypoint
from tests.e2e.test_server_first_close import _AnswerAndClose, _Server, _service, BODY
from close_dbg import raw
pytestmark = pytest.mark.e2e
MESH = (ambient_with_waypoint("closing", namespace_uses_waypoint=False)
    + "\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: closer, namespace: closing}\nspec:\n  selector: {matchLabels: {app: closer}}\n"
      "  template: {metadata: {labels: {app: closer}}, spec: {containers: [{name: c, image: nginx, ports: [{containerPort: 9000}]}]}}\n"
    + _service("plain", "tcp", waypoint=False) + _service("tcp-via-waypoint", "tcp", waypoint=True))

def test_pod_backend(start_mesh, tmp_path):
    mesh = start_mesh(MESH, name="closing2")
    pod = next(w for w in mesh.state["workloads"] if "closer" in json.dumps(w))
    kind = os.environ.get("SRV", "py")
    if kind == "nginx":
        sys.path.insert(0, "/work/main/bench")
        from common import start_nginx, stop_process
        srv = start_nginx(tmp_path / "ng", [(pod["app_address"], 9000)])
    else:
        srv = _Server((pod["app_address"], 9000), _AnswerAndClose); threading.Thread(target=srv.serve_forever, daemon=True).start()
    for svc in ("plain", "tcp-via-waypoint"):
        d = raw(mesh, svc); print("RAW", kind, svc, len(d), d[-30:])
