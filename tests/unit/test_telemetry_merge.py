"""Which Telemetries apply to a waypoint chain and how they merge (istio pilot/pkg/model/telemetry.go)."""

from __future__ import annotations

from tests.manifests import ambient_namespace, waypoint
from waypost.api import load_text
from waypost.mesh.addresses import AddressPlan
from waypost.mesh.build import build
from waypost.mesh.telemetry import LogProvider, MetricOverride, for_chain

BASE = ambient_namespace("app", "waypoint") + waypoint("app") + """
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: app}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: app}
spec: {ports: [{name: http, port: 80}]}
"""


def telemetry(name: str, ns: str, spec: str) -> str:
    body = "".join(f"  {line}\n" for line in spec.strip("\n").splitlines())
    return f"\n---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}"


def chain(text: str, service: str | None = "svc"):
    result = load_text(BASE + text, "t.yaml")
    assert not result.errors, [d.render() for d in result.errors]
    snapshot = build(result.resources, AddressPlan(6))
    waypoint = snapshot.waypoints[0]
    return for_chain(snapshot, waypoint, snapshot.service(f"app/{service}") if service else None), snapshot


def test_levels_merge_root_then_namespace_then_target():
    text = (
        telemetry("mesh", "istio-system", "metrics: [{overrides: [{match: {metric: REQUEST_COUNT}, tagOverrides: {a: {value: \"'root'\"}, b: {value: \"'root'\"}}}]}]")
        + telemetry("ns", "app", "metrics: [{overrides: [{match: {metric: REQUEST_COUNT}, tagOverrides: {b: {value: \"'ns'\"}}}]}]")
        + telemetry("svc", "app", "targetRefs: [{kind: Service, group: '', name: svc}]\n"
                    "metrics: [{overrides: [{match: {metric: REQUEST_COUNT}, tagOverrides: {c: {operation: REMOVE}}}]}]")
    )
    result, _ = chain(text)
    assert result.sources == ("istio-system/mesh", "app/ns", "app/svc")
    assert result.override("REQUEST_COUNT") == MetricOverride(False, (("a", False, "'root'"), ("b", False, "'ns'"), ("c", True, "")))
    other, _ = chain(text, "other")
    assert other.sources == ("istio-system/mesh", "app/ns")


def test_all_metrics_disabled_then_reenabled_lower():
    off = telemetry("mesh", "istio-system", "metrics: [{overrides: [{match: {metric: ALL_METRICS}, disabled: true}]}]")
    assert chain(off)[0].metrics is False
    back_on = off + telemetry("svc", "app", "targetRefs: [{kind: Service, group: '', name: svc}]\nmetrics: [{overrides: [{match: {metric: REQUEST_SIZE}, disabled: true}]}]")
    result, _ = chain(back_on)
    assert result.metrics is True and result.override("REQUEST_SIZE").disabled and not result.override("REQUEST_COUNT").disabled


def test_client_mode_overrides_do_not_apply_to_a_waypoint():
    result, _ = chain(telemetry("ns", "app", "metrics: [{overrides: [{match: {metric: REQUEST_COUNT, mode: CLIENT}, disabled: true}]}]"))
    assert not result.override("REQUEST_COUNT").disabled


def test_other_metrics_provider_replaces_prometheus():
    result, _ = chain(telemetry("ns", "app", "metrics: [{providers: [{name: otel}]}]"))
    assert result.metrics is False


def test_access_logging():
    assert chain("")[0].logging is None  # MeshConfig's legacy settings apply
    result, snapshot = chain(telemetry("ns", "app", "accessLogging: [{providers: [{name: envoy}], filter: {expression: 'response.code >= 400'}}]")
                             + telemetry("svc", "app", "targetRefs: [{kind: Service, group: '', name: svc}]\naccessLogging: [{disabled: true}]"))
    assert result.logging == (LogProvider("envoy", disabled=True),)
    other, _ = chain(telemetry("ns", "app", "accessLogging: [{providers: [{name: envoy}], filter: {expression: 'response.code >= 400'}}]"), "other")
    assert other.logging == (LogProvider("envoy", filter="response.code >= 400"),)


def test_validation_and_status():
    bad = load_text(telemetry("t", "app", "metrics: [{overrides: [{tagOverrides: {x: {operation: UPSERT}}, match: {metric: REQUEST_COUNT}}]}]"), "t.yaml")
    assert [d.message for d in bad.errors] == ["must set value when operation is UPSERT"]
    _, snapshot = chain(telemetry("traced", "app", "tracing: [{randomSamplingPercentage: 10}]\nmetrics: [{providers: [{name: stackdriver}]}]"))
    accepted, ignored = snapshot.status_of("Telemetry", "app", "traced").conditions
    assert accepted.reason == "Accepted" and "tracing" in ignored.message and "stackdriver" in ignored.message


def test_tracing_is_validated_as_the_crd_validates_it():
    # Found by tests/fuzz/test_crd_crosscheck.py: tracing was read as free-form maps, so `customTags: x` passed.
    cases = {
        "tracing: [{customTags: x}]": "customTags",
        "tracing: [{randomSamplingPercentage: 150}]": "randomSamplingPercentage",
        "tracing: [{customTags: {t: {literal: {value: v}, header: {name: h}}}}]": "customTags.t",
        "tracing: [{customTags: {t: {environment: {name: ''}}}}]": "customTags.t.environment.name",
        "tracing: [{match: {mode: INBOUND}}]": "match.mode",
    }
    for spec, field in cases.items():
        errors = load_text(telemetry("t", "app", spec), "t.yaml").errors
        assert [d.field for d in errors] == [f"spec.tracing[0].{field}"], (spec, [d.render() for d in errors])
    good = "tracing: [{providers: [{name: zipkin}], randomSamplingPercentage: 12.5, customTags: {t: {header: {name: x-id, defaultValue: none}}, u: {}}}]"
    assert not load_text(telemetry("t", "app", good), "t.yaml").errors
