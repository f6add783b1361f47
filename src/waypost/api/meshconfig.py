"""Istio's MeshConfig: the part of it waypost reads, validated the way istiod validates it.

Users declare mesh-wide settings the way they do for Istio: the ConfigMap `istio` in `istio-system`,
whose `data.mesh` holds MeshConfig YAML (istio/api `mesh/v1alpha1/config.proto`), or a MeshConfig file
given to `waypost up --mesh-config FILE`. Both may be present: the file is the base and the ConfigMap's
top-level fields replace the file's (istiod's own precedence: mesh file defaults, then the ConfigMap).

What waypost reads: `rootNamespace`, `extensionProviders` (`envoyExtAuthzHttp` and `envoyExtAuthzGrpc`
drive AuthorizationPolicy CUSTOM; `envoyFileAccessLog` and `prometheus` are kept for telemetry), and the
access-log fields. Other MeshConfig fields are accepted and ignored, as the proxy settings they configure
(`defaultConfig`, tracing, outbound traffic policy...) have no counterpart here or a fixed one.

Validation follows istio `pkg/config/validation/agent/extensionprovider.go` and the provider checks of
`pilot/pkg/security/authz/builder/extauthz.go`: a provider istiod would refuse is an error here, naming
its field. Resolving a provider's `service` needs the registry, so it happens in `waypost.mesh.build`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .diagnostics import Diagnostic, error
from .meta import DNS_LABEL, LooseModel, Model

MESH_CONFIGMAP_NAMESPACE = "istio-system"
MESH_CONFIGMAP_NAME = "istio"
MESH_CONFIGMAP_KEY = "mesh"
DEFAULT_ROOT_NAMESPACE = "istio-system"

# envoy.type.v3.StatusCode: the codes `statusOnError` may name (istio checks the proto enum).
ENVOY_STATUS_CODES = frozenset(
    {100, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 307, 308,
     400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422,
     423, 424, 426, 428, 429, 431, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511}
)
# google.protobuf.Duration in its JSON form, which is what istiod's YAML → JSON → proto accepts.
_DURATION = re.compile(r"^[0-9]+(\.[0-9]{1,9})?s$")
_FQDN_LABEL = re.compile(r"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")


def duration_seconds(value: str) -> float:
    return float(value[:-1])


def _check_duration(value: str | None) -> str | None:
    if value is not None and not _DURATION.match(value):
        raise ValueError(f"invalid duration {value!r}: write seconds with an 's' suffix, e.g. 10s or 0.5s")
    return value


def _check_status(value: str) -> str:
    if value == "":
        return value
    try:
        code = int(value, 10)
    except ValueError:
        raise ValueError(f"invalid statusOnError value {value!r}: not a number") from None
    if code not in ENVOY_STATUS_CODES:
        raise ValueError(f"unsupported statusOnError value {value}, supported values: {sorted(ENVOY_STATUS_CODES)}")
    return value


def _check_service(value: str) -> str:
    """`[<Namespace>/]<Hostname>`: an FQDN (or IP) alone, or a namespace and a hostname."""
    if not value:
        raise ValueError("service must not be empty")
    parts = value.split("/")
    if len(parts) > 2:
        raise ValueError(f"invalid service {value!r}: expected [<Namespace>/]<Hostname>")
    host = parts[-1]
    if len(parts) == 2 and not (parts[0] == "*" or DNS_LABEL.match(parts[0])):
        raise ValueError(f"invalid service {value!r}: {parts[0]!r} is not a namespace name")
    labels = host.split(".")
    if len(host) > 255 or not all(_FQDN_LABEL.match(label) for label in labels):
        raise ValueError(f"invalid service {value!r}: {host!r} is not a hostname")
    return value


def _check_header_patterns(values: list[str], field: str) -> list[str]:
    for v in values:
        if v == "*":
            raise ValueError(f'a single wildcard ("*") is not supported, change it to either prefix or suffix match: {field}')
    return values


class RequestBody(Model):
    max_request_bytes: int = Field(default=0, ge=0, le=2**32 - 1)
    allow_partial_message: bool = False
    pack_as_bytes: bool = False


class _ExtAuthz(Model):
    service: str
    port: int
    timeout: str | None = None
    fail_open: bool = False
    clear_route_cache: bool = False
    status_on_error: str = ""
    include_request_body_in_check: RequestBody | None = None

    _service = field_validator("service")(_check_service)
    _timeout = field_validator("timeout")(_check_duration)
    _status = field_validator("status_on_error")(_check_status)

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError(f"port must be in the range [1, 65535], found: {value}")
        return value


class ExtAuthzHttp(_ExtAuthz):
    path_prefix: str = ""
    include_headers_in_check: list[str] = Field(default_factory=list)  # deprecated in Istio, still honoured
    include_request_headers_in_check: list[str] = Field(default_factory=list)
    include_additional_headers_in_check: dict[str, str] = Field(default_factory=dict)
    headers_to_upstream_on_allow: list[str] = Field(default_factory=list)
    headers_to_downstream_on_deny: list[str] = Field(default_factory=list)
    headers_to_downstream_on_allow: list[str] = Field(default_factory=list)

    @field_validator("path_prefix")
    @classmethod
    def _path_prefix(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError(f"pathPrefix should begin with `/` but found {value!r}")
        if any(ch.isspace() for ch in value):
            raise ValueError(f"invalid pathPrefix {value!r}: whitespace is not allowed in a URL path")
        return value

    @field_validator(
        "include_headers_in_check", "include_request_headers_in_check", "headers_to_upstream_on_allow",
        "headers_to_downstream_on_deny", "headers_to_downstream_on_allow",
    )
    @classmethod
    def _headers(cls, values: list[str], info) -> list[str]:
        return _check_header_patterns(values, to_camel(info.field_name))


class ExtAuthzGrpc(_ExtAuthz):
    pass


class FileAccessLog(Model):
    path: str = ""
    log_format: dict[str, Any] | None = None
    omit_empty_values: bool = False


# Every provider type of MeshConfig.ExtensionProvider's `oneof provider`; waypost acts on some of them.
PROVIDER_TYPES = (
    "envoyExtAuthzHttp", "envoyExtAuthzGrpc", "zipkin", "lightstep", "datadog", "stackdriver", "opencensus",
    "skywalking", "opentelemetry", "prometheus", "envoyFileAccessLog", "envoyHttpAls", "envoyTcpAls",
    "envoyOtelAls", "sds",
)


class ExtensionProvider(LooseModel):
    name: str
    envoy_ext_authz_http: ExtAuthzHttp | None = None
    envoy_ext_authz_grpc: ExtAuthzGrpc | None = None
    envoy_file_access_log: FileAccessLog | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        # istio validateProviderName: names end up in metadata keys, RBAC policy names and metric labels.
        if not value:
            raise ValueError("extension provider name must not be empty")
        if len(value) > 63:
            raise ValueError(f"provider name too long (max 63 characters): {len(value)}")
        if not DNS_LABEL.match(value):
            raise ValueError(f"invalid provider name {value!r}: only lowercase letters, digits and '-', starting and ending alphanumeric")
        return value

    @model_validator(mode="after")
    def _one_type(self) -> "ExtensionProvider":
        types = [key for key in (self.model_extra or {}) if key in PROVIDER_TYPES]
        types += [f for f, v in (("envoyExtAuthzHttp", self.envoy_ext_authz_http), ("envoyExtAuthzGrpc", self.envoy_ext_authz_grpc),
                                 ("envoyFileAccessLog", self.envoy_file_access_log)) if v is not None]
        unknown = [key for key in (self.model_extra or {}) if key not in PROVIDER_TYPES]
        if unknown:
            raise ValueError(f"unknown extension provider type {unknown[0]!r} (one of {', '.join(PROVIDER_TYPES)})")
        if len(types) != 1:
            raise ValueError(f"extension provider {self.name!r} must set exactly one provider type, found {len(types)}")
        return self

    @property
    def ext_authz(self) -> ExtAuthzHttp | ExtAuthzGrpc | None:
        return self.envoy_ext_authz_http or self.envoy_ext_authz_grpc


class DefaultProviders(LooseModel):
    metrics: list[str] = Field(default_factory=list)
    access_logging: list[str] = Field(default_factory=list)
    tracing: list[str] = Field(default_factory=list)


class MeshConfig(LooseModel):
    """The MeshConfig fields waypost reads; unknown MeshConfig fields are accepted and ignored."""

    root_namespace: str | None = None
    trust_domain: str | None = None
    extension_providers: list[ExtensionProvider] = Field(default_factory=list)
    default_providers: DefaultProviders | None = None
    access_log_file: str | None = None
    access_log_encoding: Literal["TEXT", "JSON"] | None = None
    access_log_format: str | None = None

    @field_validator("root_namespace")
    @classmethod
    def _root(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 63 or not DNS_LABEL.match(value)):
            raise ValueError(f"rootNamespace {value!r} must be a namespace name (lowercase RFC 1123 label)")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> "MeshConfig":
        seen: set[str] = set()
        for provider in self.extension_providers:
            if provider.name in seen:
                raise ValueError(f"extension provider name must be unique, found duplicate: {provider.name}")
            seen.add(provider.name)
        return self

    @property
    def effective_root_namespace(self) -> str:
        return self.root_namespace or DEFAULT_ROOT_NAMESPACE

    def provider(self, name: str) -> ExtensionProvider | None:
        return next((p for p in self.extension_providers if p.name == name), None)

    def overlay(self, other: "MeshConfig") -> "MeshConfig":
        """`other`'s explicitly set top-level fields replace ours (the ConfigMap over the file)."""
        data = self.model_dump(by_alias=True, exclude_unset=True)
        data.update(other.model_dump(by_alias=True, exclude_unset=True))
        return MeshConfig.model_validate(data)


