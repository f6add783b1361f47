"""One VirtualService's routes as route entries for one service port (Istio's route translation,
pilot/pkg/networking/core/route/route.go; research notes in docs/classic-apis.md). `virtualservices`
decides which VirtualServices apply where; this module turns their http, tcp and tls routes into the
entries `envoy.routing` and the waypoint's L4 chains render.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from waypost.api.virtualservice import HTTPMatchRequest, HTTPRoute as VSHTTPRoute, StringMatch, VirtualService
from waypost.durations import parse_go_duration

from .http import regex_problem
from .model import (
    CLUSTER_DOMAIN,
    Cors,
    Fault,
    HeaderOps,
    HTTPRouteEntry,
    IstioRetry,
    L4RouteEntry,
    L4Routes,
    Mirror,
    PathRewrite,
    Redirect,
    Service,
    ValueMatch,
    WeightedBackend,
)

KIND = "VirtualService"


def resolve_host(host: str, namespace: str) -> str:
    """Istio's ResolveShortnameToFQDN: a name without a dot is a Service of the resource's namespace."""
    if host == "*" or "." in host:
        return host
    return f"{host}.{namespace}.svc.{CLUSTER_DOMAIN}"


def host_matches(pattern: str, fqdn: str) -> bool:
    if pattern.startswith("*."):
        return fqdn.endswith(pattern[1:])
    return pattern == "*" or pattern == fqdn


def exported_to(export_to: Iterable[str], own_namespace: str, namespace: str) -> bool:
    """Istio's exportTo: empty or `*` for every namespace, `.` for its own, else the namespaces named."""
    names = list(export_to)
    if not names or "*" in names:
        return True
    return ("." in names and namespace == own_namespace) or namespace in names


def _millionths(percent: float | int | None) -> int:
    return int(round(float(percent or 0) * 10_000))


def _ms(duration: str | None) -> int | None:
    return None if duration is None else int(round(parse_go_duration(duration) * 1000))


def _value_match(name: str, m: StringMatch, invert: bool = False) -> ValueMatch:
    if m.regex is not None and m.regex != "*":
        return ValueMatch(name, m.regex, regex=True, invert=invert)
    if m.prefix is not None:
        return ValueMatch(name, m.prefix, how="prefix", invert=invert)
    if m.exact is not None:
        return ValueMatch(name, m.exact, invert=invert)
    return ValueMatch(name, "", how="present", invert=invert)  # {} (or regex "*", above): the header is present  # an empty StringMatch: the header is present


def _header_ops(ops) -> HeaderOps:
    if ops is None:
        return HeaderOps()
    return HeaderOps(set=tuple(ops.set.items()), add=tuple(ops.add.items()), remove=tuple(ops.remove))


@dataclass(frozen=True)
class Resolver:
    """Services by host name, for destinations (a VirtualService names hosts, not Service objects)."""

    by_fqdn: Mapping[str, Service]

    def backend(self, vs: VirtualService, destination, routed: Service, port: int, weight: int, headers=None) -> WeightedBackend:
        fqdn = resolve_host(destination.host, vs.namespace)
        target = self.by_fqdn.get(fqdn)
        number = destination.port.number if destination.port is not None and destination.port.number else None
        if number is None and target is not None:
            # Port omitted: the routed port for the routed service itself, else the target's only port, else
            # the same port number (Istio uses the listener port).
            if target is routed or len(target.ports) != 1:
                number = port
            else:
                number = target.ports[0].port
        number = number or port
        exists = target is not None and target.port(number) is not None
        request = _header_ops(headers.request) if headers is not None else HeaderOps()
        response = _header_ops(headers.response) if headers is not None else HeaderOps()
        return WeightedBackend(fqdn, number, weight, exists, request, response, destination.subset or "")


def problems(vs: VirtualService) -> list[str]:
    """Regular expressions Envoy (RE2) would refuse: Istio's webhook refuses them too."""
    out = []
    for i, http in enumerate(vs.spec.http):
        matches = [m for m in http.match]
        for j, m in enumerate(matches):
            found = [x.regex for x in (m.uri, m.scheme, m.method, m.authority) if x is not None and x.regex is not None]
            found += [x.regex for x in [*m.headers.values(), *m.without_headers.values(), *m.query_params.values()] if x.regex is not None]
            for pattern in found:
                if (problem := regex_problem(pattern)) is not None:
                    out.append(f"http[{i}].match[{j}]: {problem}")
        if http.rewrite is not None and http.rewrite.uri_regex_rewrite is not None:
            if (problem := regex_problem(http.rewrite.uri_regex_rewrite.match or "")) is not None:
                out.append(f"http[{i}].rewrite.uriRegexRewrite: {problem}")
    return out


def is_catch_all(entry: HTTPRouteEntry) -> bool:
    """Istio's IsCatchAllRoute: prefix "/" (or regex ".*") with no header or query conditions."""
    return ((entry.path_type == "Prefix" and entry.path == "/") or (entry.path_type == "RegularExpression" and entry.path == ".*")) and not entry.headers and not entry.query


