"""WorkloadGroup (issue 10): its members, WorkloadEntries marked `istio.io/autoRegistrationGroup`, take the
group's labels, ports and service account, so Services select them and they get the group's identity."""

from __future__ import annotations

import json
import os

import pytest

from tests.e2e.servers import serving
from tests.manifests import ambient_with_waypoint

pytestmark = pytest.mark.e2e

VM = f"127.254.{os.getpid() % 250 + 1}.21"


MESH = ambient_with_waypoint("vms") + f"""
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {{name: reviews-vm, namespace: vms}}
spec:
  metadata: {{labels: {{app: reviews-vm}}}}
  template: {{serviceAccount: reviews-legacy, ports: {{http: 8091}}, labels: {{version: vm}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: reviews-vm-1
  namespace: vms
  annotations: {{istio.io/autoRegistrationGroup: reviews-vm}}
spec: {{address: {VM}}}
---
apiVersion: v1
kind: Service
metadata: {{name: reviews-vm, namespace: vms}}
spec: {{selector: {{app: reviews-vm}}, ports: [{{name: http, port: 80, targetPort: http}}]}}
"""


@pytest.fixture
def vm():
    with serving(VM, 8091):
        yield


def test_members_of_a_workload_group_take_its_template(start_mesh, vm):
    mesh = start_mesh(MESH, name="wg")
    member = next(w for w in mesh.state["workloads"] if w["pod"] == "reviews-vm-1")
    assert member["identity"] == "spiffe://cluster.local/ns/vms/sa/reviews-legacy"
    r = mesh.request("vms/client", "http://reviews-vm.vms/hello")
    assert r.status == 200, r.body
    seen = json.loads(r.body)
    assert (seen["server"], seen["path"]) == (VM, "/hello")  # selected by the group's label, on the group's port
    out = mesh.cli("get", "workloadgroup", "reviews-vm", "-n", "vms", "-o", "json")
    accepted = json.loads(out.stdout)["status"]["conditions"][0]
    assert accepted["status"] == "True" and "reviews-vm-1" in accepted["message"]
