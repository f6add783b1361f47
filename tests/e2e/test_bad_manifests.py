"""`waypost up` with a bad manifest: a located error, a non-zero exit, and nothing started."""

from __future__ import annotations

import pytest

from tests.conftest import waypost

pytestmark = pytest.mark.e2e

GOOD_NAMESPACE = """apiVersion: v1
kind: Namespace
metadata: {name: ok}
"""

CASES = {
    "yaml_syntax": ("apiVersion: v1\nkind: Service\nmetadata:\n  name: [unclosed\n", ["bad.yaml:", "YAML syntax error"]),
    "missing_required_field": (
        "apiVersion: v1\nkind: Service\nmetadata:\n  namespace: x\nspec:\n  ports: [{port: 80}]\n",
        ["bad.yaml:3:", "Service", "metadata.name", "required field is missing"],
    ),
    "wrong_type": (
        "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\nspec:\n  ports:\n  - name: http\n    port: eighty\n",
        ["bad.yaml:7:", "Service x/s", "spec.ports[0].port", "integer"],
    ),
    "unknown_kind_in_known_group": (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoot\nmetadata: {name: r, namespace: x}\n",
        ["bad.yaml:1:", "HTTPRoot x/r", "unknown kind"],
    ),
    "jwks_uri_not_http": (
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: x}\n"
        "spec:\n  jwtRules:\n  - issuer: me\n    jwksUri: ftp://127.0.0.1/keys\n",
        ["bad.yaml:6:", "RequestAuthentication x/jwt", "must be an http:// or https:// URL"],
    ),
    "custom_authorization_without_rules": (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext, namespace: x}\n"
        "spec:\n  action: CUSTOM\n  provider: {name: opa}\n",
        ["bad.yaml:4:", "AuthorizationPolicy x/ext", "CUSTOM action without `rules` is meaningless"],
    ),
    "mesh_config_with_a_bad_provider": (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |\n"
        "    extensionProviders:\n    - name: opa\n      envoyExtAuthzGrpc: {service: opa.x.svc.cluster.local, port: 99999}\n",
        ["bad.yaml:8:", "ConfigMap istio-system/istio", "data.mesh.extensionProviders[0].envoyExtAuthzGrpc.port", "port must be in the range"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_manifest_is_refused_with_its_location(case, tmp_path):
    text, expected = CASES[case]
    (tmp_path / "good.yaml").write_text(GOOD_NAMESPACE)
    (tmp_path / "bad.yaml").write_text(text)
    state_dir = tmp_path / "state"
    proc = waypost("up", "-f", str(tmp_path), "--detach", "--state-dir", str(state_dir))
    assert proc.returncode != 0
    for fragment in expected:
        assert fragment in proc.stderr, proc.stderr
    assert "nothing was started" in proc.stderr
    assert not (state_dir / "state.json").exists()
    assert not (state_dir / "supervisor.pid").exists()
    assert waypost("status", "--state-dir", str(state_dir)).returncode != 0


def test_foreign_kind_is_only_a_warning(tmp_path, start_mesh):
    mesh = start_mesh(GOOD_NAMESPACE + "---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n", name="foreign")
    assert mesh.state["phase"] == "ready"
