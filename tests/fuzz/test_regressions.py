"""Regression tests for the bugs the fuzz suite found (one input each, as found)."""

import time

import pytest

from waypost.api import load_text

NS = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (NS + "  x: " + "9" * 5000 + "\n", "more than 4300 digits"),  # was: ValueError escaped load_text
        (NS + "  labels: {d: !foo a}\n", "unsupported YAML tag '!foo'"),  # was: ConstructorError escaped
        (NS + "  labels: {d: !!binary aGk=}\n", "unsupported YAML tag"),  # was: bytes accepted as a string
        (NS + "spec: &a [*a]\n", "(a cycle)"),  # was: RecursionError
        (NS + "spec: &a {x: *a}\n", "(a cycle)"),
        (NS + "  labels: {[1]: 2}\n", "mapping key of kind sequence is not a string"),
    ],
)
def test_bad_yaml_is_a_located_error(text, message):
    result = load_text(text, "f.yaml")
    assert not result.resources
    (error,) = result.errors
    assert message in error.message and error.line >= 4 and error.kind == "Namespace", error.render()


def test_timestamps_and_equals_stay_strings_as_in_kubectl():
    # was: ValueError (month must be in 1..12) for an invalid date, and a date object for a valid one
    result = load_text(NS + "  labels: {a: 2001-13-45, b: 2001-12-14, c: =}\n")
    assert not result.errors
    assert result.resources[0].labels == {"a": "2001-13-45", "b": "2001-12-14", "c": "="}


def test_lone_surrogate_and_nul_are_located():
    assert load_text(NS.replace("name: a", "name: a\ud800")).errors[0].line == 4  # was: UnicodeEncodeError
    assert load_text(NS.replace("name: a", "name: a\x00")).errors[0].line == 4  # was: line 0


def test_billion_laughs_is_refused_quickly():
    text = NS + "spec:\n  a0: &a0 [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"  a{i}: &a{i} [{','.join(['*a%d' % (i - 1)] * 10)}]\n" for i in range(1, 9)
    )
    started = time.perf_counter()
    result = load_text(text)
    assert time.perf_counter() - started < 0.5  # was: 2 s at 10^5 values, exponential beyond
    assert "excessive aliasing" in result.errors[0].message and result.errors[0].field.startswith("spec.")


def test_empty_key_names_a_field():
    text = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: a\nspec: {}\n'': null\n"
    (error,) = load_text(text).errors
    assert error.field == '""' and error.message == "unknown field"  # was: an empty field path


@pytest.mark.parametrize(
    "spec, field",
    [
        ("{parentRefs: [{name: w}], rules: [{backendRefs: [{name: s, port: '80'}]}]}", "spec.rules[0].backendRefs[0].port"),
        ("{parentRefs: [{name: w, group: " + "a" * 254 + "}]}", "spec.parentRefs[0].group"),
        ("{parentRefs: [{name: w, kind: 'not a kind'}]}", "spec.parentRefs[0].kind"),
        ("{hostnames: ['Not_A_Host']}", "spec.hostnames[0]"),
    ],
)
def test_gateway_api_types_are_checked_as_the_crd_checks_them(spec, field):
    # was: accepted ("80" coerced to 80; group/kind/hostnames without the CRD's maxLength and pattern)
    text = f"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: a\nspec: {spec}\n"
    errors = load_text(text).errors
    assert errors and errors[0].field == field, [e.render() for e in errors]


def test_gateway_fields_of_recent_gateway_api_are_accepted():
    # was: "unknown field" for spec.allowedListeners and spec.tls (Gateway API v1.3+/v1.4 CRDs)
    text = (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: a\nspec:\n"
        "  gatewayClassName: istio-waypoint\n  listeners: [{name: m, port: 15008, protocol: HBONE}]\n"
        "  allowedListeners: {namespaces: {from: Same}}\n  tls: {}\n"
    )
    assert not load_text(text).errors
