"""HTTPRoute rules → HTTPRouteEntry values, with the controller-side checks that become status conditions.

Precedence (Gateway API, shared/spec/gateway-api.md §2.3): Exact path, longest PathPrefix, then regular
expressions (implementation-specific; Istio puts them after prefixes), a method match, more header
matches, more query matches, the oldest route, `{namespace}/{name}`, then rule and match order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from waypost.api.httproute import HTTPBackendRef, HTTPRoute, HTTPRouteFilter, HTTPRouteMatch, HTTPRouteRule, duration_ms

from .model import (
    Condition,
    Cors,
    HeaderOps,
    HTTPRouteEntry,
    Mirror,
    PathRewrite,
    Redirect,
    RetrySpec,
    Service,
    ValueMatch,
    WeightedBackend,
    service_fqdn,
    service_key,
)

RESOLVED_REFS = "ResolvedRefs"

# RE2 (Envoy's regex engine) has no look-around and no back-references.
_NOT_RE2 = re.compile(r"\(\?[=!]|\(\?<[=!]|\\[1-9]")


def regex_problem(pattern: str) -> str | None:
    if _NOT_RE2.search(pattern):
        return f"regular expression {pattern!r} uses look-around or back-references, which RE2 does not support"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"invalid regular expression {pattern!r}: {exc}"
    return None


@dataclass(frozen=True)
class RuleResult:
    entries: list[tuple[tuple, HTTPRouteEntry]]
    ref_problems: list[Condition]
    invalid: str | None  # a reason this rule cannot be programmed (the rule is dropped)


def header_ops(modifier) -> HeaderOps:
    if modifier is None:
        return HeaderOps()
    return HeaderOps(
        set=tuple((h.name, h.value) for h in modifier.set),
        add=tuple((h.name, h.value) for h in modifier.add),
        remove=tuple(modifier.remove),
    )


def first_by_name(items, key: Callable) -> list:
    """Gateway API: when a name repeats within one match, only the first entry counts."""
    seen: set[str] = set()
    out = []
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            out.append(item)
    return out


def sort_key(route: HTTPRoute, rule_index: int, match_index: int, match: HTTPRouteMatch, path: str) -> tuple:
    type_rank = {"Exact": 0, "PathPrefix": 1}.get(match.path.type, 2)
    return (
        type_rank,
        -len(path),
        0 if match.method else 1,
        -len({h.name.lower() for h in match.headers}),
        -len({q.name for q in match.query_params}),
        route.metadata.creation_timestamp or "",
        route.namespace,
        route.name,
        rule_index,
        match_index,
    )


HOST_KEY = "\0host:"  # `services` key prefix of a lookup by host name (`WithHosts`)


class WithHosts:
    """The services of a build as the attachment steps look them up: by key, by host name (`hosts`, or
    `get(HOST_KEY + host)` for backendRefs of kind Hostname; the first service of a host wins), and by the
    resource that defines them (`named`: a ServiceEntry has one per host). `build` makes one for all the
    steps; the indexes are made on first use."""

    __slots__ = ("services", "_by_host", "_by_name")

    def __init__(self, services: Mapping[str, Service]) -> None:
        self.services = services
        self._by_host: dict[str, Service] | None = None
        self._by_name: dict[tuple[str, str, str], list[Service]] | None = None

    @staticmethod
    def of(services: "Mapping[str, Service] | WithHosts") -> "WithHosts":
        return services if isinstance(services, WithHosts) else WithHosts(services)

    @property
    def hosts(self) -> Mapping[str, Service]:
        if self._by_host is None:
            self._by_host = {}
            for s in self.services.values():
                self._by_host.setdefault(s.fqdn, s)
        return self._by_host

    def named(self, kind: str, namespace: str, name: str) -> list[Service]:
        """The mesh services of one resource: a Service's, or a ServiceEntry's, one per host (a parentRef or
        targetRef names the resource, so it means every host)."""
        if self._by_name is None:
            self._by_name = {}
            for s in self.services.values():
                self._by_name.setdefault((s.kind, s.namespace, s.name), []).append(s)
        return self._by_name.get((kind, namespace, name), [])

    def values(self):
        return self.services.values()

    def get(self, key: str, default=None):
        if key.startswith(HOST_KEY):
            return self.hosts.get(key[len(HOST_KEY):], default)
        return self.services.get(key, default)


class BackendResolver:
    """Resolves backendRefs and mirror references to Services or ServiceEntries (mesh routes need no
    ReferenceGrant)."""

    def __init__(self, services: Mapping[str, Service]) -> None:
        self.services = services

    @staticmethod
    def supported(ref) -> bool:
        return (ref.kind == "Service" and ref.group in ("", "core")) or (
            ref.kind in ("ServiceEntry", "Hostname") and ref.group == "networking.istio.io"
        )

    def _lookup(self, ns: str, ref) -> Service | None:
        if ref.kind == "Hostname":
            # Istio's backendRef to a ServiceEntry host: `name` is the host (gateway conversion.go buildDestination).
            return self.services.get(HOST_KEY + ref.name)
        # kind ServiceEntry (waypost's shorthand): the entry's first host.
        return self.services.get(service_key(ref.kind, ns, ref.name))

    def fqdn(self, route_ns: str, ref) -> str:
        """The backend's host name, which names its cluster (a ServiceEntry's host, or the Service FQDN)."""
        ns = ref.namespace or route_ns
        service = self._lookup(ns, ref) if self.supported(ref) else None
        if service is None and ref.kind == "Hostname":
            return ref.name
        return service.fqdn if service is not None else service_fqdn(ns, ref.name)

    def resolve(self, route_ns: str, ref) -> tuple[bool, Condition | None]:
        ns = ref.namespace or route_ns
        if not self.supported(ref):
            return False, Condition(RESOLVED_REFS, "False", "InvalidKind", f"referencing unsupported backendRef: group {ref.group!r} kind {ref.kind!r}")
        if ref.kind == "Hostname" and ref.namespace:
            return False, Condition(RESOLVED_REFS, "False", "InvalidKind", "namespace may not be set with Hostname type")
        service = self._lookup(ns, ref)
        if service is None:
            what = ref.name if ref.kind == "Hostname" else f"{ref.name}.{ns}"
            return False, Condition(RESOLVED_REFS, "False", "BackendNotFound", f"backend({what}) not found")
        if service.port(ref.port or 0) is None:
            return False, Condition(RESOLVED_REFS, "False", "BackendNotFound", f"backend({ref.name}.{ns}) has no port {ref.port}")
        return True, None


def backend(route, ref: HTTPBackendRef, resolver: BackendResolver, problems: list[Condition]) -> WeightedBackend:
    exists, problem = resolver.resolve(route.namespace, ref)
    if problem:
        problems.append(problem)
    request, response = HeaderOps(), HeaderOps()
    for f in ref.filters:
        if f.type == "RequestHeaderModifier":
            request = header_ops(f.request_header_modifier)
        elif f.type == "ResponseHeaderModifier":
            response = header_ops(f.response_header_modifier)
        else:
            # Anything else on a backendRef is not implemented: fail that share closed (500), don't skip it.
            problems.append(Condition(RESOLVED_REFS, "False", "UnsupportedValue", f"backendRef filter {f.type} is not supported"))
            exists = False
    return WeightedBackend(resolver.fqdn(route.namespace, ref), ref.port or 0, ref.weight, exists, request, response)


def _rewrite(modifier, prefix: str) -> PathRewrite | None:
    if modifier is None:
        return None
    if modifier.type == "ReplaceFullPath":
        return PathRewrite(modifier.replace_full_path or "/", full=True)
    return PathRewrite(modifier.replace_prefix_match or "", full=False, matched_prefix=prefix)


def _cors(f: HTTPRouteFilter) -> Cors:
    c = f.cors
    return Cors(
        allow_origins=tuple(c.allow_origins),
        allow_credentials=bool(c.allow_credentials),
        allow_methods=tuple(c.allow_methods),
        allow_headers=tuple(c.allow_headers),
        expose_headers=tuple(c.expose_headers),
        max_age=c.max_age,
    )


def mirror(route, f: HTTPRouteFilter, resolver: BackendResolver, problems: list[Condition]) -> Mirror | None:
    m = f.request_mirror
    exists, problem = resolver.resolve(route.namespace, m.backend_ref)
    if problem:
        problems.append(problem)
        return None  # an unresolved mirror is not configured (the request itself is unaffected)
    if m.fraction is not None:
        per_million = m.fraction.numerator * 1_000_000 // m.fraction.denominator
    elif m.percent is not None:
        per_million = m.percent * 10_000
    else:
        per_million = 1_000_000
    return Mirror(resolver.fqdn(route.namespace, m.backend_ref), m.backend_ref.port or 0, per_million)


def rule_entries(route: HTTPRoute, rule_index: int, rule: HTTPRouteRule, resolver: BackendResolver) -> RuleResult:
    problems: list[Condition] = []
    if rule.session_persistence:
        return RuleResult([], problems, "sessionPersistence is not supported")
    for match in rule.matches:
        patterns = [match.path.value] if match.path.type == "RegularExpression" else []
        patterns += [h.value for h in match.headers if h.type == "RegularExpression"]
        patterns += [q.value for q in match.query_params if q.type == "RegularExpression"]
        for pattern in patterns:
            problem = regex_problem(pattern)
            if problem:
                return RuleResult([], problems, problem)

    backends = tuple(backend(route, ref, resolver, problems) for ref in rule.backend_refs)
    request_headers = response_headers = HeaderOps()
    redirect = None
    rewrite_host = None
    rewrite = None
    mirrors: list[Mirror] = []
    cors = None
    direct_status = None
    prefix = rule.matches[0].path.value if len(rule.matches) == 1 else "/"
    prefix = prefix.rstrip("/") or "/"
    for f in rule.filters:
        if f.type == "RequestHeaderModifier":
            request_headers = header_ops(f.request_header_modifier)
        elif f.type == "ResponseHeaderModifier":
            response_headers = header_ops(f.response_header_modifier)
        elif f.type == "RequestRedirect":
            r = f.request_redirect
            redirect = Redirect(r.scheme, r.hostname, r.port, _rewrite(r.path, prefix), r.status_code)
        elif f.type == "URLRewrite":
            rewrite_host = f.url_rewrite.hostname
            rewrite = _rewrite(f.url_rewrite.path, prefix)
        elif f.type == "RequestMirror":
            if (m := mirror(route, f, resolver, problems)) is not None:
                mirrors.append(m)
        elif f.type == "CORS":
            cors = _cors(f)
        else:
            # ExtensionRef / ExternalAuth: not implemented. The spec forbids skipping such a filter: answer 500.
            problems.append(Condition(RESOLVED_REFS, "False", "InvalidFilter", f"unsupported filter type {f.type}"))
            direct_status = 500

    timeout_ms = backend_timeout_ms = None
    if rule.timeouts is not None:
        if rule.timeouts.request is not None:
            timeout_ms = duration_ms(rule.timeouts.request)
        if rule.timeouts.backend_request is not None:
            backend_timeout_ms = duration_ms(rule.timeouts.backend_request)
    retry = None
    if rule.retry is not None:
        retry = RetrySpec(
            attempts=2 if rule.retry.attempts is None else rule.retry.attempts,
            codes=tuple(rule.retry.codes),
            backoff_ms=duration_ms(rule.retry.backoff) if rule.retry.backoff else None,
        )

    entries = []
    for match_index, match in enumerate(rule.matches):
        path = match.path.value
        if match.path.type == "PathPrefix" and len(path) > 1:
            path = path.rstrip("/") or "/"  # a trailing slash is ignored for prefixes
        headers = first_by_name(match.headers, lambda h: h.name.lower())
        query = first_by_name(match.query_params, lambda q: q.name)
        entry = HTTPRouteEntry(
            route=f"{route.namespace}/{route.name}",
            rule_index=rule_index,
            rule_name=rule.name,
            path_type=match.path.type,
            path=path,
            backends=backends,
            headers=tuple(ValueMatch(h.name.lower(), h.value, h.type == "RegularExpression") for h in headers),
            query=tuple(ValueMatch(q.name, q.value, q.type == "RegularExpression") for q in query),
            method=match.method,
            request_headers=request_headers,
            response_headers=response_headers,
            redirect=redirect,
            rewrite_host=rewrite_host,
            rewrite_path=rewrite,
            mirrors=tuple(mirrors),
            cors=cors,
            timeout_ms=timeout_ms,
            backend_timeout_ms=backend_timeout_ms,
            retry=retry,
            direct_status=direct_status,
        )
        entries.append((sort_key(route, rule_index, match_index, match, path), entry))
    return RuleResult(entries, problems, None)