class MeshConfigError(ValueError):
    """A MeshConfig document that istiod would refuse: every problem with its field path and line."""

    def __init__(self, problems: list[tuple[str, int, str]]) -> None:
        super().__init__("; ".join(f"{path}: {message}" if path else message for path, _, message in problems))
        self.problems = problems  # (field path, line within the document (1-based, 0 unknown), message)


def parse_mesh_config(text: str) -> MeshConfig:
    """MeshConfig YAML → MeshConfig, or MeshConfigError naming each bad field and its line."""
    try:
        node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise MeshConfigError([("", mark.line + 1 if mark else 0, f"YAML syntax error: {getattr(exc, 'problem', None) or exc}")]) from None
    if node is None:
        return MeshConfig()
    lines: dict[tuple[Any, ...], int] = {}
    data = _plain(node, (), lines)
    if not isinstance(data, dict):
        raise MeshConfigError([("", node.start_mark.line + 1, "MeshConfig must be a mapping")])
    try:
        return MeshConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for problem in exc.errors():
            loc = tuple(problem["loc"])
            path = _render(loc)
            line = next((lines[loc[:end]] for end in range(len(loc), -1, -1) if loc[:end] in lines), 0)
            message = str(problem.get("msg", "invalid value")).removeprefix("Value error, ")
            if problem.get("type") == "missing":
                message = "required field is missing"
            elif problem.get("type") == "extra_forbidden":
                message = "unknown field"
            elif problem.get("type") not in ("value_error", "assertion_error") and not isinstance(problem.get("input"), (dict, list)):
                message = f"{message} (got {problem.get('input')!r})"
            problems.append((path, line, message))
        raise MeshConfigError(problems) from None


def _plain(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value  # MeshConfig keys are plain scalars
            if key in out:
                raise MeshConfigError([(_render(path + (key,)), key_node.start_mark.line + 1, f"duplicate key {key!r}")])
            lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _plain(value_node, path + (key,), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, path + (i,), lines) for i, item in enumerate(node.value)]
    constructor = yaml.constructor.SafeConstructor()
    return constructor.construct_object(node, deep=True)


def _render(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith("function-"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def load_mesh_config_file(path: str) -> tuple[MeshConfig | None, list[Diagnostic]]:
    """A MeshConfig YAML file (`up --mesh-config`): the config, or diagnostics naming file:line and field."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [error(path, 0, f"cannot read the mesh config: {exc}", kind="MeshConfig", name="--mesh-config")]
    try:
        return parse_mesh_config(text), []
    except MeshConfigError as exc:
        return None, [error(path, line, message, kind="MeshConfig", name="--mesh-config", field=field) for field, line, message in exc.problems]