def _match_applies(m, port: int, waypoint_namespace: str) -> bool:
    """Whether an http, tcp or tls match block applies to a waypoint's service port: Istio's TranslateRoute
    filters, port, gateways, and the source conditions, which a waypoint
    evaluates against itself (sourceLabels: never; sourceNamespace: its own namespace)."""
    if m.port is not None and m.port != port:
        return False
    if m.gateways:
        return "mesh" in m.gateways
    if m.source_labels:
        return False
    return m.source_namespace is None or m.source_namespace == waypoint_namespace


def http_entries(vs: VirtualService, index: int, http: VSHTTPRoute, routed: Service, port: int, resolver: Resolver, waypoint_namespace: str) -> list[HTTPRouteEntry]:
    matches: list[HTTPMatchRequest | None] = list(http.match) or [None]
    name = http.name or f"{vs.namespace}.{vs.name}.{index}"
    # Actions, shared by the route's match blocks. One destination takes all requests, whatever its weight.
    destinations = http.route
    backends = tuple(
        resolver.backend(vs, d.destination, routed, port, 100 if len(destinations) == 1 else (d.weight or 0), d.headers)
        for d in destinations
    )
    redirect = None
    if http.redirect is not None:
        r = http.redirect
        path = None
        if r.prefix_rewrite is not None:
            path = PathRewrite(r.prefix_rewrite, full=False, literal=True)
        elif r.uri:
            path = PathRewrite(r.uri, full=True)
        redirect_port = r.port
        if r.derive_port == "FROM_REQUEST_PORT":
            redirect_port = port
        if redirect_port is not None and (r.scheme or "http", redirect_port) in (("http", 80), ("https", 443)):
            redirect_port = None  # the scheme's default port is not written into the Location
        redirect = Redirect(r.scheme, r.authority or None, redirect_port, path, r.redirect_code or 301)
    rewrite_path = None
    rewrite_host = None
    if http.rewrite is not None:
        rewrite_host = http.rewrite.authority or None
        if http.rewrite.uri_regex_rewrite is not None:
            rewrite_path = PathRewrite(http.rewrite.uri_regex_rewrite.rewrite or "", full=False, pattern=http.rewrite.uri_regex_rewrite.match)
        elif http.rewrite.uri is not None:
            rewrite_path = PathRewrite(http.rewrite.uri, full=False, literal=True)
    mirrors: list[Mirror] = []
    if http.mirror is not None:
        # Istio's MirrorPercent: mirrorPercentage, else the deprecated mirrorPercent, else every request.
        if http.mirror_percentage is not None:
            share = _millionths(http.mirror_percentage.value)
        elif http.mirror_percent_value is not None or http.mirror_percent_legacy is not None:
            share = _millionths(http.mirror_percent_value if http.mirror_percent_value is not None else http.mirror_percent_legacy)
        else:
            share = 1_000_000
        b = resolver.backend(vs, http.mirror, routed, port, 0)
        if b.exists and share > 0:
            mirrors.append(Mirror(b.service, b.port, share, b.subset))
    for m in http.mirrors:
        b = resolver.backend(vs, m.destination, routed, port, 0)
        share = 1_000_000 if m.percentage is None else _millionths(m.percentage.value)
        if b.exists and share > 0:
            mirrors.append(Mirror(b.service, b.port, share, b.subset))
    fault = None
    if http.fault is not None:
        d, a = http.fault.delay, http.fault.abort
        # Unset percentages inject nothing (Istio's TranslateFault).
        fault = Fault(
            delay_ms=_ms(d.fixed_delay) if d is not None else None,
            delay_per_million=(_millionths(d.percentage.value) if d.percentage is not None else _millionths(d.percent)) if d is not None else 0,
            abort_http=a.http_status if a is not None else None,
            abort_grpc=_grpc_code(a.grpc_status) if a is not None and a.grpc_status is not None else None,
            abort_per_million=_millionths(a.percentage.value) if a is not None and a.percentage is not None else 0,
        )
    retry = _retry(http.retries) if http.retries is not None else None
    cors = _cors(http.cors_policy) if http.cors_policy is not None else None
    direct_status = direct_body = None
    if http.direct_response is not None:
        direct_status = http.direct_response.status
        body = http.direct_response.body
        if body is not None:
            direct_body = body.string if body.string is not None else base64.b64decode(body.bytes or "").decode("utf-8", "replace")
    request_headers = _header_ops(http.headers.request) if http.headers is not None else HeaderOps()
    response_headers = _header_ops(http.headers.response) if http.headers is not None else HeaderOps()

    out = []
    for m in matches:
        if m is not None and not _match_applies(m, port, waypoint_namespace):
            continue
        path_type, path, headers, query = "Prefix", "/", [], []
        case_sensitive = True
        if m is not None:
            if m.uri is not None:
                if m.uri.exact is not None:
                    path_type, path = "Exact", m.uri.exact
                elif m.uri.regex is not None:
                    path_type, path = "RegularExpression", m.uri.regex
                elif m.uri.prefix is not None:
                    path_type, path = "Prefix", m.uri.prefix
            case_sensitive = not m.ignore_uri_case
            # Istio's order: headers and withoutHeaders sorted by name, then :method, :authority, :scheme.
            named = [(h, _value_match(h.lower(), sm)) for h, sm in m.headers.items()]
            named += [(h, _value_match(h.lower(), sm, invert=True)) for h, sm in m.without_headers.items()]
            headers = [vm for _, vm in sorted(named, key=lambda kv: kv[0])]
            for pseudo, sm in ((":method", m.method), (":authority", m.authority), (":scheme", m.scheme)):
                if sm is not None:
                    headers.append(_value_match(pseudo, sm))
            query = [_value_match(q, sm) for q, sm in m.query_params.items()]
        route_name = name if m is None or not m.name else f"{name}.{m.name}"
        entry = HTTPRouteEntry(
            route=f"{vs.namespace}/{vs.name}",
            rule_index=index,
            rule_name=http.name,
            path_type=path_type,
            path=path,
            backends=backends,
            headers=tuple(headers),
            query=tuple(query),
            request_headers=request_headers,
            response_headers=response_headers,
            redirect=redirect,
            rewrite_host=rewrite_host,
            rewrite_path=rewrite_path,
            mirrors=tuple(mirrors),
            cors=cors,
            timeout_ms=_ms(http.timeout),
            direct_status=direct_status,
            kind=KIND,
            case_sensitive=case_sensitive,
            fault=fault,
            istio_retry=retry,
            direct_body=direct_body,
            route_name_override=route_name,
        )
        out.append(entry)
        if case_sensitive and is_catch_all(entry):
            break
    return out


