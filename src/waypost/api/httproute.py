"""HTTPRoute (gateway.networking.k8s.io), complete, with the validation the CRD schema and its CEL rules apply.

What the API server would reject (wrong types, enum values, CEL rules such as "RequestRedirect and
URLRewrite cannot be combined") is a load error here. What a controller decides (does the backend exist,
is a regular expression valid for Envoy) becomes a status condition in `mesh.routes`.
Source: apis/v1/httproute_types.go and shared/spec/gateway-api.md §2.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from .meta import Model, Resource

GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSIONS = ("v1", "v1beta1")

# GEP-2257 durations: 1 to 4 of <1-5 digits><h|m|s|ms>.
DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_PATH_CHARS = re.compile(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


# Gateway API's common string types (apis/v1/shared_types.go), with the CRD's own limits and patterns.
Group = Annotated[str, Field(max_length=253, pattern=r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")]
Kind = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")]
Namespace = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
ObjectName = Annotated[str, Field(min_length=1, max_length=253)]
SectionName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")]
Hostname = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")]
PreciseHostname = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")]


def header_name(value: str) -> str:
    """RFC 7230 token, as the CRD pattern for header names requires."""
    if not _HEADER_NAME.match(value):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    return value


def duration_ms(value: str) -> int:
    """GEP-2257 duration → milliseconds."""
    total = 0
    for number, unit in re.findall(r"([0-9]+)(h|ms|m|s)", value):
        total += int(number) * {"h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}[unit]
    return total


def _check_duration(value: str | None) -> str | None:
    if value is not None and not DURATION.match(value):
        raise ValueError(f"{value!r} is not a Gateway API duration (e.g. 500ms, 10s, 1h30m)")
    return value


class ParentReference(Model):
    group: Group = GATEWAY_GROUP
    kind: Kind = "Gateway"
    namespace: Namespace | None = None
    name: ObjectName
    section_name: SectionName | None = None
    port: int | None = Field(default=None, ge=1, le=65535)


class PathMatch(Model):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: str = Field(default="/", max_length=1024)

    @model_validator(mode="after")
    def _valid_path(self) -> "PathMatch":
        if self.type == "RegularExpression":
            return self  # validity of the expression is a controller decision (status), see mesh.routes
        v = self.value
        if not v.startswith("/"):
            raise ValueError("value must be an absolute path starting with '/'")
        for bad in ("//", "/./", "/../", "%2f", "%2F", "#"):
            if bad in v:
                raise ValueError(f"value must not contain {bad!r}")
        if v.endswith("/..") or v.endswith("/."):
            raise ValueError("value must not end with '/.' or '/..'")
        if not _PATH_CHARS.match(v):
            raise ValueError("value may contain only RFC 3986 path characters")
        return self


class _NamedHeader(Model):
    name: str = Field(min_length=1, max_length=256)

    @field_validator("name")
    @classmethod
    def _token(cls, value: str) -> str:
        return header_name(value)


class HeaderMatch(_NamedHeader):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    value: str = Field(max_length=4096)



class QueryParamMatch(Model):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: str = Field(min_length=1, max_length=256)
    value: str = Field(min_length=1, max_length=1024)


class HTTPRouteMatch(Model):
    path: PathMatch = Field(default_factory=PathMatch)
    headers: list[HeaderMatch] = Field(default_factory=list, max_length=16)
    query_params: list[QueryParamMatch] = Field(default_factory=list, max_length=16)
    method: Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"] | None = None


class HeaderValue(_NamedHeader):
    value: str = Field(max_length=4096)



class HeaderModifier(Model):
    set: list[HeaderValue] = Field(default_factory=list, max_length=16)
    add: list[HeaderValue] = Field(default_factory=list, max_length=16)
    remove: list[str] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _one_action_per_name(self) -> "HeaderModifier":
        for field in ("set", "add"):
            names = [h.name.lower() for h in getattr(self, field)]
            if len(names) != len(set(names)):
                raise ValueError(f"{field}: each header name may appear once")
        if len({n.lower() for n in self.remove}) != len(self.remove):
            raise ValueError("remove: each header name may appear once")
        return self


class PathModifier(Model):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replace_full_path: str | None = Field(default=None, max_length=1024)
    replace_prefix_match: str | None = Field(default=None, max_length=1024)

    @model_validator(mode="after")
    def _body_matches_type(self) -> "PathModifier":
        if self.type == "ReplaceFullPath" and (self.replace_full_path is None or self.replace_prefix_match is not None):
            raise ValueError("replaceFullPath must be set (and only it) when type is ReplaceFullPath")
        if self.type == "ReplacePrefixMatch" and (self.replace_prefix_match is None or self.replace_full_path is not None):
            raise ValueError("replacePrefixMatch must be set (and only it) when type is ReplacePrefixMatch")
        return self


class RequestRedirect(Model):
    scheme: Literal["http", "https"] | None = None
    hostname: PreciseHostname | None = None
    path: PathModifier | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    status_code: Literal[301, 302, 303, 307, 308] = 302


class URLRewrite(Model):
    hostname: PreciseHostname | None = None
    path: PathModifier | None = None


class Fraction(Model):
    numerator: int = Field(ge=0)
    denominator: int = Field(default=100, ge=1)

    @model_validator(mode="after")
    def _proper(self) -> "Fraction":
        if self.numerator > self.denominator:
            raise ValueError("numerator must be less than or equal to denominator")
        return self


class BackendObjectReference(Model):
    group: Group = ""
    kind: Kind = "Service"
    name: ObjectName
    namespace: Namespace | None = None
    port: int | None = Field(default=None, ge=1, le=65535)

    @model_validator(mode="after")
    def _port_for_service(self) -> "BackendObjectReference":
        if self.kind == "Service" and self.group in ("", "core") and self.port is None:
            raise ValueError("port is required when referring to a Service")
        return self


class RequestMirror(Model):
    backend_ref: BackendObjectReference
    percent: int | None = Field(default=None, ge=0, le=100)
    fraction: Fraction | None = None

    @model_validator(mode="after")
    def _one_of(self) -> "RequestMirror":
        if self.percent is not None and self.fraction is not None:
            raise ValueError("only one of percent or fraction may be specified")
        return self


class CORS(Model):
    allow_origins: list[str] = Field(default_factory=list, max_length=64)
    allow_credentials: bool | None = None
    allow_methods: list[str] = Field(default_factory=list, max_length=9)
    allow_headers: list[str] = Field(default_factory=list, max_length=64)
    expose_headers: list[str] = Field(default_factory=list, max_length=64)
    max_age: int = Field(default=5, ge=1)

    @model_validator(mode="after")
    def _wildcards_alone(self) -> "CORS":
        for field in ("allow_origins", "allow_methods", "allow_headers", "expose_headers"):
            values = getattr(self, field)
            if "*" in values and len(values) > 1:
                raise ValueError(f"{field}: '*' must be the only entry when present")
        return self


class LocalObjectReference(Model):
    group: Group
    kind: Kind
    name: ObjectName


FILTER_FIELDS = {
    "RequestHeaderModifier": "request_header_modifier",
    "ResponseHeaderModifier": "response_header_modifier",
    "RequestMirror": "request_mirror",
    "RequestRedirect": "request_redirect",
    "URLRewrite": "url_rewrite",
    "CORS": "cors",
    "ExtensionRef": "extension_ref",
    "ExternalAuth": "external_auth",
}


class HTTPRouteFilter(Model):
    type: Literal["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "RequestRedirect", "URLRewrite", "CORS", "ExtensionRef", "ExternalAuth"]
    request_header_modifier: HeaderModifier | None = None
    response_header_modifier: HeaderModifier | None = None
    request_mirror: RequestMirror | None = None
    request_redirect: RequestRedirect | None = None
    url_rewrite: URLRewrite | None = Field(default=None, alias="urlRewrite")
    cors: CORS | None = None
    extension_ref: LocalObjectReference | None = None
    external_auth: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _body_matches_type(self) -> "HTTPRouteFilter":
        # CEL: the filter's body must be the one its type names, and no other.
        wanted = FILTER_FIELDS[self.type]
        for kind, field in FILTER_FIELDS.items():
            present = getattr(self, field) is not None
            if field == wanted and not present:
                raise ValueError(f"filter of type {self.type} needs its {_camel(field)} field")
            if field != wanted and present:
                raise ValueError(f"{_camel(field)} must not be set for filter type {self.type}")
        return self

    @property
    def body(self) -> Any:
        return getattr(self, FILTER_FIELDS[self.type])


def _camel(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(p.title() for p in rest) if field != "url_rewrite" else "urlRewrite"


def check_filters(filters) -> None:
    """CEL: each filter type at most once per list, except RequestMirror and ExtensionRef."""
    counts: dict[str, int] = {}
    for f in filters:
        counts[f.type] = counts.get(f.type, 0) + 1
    for kind, n in counts.items():
        if n > 1 and kind not in ("RequestMirror", "ExtensionRef"):
            raise ValueError(f"filters: {kind} may appear at most once")
    if "RequestRedirect" in counts and "URLRewrite" in counts:
        raise ValueError("filters: RequestRedirect and URLRewrite cannot be used together")


class HTTPBackendRef(BackendObjectReference):
    weight: int = Field(default=1, ge=0, le=1_000_000)
    filters: list[HTTPRouteFilter] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _filters(self) -> "HTTPBackendRef":
        check_filters(self.filters)
        return self


class Timeouts(Model):
    request: str | None = None
    backend_request: str | None = None

    @field_validator("request", "backend_request")
    @classmethod
    def _durations(cls, value: str | None) -> str | None:
        return _check_duration(value)

    @model_validator(mode="after")
    def _backend_within_request(self) -> "Timeouts":
        if self.request and self.backend_request and duration_ms(self.request) != 0:
            if duration_ms(self.backend_request) > duration_ms(self.request):
                raise ValueError("backendRequest timeout cannot be longer than request timeout")
        for name in ("request", "backend_request"):
            value = getattr(self, name)
            if value is not None and 0 < duration_ms(value) < 1:
                raise ValueError(f"{name}: a non-zero timeout must be at least 1ms")
        return self


class Retry(Model):
    codes: list[int] = Field(default_factory=list)
    attempts: int | None = Field(default=None, ge=0)
    backoff: str | None = None

    @field_validator("backoff")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        return _check_duration(value)

    @field_validator("codes")
    @classmethod
    def _codes(cls, value: list[int]) -> list[int]:
        for code in value:
            if not 400 <= code <= 599:
                raise ValueError(f"retry code {code} must be between 400 and 599")
        return value


class HTTPRouteRule(Model):
    name: SectionName | None = None  # the CRD's SectionName pattern
    matches: list[HTTPRouteMatch] = Field(default_factory=lambda: [HTTPRouteMatch()], max_length=64)
    filters: list[HTTPRouteFilter] = Field(default_factory=list, max_length=16)
    backend_refs: list[HTTPBackendRef] = Field(default_factory=list, max_length=16)
    timeouts: Timeouts | None = None
    retry: Retry | None = None
    session_persistence: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _cel(self) -> "HTTPRouteRule":
        check_filters(self.filters)
        types = {f.type for f in self.filters}
        if "RequestRedirect" in types and self.backend_refs:
            raise ValueError("RequestRedirect filter must not be used together with backendRefs")
        prefix_replacement = any(
            f.body.path is not None and f.body.path.type == "ReplacePrefixMatch"
            for f in self.filters
            if f.type in ("RequestRedirect", "URLRewrite")
        )
        if prefix_replacement and (len(self.matches) != 1 or self.matches[0].path.type != "PathPrefix"):
            raise ValueError("ReplacePrefixMatch requires exactly one match, and it must be a PathPrefix path match")
        return self


class HTTPRouteSpec(Model):
    parent_refs: list[ParentReference] = Field(default_factory=list, max_length=32)
    hostnames: list[Hostname] = Field(default_factory=list, max_length=16)
    rules: list[HTTPRouteRule] = Field(default_factory=lambda: [HTTPRouteRule()], min_length=1, max_length=16)

    @model_validator(mode="after")
    def _distinct(self) -> "HTTPRouteSpec":
        seen: set[tuple[Any, ...]] = set()
        for ref in self.parent_refs:
            key = (ref.group, ref.kind, ref.namespace, ref.name, ref.section_name, ref.port)
            if key in seen:
                raise ValueError(f"parentRefs: duplicate parent reference {ref.kind} {ref.name}")
            seen.add(key)
        names = [r.name for r in self.rules if r.name]
        if len(names) != len(set(names)):
            raise ValueError("rules: rule names must be unique within the route")
        if sum(len(r.matches) for r in self.rules) > 128:
            raise ValueError("rules: at most 128 matches across all rules")
        return self


class HTTPRoute(Resource):
    GROUP: ClassVar[str] = GATEWAY_GROUP
    KIND: ClassVar[str] = "HTTPRoute"
    VERSIONS: ClassVar[tuple[str, ...]] = GATEWAY_VERSIONS
    spec: HTTPRouteSpec
