"""Cross-check of waypost's validation against the upstream CRD schemas, field by field (issue 9).

For every implemented kind that has a CRD (Gateway API and Istio, shared/crds):
  * accept: an object the CRD accepts (OpenAPI schema, list types and CEL rules, see schema.py) must load,
    unless an error is a documented, deliberate difference (KNOWN_STRICTER below);
  * reject: an object the CRD rejects because of ONE field (a wrong type, an enum value, a number out of
    range, a string or list too long, a pattern, a missing required field, an unknown field) must be
    refused, with an error at that field or at the object that holds it, unless documented in
    KNOWN_LOOSER.
Objects that touch a CEL rule the evaluator cannot decide are skipped (none in the current CRDs except the
`oldSelf` transition rules, which do not apply to a create).

The core kinds (Namespace, Service, Pod, Deployment, ServiceAccount, ConfigMap) have no CRD; they are
fuzzed in test_fuzz_load.py only.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from . import schema as S
from .checks import dump, load
from .settings import fuzz

CRD_KINDS = sorted(S.crd_kinds())


@dataclass(frozen=True)
class Difference:
    kinds: str  # regex on the kind
    field: str  # regex on the diagnostic's field path (fullmatch)
    message: str  # regex searched in the diagnostic's message
    reason: str
    rule: str  # where the stricter (or looser) rule comes from

    def matches(self, kind: str, field: str, message: str) -> bool:
        return bool(re.fullmatch(self.kinds, kind) and re.fullmatch(self.field, field) and re.search(self.message, message))


ISTIO_VALIDATION = "istio/istio pkg/config/validation/validation.go"
AGENT_VALIDATION = "istio/istio pkg/config/validation/agent/extensions.go"

# Objects the CRD schema accepts and waypost rejects, on purpose. Istio's admission webhook validates Istio
# kinds far beyond their CRD schema, and waypost mirrors the webhook; a few restrictions are the local
# mesh's own (loopback addresses, no DNS resolution).
ISTIO_POLICY = "AuthorizationPolicy|RequestAuthentication|Telemetry|WasmPlugin|TrafficExtension"
KNOWN_STRICTER: list[Difference] = [
    # -- Istio webhook rules that the CRD does not carry
    Difference(ISTIO_POLICY + "|EnvoyFilter", r"spec\.targetRefs?(\[\d+\])?", r"targetRef kind .* is not supported|cross-namespace|targetRef",
               "policy targetRefs may only name the kinds Istio supports", ISTIO_VALIDATION + " validatePolicyTargetReference(s)"),
    Difference("AuthorizationPolicy", r"spec(\.provider\.name)?", r"required field is missing|`provider` must not be with non CUSTOM action|action without `rules` is meaningless|`provider.name` must not be empty|not supported with CUSTOM action",
               "CUSTOM/DENY/provider consistency", ISTIO_VALIDATION + " ValidateAuthorizationPolicy"),
    Difference("AuthorizationPolicy", r"spec\.rules\[\d+\]\.(from|to)\[\d+\]\.(source|operation)", r"must not be empty|required field is missing",
               "an empty from.source / to.operation is refused", ISTIO_VALIDATION + " ValidateAuthorizationPolicy (\"`from.source` must not be empty\")"),
    Difference("AuthorizationPolicy", r"spec\.rules\[\d+\](\.(from|to))?", r"must not be empty when present",
               "an empty from/to list is refused", ISTIO_VALIDATION + " ValidateAuthorizationPolicy"),
    Difference("AuthorizationPolicy", r"spec\.rules\[\d+\]\.(from\[\d+\]\.source|to\[\d+\]\.operation)\.\w+", r"invalid|may contain one '\*'|template|service account|only valid as",
               "principals, IPs, ports, paths and wildcards are syntax-checked", ISTIO_VALIDATION + " validateAuthorizationPolicyRule / security.ValidateAttribute"),
    Difference("AuthorizationPolicy", r"spec\.rules\[\d+\]\.when\[\d+\]", r"unknown attribute|values or notValues|invalid attribute|not supported|invalid",
               "`when` keys and values are checked", ISTIO_VALIDATION + " validateAuthorizationPolicyRule (security.ValidateAttribute)"),
    Difference("RequestAuthentication", r"spec\.jwtRules\[\d+\](\.\w+)?", r"issuer|required field is missing|jwks|must be|String should have at least 1 character|duration|each issuer",
               "each jwtRule needs an issuer and usable keys", ISTIO_VALIDATION + " ValidateRequestAuthentication / validateJwtRule"),
    Difference("RequestAuthentication", r"spec", r"each issuer may appear once", "duplicate issuers", ISTIO_VALIDATION + " ValidateRequestAuthentication"),
    Difference("EnvoyFilter", r"spec(\..*)?", r"Envoy filter:|EnvoyFilter|patch|applyTo|match",
               "EnvoyFilter patches are validated as istiod validates them", ISTIO_VALIDATION + " ValidateEnvoyFilter"),
    Difference("Telemetry", r"spec(\..*)?", r"required field is missing|provider|must|not supported",
               "telemetry providers, filters and overrides are checked", ISTIO_VALIDATION + " ValidateTelemetry"),
    Difference("WasmPlugin|TrafficExtension", r"spec(\..*)?", r"url|sha256|must|not supported|phase|priority",
               "Wasm/Lua extensions are checked as istiod does", AGENT_VALIDATION + " ValidateWasmPlugin"),
    Difference("ServiceEntry|WorkloadEntry", r"spec(\..*)?", r"host|port|must|endpoint|address|resolution|label|DNS|not supported|unique|workloadSelector|IP",
               "hosts, addresses, ports and endpoints are checked", ISTIO_VALIDATION + " ValidateServiceEntry / ValidateWorkloadEntry"),
    Difference("VirtualService", r"spec(\..*)?", r"host|must|not supported|only one of|needs|cannot|duration|invalid|at least|should not be empty|percentage|weight|status|not a|prefix|regex|required|mesh|attempts|redirect|rewrite|provided|match type|longer than|between|pseudo-header",
               "hosts, routes, matches, redirects, rewrites, retries, faults and mirrors are checked as istiod checks them",
               ISTIO_VALIDATION + " ValidateVirtualService / validateHTTPRoute (pkg/config/validation/virtualservice.go)"),
    Difference("DestinationRule", r"spec(\..*)?", r"host|must|not supported|only one of|needs|cannot|duration|invalid|at least|duplicate|required|between|negative|subset|port|status code",
               "hosts, subsets, load balancing, pools, outlier detection and TLS are checked as istiod checks them",
               ISTIO_VALIDATION + " ValidateDestinationRule / validateTrafficPolicy / ValidateTLS"),
    Difference("WorkloadGroup", r"spec\.(probe|template\.address|template\.ports)(\..*)?", r"not supported|must not be set|between",
               "probes are refused (no health checks here); a template has no address; ports are checked", ISTIO_VALIDATION + " ValidateWorkloadGroup"),
    # -- the local mesh's own limits
    Difference("ServiceEntry", r"spec", r"addresses with several hosts", "on loopback each host needs a VIP of its own", "waypost networking.py"),
    Difference("ServiceEntry|WorkloadEntry", r"spec\.(addresses|address|endpoints\[\d+\]\.address)", r".*",
               "the local mesh runs on 127.0.0.0/8: addresses must be loopback IPs (no DNS names)", "waypost networking.py"),
    Difference("WorkloadEntry|ServiceEntry", r"spec(\.endpoints\[\d+\])?\.address", r"required field is missing",
               "a local workload needs an address (network-only entries have nothing to run)", "waypost networking.py"),


    # -- Kubernetes validation outside the CRD schema (apimachinery ValidateLabelSelector)
    Difference("Gateway", r".*\.selector\.matchExpressions\[\d+\]\.operator", r"Input should be",
               "label selector operators are checked as the API server checks every LabelSelector", "k8s apimachinery ValidateLabelSelector"),
]

# Objects the CRD schema rejects and waypost accepts. Fields waypost does not act on are kept as free-form
# data: a wrong shape inside them is not refused yet (open: model them to get the CRD's checks).
KNOWN_LOOSER: list[Difference] = [
    Difference("Gateway", r"spec\.(tls|allowedListeners)(\..*|\[.*)?", r".*", "not modelled: waypost ignores these fields (OPEN)", "waypost gateway.py"),
    Difference("GatewayClass|Gateway", r"spec\.(parametersRef|infrastructure\.parametersRef)(\..*)?", r".*", "not modelled: waypost ignores parametersRef (OPEN)", "waypost gateway.py"),
    Difference("Gateway", r"spec\.(addresses|listeners\[\d+\]\.(tls|allowedRoutes\.kinds))(\..*|\[.*)?", r".*", "not modelled: free-form in waypost (OPEN)", "waypost gateway.py"),
]


# ---------------------------------------------------------------------------------------------------------


def _explained(kind: str, table: list[Difference], field: str, message: str) -> bool:
    return any(d.matches(kind, field, message) for d in table)


@pytest.mark.parametrize("kind", CRD_KINDS)
@fuzz(80)
@given(data=st.data())
def test_what_the_crd_accepts_waypost_accepts(kind, data):
    obj = data.draw(S.objects(kind))
    verdict = S.verdict(kind, obj)
    if not verdict.valid:
        return  # not an object the API server would accept (or one we cannot decide)
    result = load(dump(obj))
    unexplained = [d for d in result.errors if not _explained(kind, KNOWN_STRICTER, d.field, d.message)]
    assert not unexplained, "the CRD accepts this object, waypost rejects it:\n" + "\n".join(d.render() for d in unexplained) + "\n" + dump(obj)


# ---------------------------------------------------------------------------------------------------------
# Single-field violations


def _leaves(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out.extend(_leaves(v, prefix + (k,)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(_leaves(v, prefix + (i,)))
    return out


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        obj = obj[part]
    return obj


def _violations(node: dict[str, Any], value: Any) -> list[tuple[str, Any]]:
    """Values that break `node` in one way each (the oracle confirms)."""
    out: list[tuple[str, Any]] = []
    typ = node.get("type")
    int_or_string = node.get("x-kubernetes-int-or-string")
    if typ == "string" and not int_or_string:
        out += [("type", 7), ("type", True), ("type", ["x"])]
        if "enum" in node:
            out.append(("enum", "NotAnEnumValue"))
        if "maxLength" in node:
            out.append(("maxLength", "a" * (node["maxLength"] + 1)))
        if node.get("minLength", 0) > 0:
            out.append(("minLength", ""))
        if "pattern" in node:
            out += [("pattern", "-Not_Valid!"), ("pattern", "UPPER case"), ("pattern", "")]
    if typ == "integer" and not int_or_string:
        out += [("type", "80"), ("type", 1.5), ("type", True)]
        if "maximum" in node:
            out.append(("maximum", int(node["maximum"]) + 1))
        if "minimum" in node:
            out.append(("minimum", int(node["minimum"]) - 1))
    if typ == "boolean":
        out += [("type", "true"), ("type", 1)]
    if typ == "array":
        out += [("type", "x"), ("type", {"a": 1})]
        if "maxItems" in node and isinstance(value, list) and value:
            out.append(("maxItems", (value * (node["maxItems"] + 1))[: node["maxItems"] + 1]))
        if node.get("minItems", 0) > 0:
            out.append(("minItems", []))
    if typ == "object":
        out += [("type", "x"), ("type", [1])]
        if node.get("properties") and not node.get("x-kubernetes-preserve-unknown-fields") and isinstance(value, dict):
            out.append(("unknown", {**value, "notAField": 1}))
            for req in node.get("required") or ():
                if req in value:
                    out.append((f"required:{req}", {k: v for k, v in value.items() if k != req}))
    return out


@pytest.mark.parametrize("kind", CRD_KINDS)
@fuzz(80)
@given(data=st.data())
def test_what_the_crd_rejects_waypost_rejects(kind, data):
    obj = data.draw(S.objects(kind))
    if not S.verdict(kind, obj).valid:
        return
    base = load(dump(obj))
    if base.errors:
        return  # a known difference (checked by the accept test): no clean base to break
    paths = [p for p in _leaves(obj["spec"], ("spec",)) if S.schema_at(kind, p) is not None]
    path = data.draw(st.sampled_from(paths))
    node = S.schema_at(kind, path)
    choices = _violations(node, _get(obj, path))
    if not choices:
        return
    what, bad = data.draw(st.sampled_from(choices))
    mutated = copy.deepcopy(obj)
    parent = _get(mutated, path[:-1])
    parent[path[-1]] = bad
    verdict = S.verdict(kind, mutated)
    if verdict.valid or verdict.undecided:
        return  # not a violation after all (e.g. a pattern that the value still matches)
    result = load(dump(mutated))
    where = S.render_path(path)
    if not result.errors:
        if _explained(kind, KNOWN_LOOSER, where, what):
            return
        pytest.fail(f"the CRD rejects {kind} {where} ({what}: {verdict.errors[0][1]}), waypost accepts it:\n{dump(mutated)}")
    # The error names that field, a field inside it, or an object that contains it (a model-level check).
    oracle_paths = [where] + [S.render_path(p) for p, _ in verdict.errors]
    assert any(
        d.field and any(o == d.field or o.startswith(d.field + ".") or o.startswith(d.field + "[") or d.field.startswith(o) for o in oracle_paths)
        for d in result.errors
    ), f"{kind} {where} ({what}): errors at other fields: {[d.render() for d in result.errors]}"
