"""VirtualService (networking.istio.io), as a waypoint honours it (Istio: alpha in ambient).

Every field of the CRD is modelled, so a typo is an "unknown field" and a wrong type is refused where it
is. Istio's admission rules beyond the schema (pkg/config/validation/validation.go ValidateVirtualService)
are load errors here too. Fields a waypoint cannot honour are refused with "not supported" rather than
ignored: `delegate` (delegation is for gateways), `tcp`/`tls` routes with `destinationSubnets` or
`sourceSubnet`, `fault.abort.http2Error` and `fault.delay.exponentialDelay` (Istio drops those faults). `sourceLabels` and
`sourceNamespace` are accepted and ignored, as Istio's waypoints ignore them (the source of a waypoint's
route is not the client).
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from waypost.durations import parse_go_duration

from .meta import Model, Resource

ISTIO_NETWORKING_GROUP = "networking.istio.io"
CLASSIC_VERSIONS = ("v1", "v1beta1", "v1alpha3")

_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~:]+$")
# A host as Istio's ValidateWildcardDomain accepts it: a DNS name, optionally starting with "*.", or "*".
_HOST = re.compile(r"^(\*|(\*\.)?[A-Za-z0-9]([-A-Za-z0-9_]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9_]*[A-Za-z0-9])?)*)$")


def check_duration(value: str | None, minimum: float = 0.001) -> str | None:
    """A Go duration of at least 1 ms, as the CRDs' CEL rules `duration(self) >= duration('1ms')` require."""
    if value is None:
        return value
    if parse_go_duration(value) < minimum:
        raise ValueError(f"duration {value!r} must be at least 1ms")
    return value


def check_host(value: str) -> str:
    if len(value) > 255 or not _HOST.match(value):
        raise ValueError(f"host {value!r} is not a valid host name (a DNS name, optionally starting with '*.')")
    return value


