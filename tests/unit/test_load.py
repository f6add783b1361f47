"""Manifest loading: every problem is located (file:line, resource, field) and loses nothing else."""

from __future__ import annotations

from waypost.api import load_paths, load_text
from waypost.mesh.registry import echo_flavor, pod_names

SERVICE_OK = "apiVersion: v1\nkind: Service\nmetadata: {name: ok, namespace: a}\nspec: {ports: [{port: 80}]}\n"


def test_one_bad_document_does_not_lose_the_others():
    text = SERVICE_OK + "---\napiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: a}\nspec: {ports: [{port: 0}]}\n"
    result = load_text(text, "m.yaml")
    assert [r.name for r in result.resources] == ["ok"]
    (err,) = result.errors
    assert (err.file, err.line, err.kind, err.namespace, err.name, err.field) == ("m.yaml", 9, "Service", "a", "bad", "spec.ports[0].port")


def test_foreign_kinds_warn_and_are_skipped():
    result = load_text("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n", "m.yaml")
    assert not result.errors and not result.resources
    assert "unknown kind" in result.warnings[0].message


def test_duplicate_resources_are_reported_with_both_locations(tmp_path):
    (tmp_path / "a.yaml").write_text(SERVICE_OK)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yml").write_text(SERVICE_OK)
    result = load_paths([tmp_path])
    assert len(result.resources) == 1
    assert "defined twice; first at" in result.errors[0].message


def test_unknown_field_is_refused_in_gateway_api_kinds():
    text = (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: a}\n"
        "spec:\n  parentRefs: [{name: s, kind: Service, group: ''}]\n  rulez: []\n"
    )
    (err,) = load_text(text, "r.yaml").errors
    assert (err.line, err.field, err.message) == (6, "spec.rulez", "unknown field")


def test_list_kind_is_expanded():
    text = "apiVersion: v1\nkind: List\nitems:\n- " + SERVICE_OK.replace("\n", "\n  ")
    assert [r.name for r in load_text(text).resources] == ["ok"]


def test_deployment_pods_are_named_after_it():
    text = (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: echo-v1, namespace: a}\n"
        "spec:\n  replicas: 3\n  selector: {matchLabels: {app: e}}\n  template:\n    metadata: {labels: {app: e}}\n"
        "    spec: {containers: [{name: c, image: waypost/echo}]}\n"
    )
    (deployment,) = load_text(text).resources
    names = pod_names(deployment)
    assert len(set(names)) == 3
    assert all(n.startswith("echo-v1-") and len(n.split("-")) == 4 for n in names)
    assert names == pod_names(deployment)  # deterministic


def test_echo_images_are_recognised():
    assert echo_flavor("registry.k8s.io/gateway-api/echo-basic:v20240412-v1.0.0") == "basic"
    assert echo_flavor("registry.k8s.io/gateway-api/echo-advanced:v0.1.0") == "advanced"
    assert echo_flavor("gcr.io/istio-testing/app:latest") == "advanced"
    assert echo_flavor("waypost/echo") == "basic"
    assert echo_flavor("curlimages/curl") is None


def test_models_share_their_fields_sets_and_copies_stay_independent():
    """Loaded models share equal `model_fields_set`s (memory); a copy with updates gets its own."""
    from waypost.api import load_text

    text = "".join(
        f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: n}}\nspec: {{selector: {{app: a}}, ports: [{{name: http, port: 80}}]}}\n"
        for i in range(2)
    )
    first, second = load_text(text, "s.yaml").resources
    assert first.spec.model_fields_set is second.spec.model_fields_set
    before = set(first.spec.model_fields_set)
    copy = first.spec.model_copy(update={"type": "ClusterIP"})
    assert "type" in copy.model_fields_set and first.spec.model_fields_set == before