def _grpc_code(name: str) -> int:
    from waypost.api.virtualservice import GRPC_STATUS

    return GRPC_STATUS[name]


def _retry(r) -> IstioRetry:
    codes: list[int] = []
    policies: list[str] = []
    if r.retry_on:
        for token in (t.strip() for t in r.retry_on.split(",")):
            if not token:
                continue
            if token.isdigit():
                codes.append(int(token))
            elif token not in policies:
                policies.append(token)
        if codes and "retriable-status-codes" not in policies:
            policies.append("retriable-status-codes")
        retry_on = ",".join(policies)
    else:
        retry_on = ""  # Istio's default policies (the translation's DEFAULT_RETRY_ON)
    return IstioRetry(
        attempts=r.attempts or 0,  # unset is 0: no retries (Istio's ConvertPolicy)
        retry_on=retry_on,
        codes=tuple(codes),
        per_try_timeout_ms=_ms(r.per_try_timeout),
        backoff_ms=_ms(r.backoff),
        previous_hosts=r.retry_ignore_previous_hosts is not False,
    )


def _cors(c) -> Cors:
    exact = tuple(o for o in c.allow_origin)
    return Cors(
        allow_origins=exact,
        allow_credentials=bool(c.allow_credentials),
        allow_methods=tuple(c.allow_methods),
        allow_headers=tuple(c.allow_headers),
        expose_headers=tuple(c.expose_headers),
        max_age=int(parse_go_duration(c.max_age)) if c.max_age is not None else None,
        origin_matches=tuple(_value_match("origin", m) for m in c.allow_origins),
        kind=KIND,
        forward_unmatched_preflights=c.unmatched_preflights != "IGNORE",
    )


def _l4_backends(vs: VirtualService, destinations, routed: Service, port: int, resolver: Resolver) -> tuple[WeightedBackend, ...]:
    return tuple(
        resolver.backend(vs, d.destination, routed, port, 100 if len(destinations) == 1 else (d.weight or 0)) for d in destinations
    )


def l4_routes(usable: list[VirtualService], service: Service, port, resolver: Resolver, waypoint_namespace: str) -> L4Routes | None:
    """VirtualService `tls` routes (ports of protocol TLS/HTTPS: by SNI) or else `tcp` routes (the first that
    applies to the port takes its connections), as Istio's waypoint builds its TCP filter chains."""
    if port.protocol in ("TLS", "HTTPS"):
        entries = []
        for vs in usable:
            for route in vs.spec.tls:
                sni = tuple(h for m in route.match if _match_applies(m, port.port, waypoint_namespace) for h in m.sni_hosts)
                if sni:
                    entries.append(L4RouteEntry(f"{vs.namespace}/{vs.name}", KIND, sni, _l4_backends(vs, route.route, service, port.port, resolver)))
        if entries:
            return L4Routes(service.key, port.port, "TLSRoute", tuple(entries))
    for vs in usable:
        for route in vs.spec.tcp:
            if not route.match or any(_match_applies(m, port.port, waypoint_namespace) for m in route.match):
                entry = L4RouteEntry(f"{vs.namespace}/{vs.name}", KIND, (), _l4_backends(vs, route.route, service, port.port, resolver))
                return L4Routes(service.key, port.port, "TCPRoute", (entry,))
    return None
