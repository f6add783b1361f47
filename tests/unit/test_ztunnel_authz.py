"""The ztunnel reduction of AuthorizationPolicies: the test vectors of istio-ambient-semantics.md §4.4."""

from __future__ import annotations

import pytest

from waypost.api import load_text
from waypost.mesh.policies import ztunnel_condition
from waypost.mesh.ztunnel_authz import reduce_policy

BAR = "cluster.local/ns/foo/sa/bar"


def policy(spec: str):
    text = f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: foo}}\nspec:\n{spec}"
    result = load_text(text, "p.yaml")
    assert not result.errors, [d.render() for d in result.errors]
    return result.resources[0]


def principals_of(reduced) -> list[list]:
    """Each group's clauses as (field, values) lists, for readable assertions."""
    return [[[m.fields for m in clause.matches] for clause in g.clauses] for g in reduced.groups]


def test_deny_by_principal_is_kept():
    p = policy(f"  action: DENY\n  rules: [{{from: [{{source: {{principals: [{BAR}]}}}}]}}]\n")
    assert principals_of(reduce_policy(p)) == [[[(("principals", (BAR,)),)]]]
    assert ztunnel_condition(p).reason == "Accepted"


def test_deny_on_request_principals_only_has_no_effect():
    p = policy("  action: DENY\n  rules: [{from: [{source: {notRequestPrincipals: [x]}}]}]\n")
    assert reduce_policy(p).groups == ()
    assert "will have no effect" in ztunnel_condition(p).message


def test_deny_mixing_l4_and_l7_in_one_source_is_broader():
    p = policy(f"  action: DENY\n  rules: [{{from: [{{source: {{principals: [{BAR}], notRequestPrincipals: [x]}}}}]}}]\n")
    assert principals_of(reduce_policy(p)) == [[[(("principals", (BAR,)),)]]]
    assert "more restrictive than requested" in ztunnel_condition(p).message


def test_deny_l7_rule_and_l4_rule_keeps_the_l4_rule():
    p = policy(f"  action: DENY\n  rules:\n  - to: [{{operation: {{methods: [GET]}}}}]\n  - from: [{{source: {{principals: [{BAR}]}}}}]\n")
    assert principals_of(reduce_policy(p)) == [[[(("principals", (BAR,)),)]]]


def test_deny_empty_rule_denies_everything():
    p = policy("  action: DENY\n  rules: [{}, {from: [{source: {notRequestPrincipals: [x]}}]}]\n")
    groups = reduce_policy(p).groups
    assert len(groups) == 1 and groups[0].clauses == ()  # a group without clauses matches everything


def test_deny_with_l7_when_has_no_effect():
    p = policy(f"  action: DENY\n  rules:\n  - from: [{{source: {{principals: [{BAR}]}}}}]\n    when: [{{key: 'request.headers[x-token]', values: [a]}}]\n")
    assert reduce_policy(p).groups == ()


def test_deny_with_l7_operation_has_no_effect():
    p = policy(f"  action: DENY\n  rules:\n  - from: [{{source: {{principals: [{BAR}]}}}}]\n    to: [{{operation: {{methods: [GET]}}}}]\n")
    assert reduce_policy(p).groups == ()


def test_allow_with_l7_attributes_drops_the_rule_and_allows_nothing():
    p = policy(
        "  action: ALLOW\n  rules:\n  - from: [{source: {requestPrincipals: ['*']}}]\n    to: [{operation: {methods: [GET]}}]\n"
        "    when: [{key: request.auth.presenter, values: [x]}]\n"
    )
    reduced = reduce_policy(p)
    assert reduced.action == "ALLOW" and reduced.groups == ()
    assert "rules matching HTTP attributes are omitted" in ztunnel_condition(p).message


@pytest.mark.parametrize("action", ["AUDIT"])
def test_audit_is_not_sent_to_ztunnel(action):
    p = policy(f"  action: {action}\n  rules: [{{}}]\n")
    condition = ztunnel_condition(p)
    assert (condition.status, condition.reason) == ("False", "UnsupportedValue")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("  action: DENY\n", "meaningless"),
        ("  selector: {matchLabels: {a: b}}\n  targetRefs: [{kind: Service, name: s}]\n", "only one of selector"),
        ("  rules: [{when: [{key: destination.namespace, values: [x]}]}]\n", "unknown attribute"),
        ("  rules: [{from: [{source: {principals: ['a*b']}}]}]\n", "one '*'"),
        ("  rules: [{from: [{source: {ipBlocks: [300.1.1.1]}}]}]\n", "invalid IP"),
        ("  rules: [{to: [{operation: {ports: ['99999']}}]}]\n", "invalid port"),
        ("  rules: [{to: []}]\n", "must not be empty"),
        ("  rules: [{from: [{source: {}}]}]\n", "source must not be empty"),
        ("  rules: [{to: [{operation: {paths: ['/a/{**}/b']}}]}]\n", "must be the last segment"),
        ("  targetRefs: [{kind: Service, name: s, namespace: other}]\n", "cross-namespace"),
    ],
)
def test_invalid_policies_are_rejected_with_istio_style_messages(spec, message):
    text = f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: foo}}\nspec:\n{spec}"
    errors = load_text(text, "p.yaml").errors
    assert errors and any(message in e.message for e in errors), [e.render() for e in errors]
