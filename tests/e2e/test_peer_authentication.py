"""PeerAuthentication at the destination ztunnel (issue 10): STRICT refuses plaintext from clients outside
the mesh, at mesh, namespace and workload scope and per port; PERMISSIVE (the default) and DISABLE let
it through; mesh clients, which arrive over HBONE, are never affected."""

from __future__ import annotations

import pytest

from .test_authorization import base, outcome

pytestmark = pytest.mark.e2e


def peer_auth(name: str, ns: str, spec: str) -> str:
    body = "".join(f"  {line}\n" for line in spec.strip("\n").splitlines())
    return f"\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}"


def outcomes(mesh) -> dict[str, str]:
    """Plaintext from outside the mesh to the backend pod's two ports, and a mesh client through the service."""
    pod = mesh.pods("app", "backend")[0]["address"]
    return {
        "outside:8080": outcome(mesh, "outside/outsider", f"http://{pod}:8080/"),
        "outside:9000": outcome(mesh, "outside/outsider", f"http://{pod}:9000/"),
        "mesh": outcome(mesh, "app/client", "http://svc/"),
    }


def test_peer_authentication_scopes_and_ports(start_mesh, tmp_path):
    mesh = start_mesh(base(service_waypoint=False), name="peerauth")
    assert outcomes(mesh) == {"outside:8080": "200", "outside:9000": "200", "mesh": "200"}  # PERMISSIVE by default

    steps = [
        # namespace STRICT: plaintext refused on every port
        (peer_auth("ns", "app", "mtls: {mode: STRICT}"), {"outside:8080": "reset", "outside:9000": "reset", "mesh": "200"}),
        # a workload policy overrides the namespace, and port-level mTLS overrides the workload's mode
        (peer_auth("backend", "app", "selector: {matchLabels: {app: backend}}\nmtls: {mode: PERMISSIVE}\nportLevelMtls: {9000: {mode: STRICT}}"),
         {"outside:8080": "200", "outside:9000": "reset", "mesh": "200"}),
    ]
    for i, (doc, expected) in enumerate(steps):
        file = tmp_path / f"step-{i}.yaml"
        file.write_text(doc)
        mesh.cli("apply", "-f", str(file))
        assert outcomes(mesh) == expected, (doc, outcomes(mesh))

    # Remove both; a mesh-wide (root namespace) STRICT with a workload DISABLE on one port.
    for i in range(len(steps)):
        mesh.cli("delete", "-f", str(tmp_path / f"step-{i}.yaml"))
    final = tmp_path / "mesh-wide.yaml"
    final.write_text(
        peer_auth("mesh", "istio-system", "mtls: {mode: STRICT}")
        + peer_auth("backend", "app", "selector: {matchLabels: {app: backend}}\nportLevelMtls: {8080: {mode: DISABLE}}")
    )
    mesh.cli("apply", "-f", str(final))
    assert outcomes(mesh) == {"outside:8080": "200", "outside:9000": "reset", "mesh": "200"}
