"""GRPCRoute rules → HTTPRouteEntry values (gRPC is HTTP/2: a method is the path `/service/method`).

Precedence (gateway-api.md §3): most characters in the service, then in the method, then the most header
matches; then the oldest route, `{namespace}/{name}`, rule order. A rule without matches matches every
call. Invalid backends answer gRPC UNAVAILABLE (HTTP 503 as a local reply).
"""

from __future__ import annotations

import re

from waypost.api.grpcroute import GRPCRoute, GRPCRouteMatch, GRPCRouteRule

from .http import BackendResolver, RuleResult, backend, first_by_name, header_ops, mirror, regex_problem
from .model import Condition, HeaderOps, HTTPRouteEntry, Mirror, ValueMatch

RESOLVED_REFS = "ResolvedRefs"


def method_path(match: GRPCRouteMatch) -> tuple[str, str]:
    """(Envoy path match type, value) for a gRPC method match."""
    m = match.method
    if m is None:
        return "PathPrefix", "/"
    if m.type == "Exact":
        if m.service and m.method:
            return "Exact", f"/{m.service}/{m.method}"
        if m.service:
            return "RegularExpression", f"/{re.escape(m.service)}/[^/]+"
        return "RegularExpression", f"/[^/]+/{re.escape(m.method or '')}"
    return "RegularExpression", f"/{m.service or '[^/]+'}/{m.method or '[^/]+'}"


def _sort_key(route: GRPCRoute, rule_index: int, match_index: int, match: GRPCRouteMatch) -> tuple:
    service = (match.method.service or "") if match.method else ""
    method = (match.method.method or "") if match.method else ""
    return (
        -len(service),
        -len(method),
        -len({h.name.lower() for h in match.headers}),
        route.metadata.creation_timestamp or "",
        route.namespace,
        route.name,
        rule_index,
        match_index,
    )


def rule_entries(route: GRPCRoute, rule_index: int, rule: GRPCRouteRule, resolver: BackendResolver) -> RuleResult:
    problems: list[Condition] = []
    if rule.session_persistence:
        return RuleResult([], problems, "sessionPersistence is not supported")
    for match in rule.matches:
        patterns = [h.value for h in match.headers if h.type == "RegularExpression"]
        if match.method is not None and match.method.type == "RegularExpression":
            patterns += [p for p in (match.method.service, match.method.method) if p]
        for pattern in patterns:
            problem = regex_problem(pattern)
            if problem:
                return RuleResult([], problems, problem)

    # Backends and mirrors resolve exactly as for HTTPRoute (same fields, same filters on backendRefs).
    backends = [backend(route, ref, resolver, problems) for ref in rule.backend_refs]
    request_headers = response_headers = HeaderOps()
    mirrors: list[Mirror] = []
    direct_status = None
    for f in rule.filters:
        if f.type == "RequestHeaderModifier":
            request_headers = header_ops(f.request_header_modifier)
        elif f.type == "ResponseHeaderModifier":
            response_headers = header_ops(f.response_header_modifier)
        elif f.type == "RequestMirror":
            if (m := mirror(route, f, resolver, problems)) is not None:
                mirrors.append(m)
        else:
            problems.append(Condition(RESOLVED_REFS, "False", "InvalidFilter", f"unsupported filter type {f.type}"))
            direct_status = 503

    entries = []
    for match_index, match in enumerate(rule.matches or [GRPCRouteMatch()]):
        path_type, path = method_path(match)
        headers = first_by_name(match.headers, lambda h: h.name.lower())
        entry = HTTPRouteEntry(
            route=f"{route.namespace}/{route.name}",
            rule_index=rule_index,
            rule_name=rule.name,
            path_type=path_type,
            path=path,
            backends=tuple(backends),
            headers=tuple(ValueMatch(h.name.lower(), h.value, h.type == "RegularExpression") for h in headers),
            request_headers=request_headers,
            response_headers=response_headers,
            mirrors=tuple(mirrors),
            direct_status=direct_status,
            kind="GRPCRoute",
        )
        entries.append((_sort_key(route, rule_index, match_index, match), entry))
    return RuleResult(entries, problems, None)