class StringMatch(Model):
    """Istio's StringMatch: exactly one of exact, prefix, regex; an empty one matches a present value."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _one(self) -> "StringMatch":
        if sum(v is not None for v in (self.exact, self.prefix, self.regex)) > 1:
            raise ValueError("only one of exact, prefix or regex may be set")
        return self


class PortSelector(Model):
    number: int | None = Field(default=None, ge=0, le=4294967295)

    @field_validator("number")
    @classmethod
    def _range(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= 65535:
            raise ValueError(f"port number {value} must be between 1 and 65535")
        return value


class Destination(Model):
    host: str
    subset: str | None = None
    port: PortSelector | None = None

    _host = field_validator("host")(classmethod(lambda cls, v: check_host(v)))


class HeaderOperations(Model):
    set: dict[str, str] = Field(default_factory=dict)
    add: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names(self) -> "HeaderOperations":
        for name in [*self.set, *self.add, *self.remove]:
            if not name or not _HEADER_NAME.match(name):
                raise ValueError(f"invalid header name {name!r}")
        return self


class Headers(Model):
    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


class HTTPMatchRequest(Model):
    name: str | None = None
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: dict[str, StringMatch] = Field(default_factory=dict)
    port: int | None = Field(default=None, ge=0, le=4294967295)
    source_labels: dict[str, str] = Field(default_factory=dict)  # ignored in waypoints, as in Istio
    gateways: list[str] = Field(default_factory=list)
    query_params: dict[str, StringMatch] = Field(default_factory=dict)
    ignore_uri_case: bool = False
    without_headers: dict[str, StringMatch] = Field(default_factory=dict)
    source_namespace: str | None = None  # ignored in waypoints, as sourceLabels
    stat_prefix: str | None = None

    @model_validator(mode="after")
    def _istio_rules(self) -> "HTTPMatchRequest":
        for field_name, matches in (("headers", self.headers), ("withoutHeaders", self.without_headers)):
            for name in matches:
                if not name or not _HEADER_NAME.match(name):
                    raise ValueError(f"{field_name}: invalid header name {name!r}")
                if name.lower() == "uri" or name.lower().startswith(":"):
                    raise ValueError(f"{field_name}: header {name!r} is a pseudo-header; use uri, scheme, method or authority")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} must be between 1 and 65535")
        if self.uri is not None and self.uri.exact == "" and self.uri.prefix is None and self.uri.regex is None:
            raise ValueError("uri: exact must not be empty")
        for what, m in [("uri", self.uri), ("scheme", self.scheme), ("method", self.method), ("authority", self.authority),
                        *[(f"headers.{k}", v) for k, v in self.headers.items()], *[(f"withoutHeaders.{k}", v) for k, v in self.without_headers.items()],
                        *[(f"queryParams.{k}", v) for k, v in self.query_params.items()]]:
            if m is None:
                continue
            if m.prefix == "" and what != "uri":
                raise ValueError(f"{what}: prefix string match should not be empty")
            if m.regex == "":
                raise ValueError(f"{what}: regex string match should not be empty")
            if m.regex is not None and len(m.regex) > 1024:
                raise ValueError(f"{what}: regex is longer than 1024 characters")
        return self


class HTTPRouteDestination(Model):
    destination: Destination
    weight: int | None = Field(default=None, ge=-2147483648, le=2147483647)
    headers: Headers | None = None

    @field_validator("weight")
    @classmethod
    def _weight(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise ValueError("weight must not be negative")
        return value


class HTTPRedirect(Model):
    uri: str | None = None
    authority: str | None = None
    port: int | None = Field(default=None, ge=0, le=4294967295)
    derive_port: Literal["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"] | None = None
    scheme: str | None = None
    redirect_code: int | None = Field(default=None, ge=0, le=4294967295)
    prefix_rewrite: str | None = None

    @model_validator(mode="after")
    def _istio_rules(self) -> "HTTPRedirect":
        if self.uri is not None and self.prefix_rewrite is not None:
            raise ValueError("only one of uri or prefixRewrite may be set")
        if self.uri == "" and self.authority in (None, "") and self.prefix_rewrite is None and self.scheme is None:
            raise ValueError("redirect must specify uri, authority, prefixRewrite or scheme")
        if self.redirect_code is not None and self.redirect_code not in (301, 302, 303, 307, 308):
            raise ValueError(f"redirectCode {self.redirect_code} must be one of 301, 302, 303, 307 or 308")
        if self.port is not None and self.derive_port is not None:
            raise ValueError("only one of port or derivePort may be set")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} must be between 1 and 65535")
        return self


class Body(Model):
    string: str | None = None
    bytes: str | None = None

    @model_validator(mode="after")
    def _one(self) -> "Body":
        if self.string is not None and self.bytes is not None:
            raise ValueError("only one of string or bytes may be set")
        if self.bytes is not None:
            import base64
            import binascii

            try:
                base64.b64decode(self.bytes, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("bytes must be base64") from None
        return self


class HTTPDirectResponse(Model):
    status: int = Field(ge=0, le=4294967295)
    body: Body | None = None

    @field_validator("status")
    @classmethod
    def _status(cls, value: int) -> int:
        if not 200 <= value <= 599:
            raise ValueError(f"status {value} must be between 200 and 599")
        return value


class Delegate(Model):
    name: str | None = None
    namespace: str | None = None


class RegexRewrite(Model):
    match: str | None = None
    rewrite: str | None = None


class HTTPRewrite(Model):
    uri: str | None = None
    authority: str | None = None
    uri_regex_rewrite: RegexRewrite | None = None

    @model_validator(mode="after")
    def _istio_rules(self) -> "HTTPRewrite":
        if self.uri is not None and self.uri_regex_rewrite is not None:
            raise ValueError("only one of uri or uriRegexRewrite may be set")
        if self.uri is None and self.authority is None and self.uri_regex_rewrite is None:
            raise ValueError("rewrite must specify uri, authority or uriRegexRewrite")
        if self.uri_regex_rewrite is not None and (not self.uri_regex_rewrite.match or self.uri_regex_rewrite.rewrite is None):
            raise ValueError("uriRegexRewrite needs both match and rewrite")
        return self


class HTTPRetry(Model):
    attempts: int | None = Field(default=None, ge=-2147483648, le=2147483647)
    per_try_timeout: str | None = None
    retry_on: str | None = None
    retry_remote_localities: bool | None = None
    retry_ignore_previous_hosts: bool | None = None
    backoff: str | None = None

    @field_validator("per_try_timeout", "backoff")
    @classmethod
    def _durations(cls, value: str | None) -> str | None:
        return check_duration(value)

    @field_validator("attempts")
    @classmethod
    def _attempts(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise ValueError("attempts cannot be negative")
        return value

    @model_validator(mode="after")
    def _disabled(self) -> "HTTPRetry":
        # Istio's ValidateHTTPRetry: attempts 0 (or unset) disables retries; anything else would be ignored.
        if not self.attempts and (self.per_try_timeout or self.retry_on or self.retry_remote_localities):
            raise ValueError("http retry policy configured when attempts are set to 0 (disabled)")
        return self

    @field_validator("retry_on")
    @classmethod
    def _policies(cls, value: str | None) -> str | None:
        # Istio's validateHTTPRetry: each token is an Envoy retry policy or an HTTP status code.
        for token in (value or "").split(","):
            token = token.strip()
            if not token:
                continue
            if token.isdigit():
                if not 100 <= int(token) <= 599:
                    raise ValueError(f"retryOn: {token} is not an HTTP status code")
            elif token not in RETRY_POLICIES:
                raise ValueError(f"retryOn: {token!r} is not a valid retry policy")
        return value


# Envoy's x-envoy-retry-on and x-envoy-retry-grpc-on policies (Istio's supportedRetryOnPolicies).
RETRY_POLICIES = frozenset({
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited", "retriable-4xx",
    "refused-stream", "retriable-status-codes", "retriable-headers", "http3-post-connect-failure",
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
})


class Percent(Model):
    value: float | int = Field(default=0)

    @field_validator("value")
    @classmethod
    def _range(cls, value: float) -> float:
        if not 0 <= value <= 100:
            raise ValueError(f"percentage {value} must be between 0 and 100")
        return value


class Delay(Model):
    fixed_delay: str | None = None
    exponential_delay: str | None = None
    percentage: Percent | None = None
    percent: int | None = Field(default=None, ge=-2147483648, le=2147483647)

    @model_validator(mode="after")
    def _istio_rules(self) -> "Delay":
        check_duration(self.fixed_delay)
        if self.exponential_delay is not None:
            raise ValueError("exponentialDelay is not supported (Istio does not implement it either)")
        if self.fixed_delay is None:
            raise ValueError("delay needs fixedDelay")
        if self.percent is not None and not 0 <= self.percent <= 100:
            raise ValueError(f"percent {self.percent} must be between 0 and 100")
        return self


class Abort(Model):
    http_status: int | None = Field(default=None, ge=-2147483648, le=2147483647)
    grpc_status: str | None = None
    http2_error: str | None = None
    percentage: Percent | None = None

    @model_validator(mode="after")
    def _istio_rules(self) -> "Abort":
        given = [n for n, v in (("httpStatus", self.http_status), ("grpcStatus", self.grpc_status), ("http2Error", self.http2_error)) if v is not None]
        if len(given) != 1:
            raise ValueError("abort needs exactly one of httpStatus or grpcStatus")
        if self.http2_error is not None:
            raise ValueError("http2Error is not supported (Istio does not implement it either)")
        if self.http_status is not None and not 200 <= self.http_status <= 599:
            raise ValueError(f"httpStatus {self.http_status} must be between 200 and 599")
        if self.grpc_status is not None and self.grpc_status not in GRPC_STATUS:
            raise ValueError(f"grpcStatus {self.grpc_status!r} is not a gRPC status name (e.g. UNAVAILABLE)")
        return self


# gRPC status names → codes (grpc/codes), as Istio's abort.grpcStatus takes them.
GRPC_STATUS = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "ABORTED": 10,
    "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}


class HTTPFaultInjection(Model):
    delay: Delay | None = None
    abort: Abort | None = None

    @model_validator(mode="after")
    def _one(self) -> "HTTPFaultInjection":
        if self.delay is None and self.abort is None:
            raise ValueError("fault must have a delay or an abort")
        return self


class HTTPMirrorPolicy(Model):
    destination: Destination
    percentage: Percent | None = None


class CorsPolicy(Model):
    allow_origin: list[str] = Field(default_factory=list)  # deprecated: exact origins
    allow_origins: list[StringMatch] = Field(default_factory=list)
    allow_methods: list[str] = Field(default_factory=list)
    allow_headers: list[str] = Field(default_factory=list)
    expose_headers: list[str] = Field(default_factory=list)
    max_age: str | None = None
    allow_credentials: bool | None = None
    unmatched_preflights: Literal["UNSPECIFIED", "FORWARD", "IGNORE"] | None = None

    @field_validator("max_age")
    @classmethod
    def _max_age(cls, value: str | None) -> str | None:
        return check_duration(value)

    @model_validator(mode="after")
    def _istio_rules(self) -> "CorsPolicy":
        for method in self.allow_methods:
            if method not in ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"):
                raise ValueError(f"allowMethods: {method!r} is not an HTTP method")
        for origin in self.allow_origins:
            if origin.exact is None and origin.prefix is None and origin.regex is None or "" in (origin.exact, origin.prefix, origin.regex):
                raise ValueError(f"{origin.model_dump(exclude_none=True)} is not a valid match type for CORS allow origins")
        return self


class HTTPRoute(Model):
    name: str | None = None
    match: list[HTTPMatchRequest] = Field(default_factory=list)
    route: list[HTTPRouteDestination] = Field(default_factory=list)
    redirect: HTTPRedirect | None = None
    direct_response: HTTPDirectResponse | None = None
    delegate: Delegate | None = None
    rewrite: HTTPRewrite | None = None
    timeout: str | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    mirror: Destination | None = None
    mirrors: list[HTTPMirrorPolicy] = Field(default_factory=list)
    mirror_percent_value: int | None = Field(default=None, ge=0, le=4294967295, alias="mirrorPercent")
    mirror_percent_legacy: int | None = Field(default=None, ge=0, le=4294967295, alias="mirror_percent")  # deprecated spelling
    mirror_percentage: Percent | None = None
    cors_policy: CorsPolicy | None = None
    headers: Headers | None = None

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: str | None) -> str | None:
        return check_duration(value)

    @model_validator(mode="after")
    def _istio_rules(self) -> "HTTPRoute":
        # pkg/config/validation/validation.go validateHTTPRoute.
        if self.delegate is not None:
            raise ValueError("delegate is not supported in waypoints (Istio delegates only on gateways)")
        actions = [n for n, v in (("route", self.route), ("redirect", self.redirect), ("directResponse", self.direct_response)) if v]
        if not actions:
            raise ValueError("http route must have one of route, redirect or directResponse")
        if len(actions) > 1:
            raise ValueError(f"http route may have only one of route, redirect or directResponse (has {', '.join(actions)})")
        if self.redirect is not None or self.direct_response is not None:
            for what, value in (("rewrite", self.rewrite), ("mirror", self.mirror or self.mirrors), ("retries", self.retries), ("timeout", self.timeout)):
                if value:
                    raise ValueError(f"{what} cannot be combined with {actions[0]}")
        if self.mirror is not None and self.mirrors:
            raise ValueError("only one of mirror or mirrors may be set")
        if self.mirrors and (self.mirror_percent_value is not None or self.mirror_percent_legacy is not None or self.mirror_percentage is not None):
            raise ValueError("mirrors takes its percentage per mirror, not mirrorPercent/mirrorPercentage")
        if max(self.mirror_percent_value or 0, self.mirror_percent_legacy or 0) > 100:
            raise ValueError("mirrorPercent must be at most 100")
        if len(self.route) > 1 and sum(d.weight or 0 for d in self.route) == 0:
            raise ValueError("total destination weight is 0")
        return self


class L4MatchAttributes(Model):
    destination_subnets: list[str] = Field(default_factory=list)
    port: int | None = Field(default=None, ge=0, le=4294967295)
    source_labels: dict[str, str] = Field(default_factory=dict)
    gateways: list[str] = Field(default_factory=list)
    source_namespace: str | None = None
    source_subnet: str | None = None

    @model_validator(mode="after")
    def _waypoint_rules(self) -> "L4MatchAttributes":
        if self.destination_subnets or self.source_subnet:
            raise ValueError("destinationSubnets and sourceSubnet are not supported in waypoints")
        return self


class TLSMatchAttributes(L4MatchAttributes):
    sni_hosts: list[str] = Field(min_length=1)


class RouteDestination(Model):
    destination: Destination
    weight: int | None = Field(default=None, ge=-2147483648, le=2147483647)


class TCPRoute(Model):
    match: list[L4MatchAttributes] = Field(default_factory=list)
    route: list[RouteDestination] = Field(default_factory=list)

    @model_validator(mode="after")
    def _routes(self) -> "TCPRoute":
        if not self.route:
            raise ValueError("tcp route must have at least one destination")
        return self


class TLSRoute(Model):
    match: list[TLSMatchAttributes] = Field(min_length=1)
    route: list[RouteDestination] = Field(default_factory=list)

    @model_validator(mode="after")
    def _routes(self) -> "TLSRoute":
        if not self.route:
            raise ValueError("tls route must have at least one destination")
        return self


class VirtualServiceSpec(Model):
    hosts: list[str] = Field(default_factory=list)
    gateways: list[str] = Field(default_factory=list)
    http: list[HTTPRoute] = Field(default_factory=list)
    tls: list[TLSRoute] = Field(default_factory=list)
    tcp: list[TCPRoute] = Field(default_factory=list)
    export_to: list[str] = Field(default_factory=list)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, values: list[str]) -> list[str]:
        if not values:
            raise ValueError("virtual service must have at least one host")
        for v in values:
            if v == "*":
                raise ValueError("wildcard host * is not allowed for virtual services bound to the mesh gateway")
            check_host(v)
        return values

    @model_validator(mode="after")
    def _routes(self) -> "VirtualServiceSpec":
        if not (self.http or self.tls or self.tcp):
            raise ValueError("http, tcp or tls must be provided in virtual service")
        return self


class VirtualService(Resource):
    GROUP: ClassVar[str] = ISTIO_NETWORKING_GROUP
    KIND: ClassVar[str] = "VirtualService"
    VERSIONS: ClassVar[tuple[str, ...]] = CLASSIC_VERSIONS
    spec: VirtualServiceSpec

    @property
    def for_mesh(self) -> bool:
        """Whether the waypoints (Istio's reserved `mesh` gateway) use it: `gateways` omitted or naming mesh."""
        return not self.spec.gateways or "mesh" in self.spec.gateways
