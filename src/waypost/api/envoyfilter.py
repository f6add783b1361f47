"""EnvoyFilter (networking.istio.io/v1alpha3), validated as istiod validates it.

Sources: istio/api `networking/v1alpha3/envoy_filter.proto` (the schema), the CRD's OpenAPI and CEL rules
(shared/crds/istio-crd-all.gen.yaml: the only served version is v1alpha3), and istio/istio
`pkg/config/validation/envoyfilter/envoyfilter.go` (ValidateEnvoyFilter) with
`pkg/config/xds/xds.go` (BuildXDSObjectFromStruct). Messages are Istio's, each at the field it concerns.

A patch `value` is converted, as istiod converts it, to the Envoy message its `applyTo` implies, ignoring
fields the Envoy API (xds-protos here) does not know. It is then stored canonical: the message written back
as JSON with proto field names (snake_case), so camelCase and snake_case input patch our snake_case
config the same way. What istiod only warns about is available from `EnvoyFilter.warnings()`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from .meta import Model, Resource

NETWORKING_GROUP = "networking.istio.io"
GATEWAY_GROUP = "gateway.networking.k8s.io"
WAYPOINT_GATEWAY_CLASS = "istio-waypoint"
HCM = "envoy.filters.network.http_connection_manager"
ISTIO_WARNING = (  # ValidateEnvoyFilter's warning for every EnvoyFilter
    "EnvoyFilter exposes internal implementation details that may change at any time. "
    "Prefer other APIs if possible, and exercise extreme caution, especially around upgrades."
)

ApplyTo = Literal[
    "INVALID", "LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER", "ROUTE_CONFIGURATION",
    "VIRTUAL_HOST", "HTTP_ROUTE", "CLUSTER", "EXTENSION_CONFIG", "BOOTSTRAP", "LISTENER_FILTER",
]
Operation = Literal[
    "INVALID", "MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "REPLACE",
    "MERGE_AND_REPLACE_LIST",
]
PatchContext = Literal["ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY", "WAYPOINT"]
FilterClass = Literal["UNSPECIFIED", "AUTHN", "AUTHZ", "STATS"]
RouteAction = Literal["ANY", "ROUTE", "REDIRECT", "DIRECT_RESPONSE"]

# The Envoy message a patch value becomes, by applyTo (BuildXDSObjectFromStruct).
VALUE_TYPES: dict[str, str] = {
    "CLUSTER": "envoy.config.cluster.v3.Cluster",
    "LISTENER": "envoy.config.listener.v3.Listener",
    "ROUTE_CONFIGURATION": "envoy.config.route.v3.RouteConfiguration",
    "FILTER_CHAIN": "envoy.config.listener.v3.FilterChain",
    "HTTP_FILTER": "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
    "NETWORK_FILTER": "envoy.config.listener.v3.Filter",
    "VIRTUAL_HOST": "envoy.config.route.v3.VirtualHost",
    "HTTP_ROUTE": "envoy.config.route.v3.Route",
    "EXTENSION_CONFIG": "envoy.config.core.v3.TypedExtensionConfig",
    "BOOTSTRAP": "envoy.config.bootstrap.v3.Bootstrap",
    "LISTENER_FILTER": "envoy.config.listener.v3.ListenerFilter",
}
LISTENER_CLASS = ("LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER")
ROUTE_CLASS = ("ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE")

# istiod does not compile longer proxyVersion expressions (pilot/pkg/model/envoyfilter.go).
MAX_PROXY_VERSION_LEN = 1024

# pkg/config/xds/deprecated.go, reversed: deprecated filter name → canonical name (match names only).
DEPRECATED_FILTER_NAMES = {
    "envoy.buffer": "envoy.filters.http.buffer", "envoy.cors": "envoy.filters.http.cors",
    "envoy.csrf": "envoy.filters.http.csrf", "envoy.http_dynamo_filter": "envoy.filters.http.dynamo",
    "envoy.ext_authz": "envoy.filters.http.ext_authz", "envoy.fault": "envoy.filters.http.fault",
    "envoy.grpc_http1_bridge": "envoy.filters.http.grpc_http1_bridge",
    "envoy.grpc_json_transcoder": "envoy.filters.http.grpc_json_transcoder",
    "envoy.grpc_web": "envoy.filters.http.grpc_web", "envoy.gzip": "envoy.filters.http.gzip",
    "envoy.health_check": "envoy.filters.http.health_check", "envoy.ip_tagging": "envoy.filters.http.ip_tagging",
    "envoy.lua": "envoy.filters.http.lua", "envoy.rate_limit": "envoy.filters.http.ratelimit",
    "envoy.router": "envoy.filters.http.router", "envoy.squash": "envoy.filters.http.squash",
    "envoy.listener.http_inspector": "envoy.filters.listener.http_inspector",
    "envoy.listener.original_dst": "envoy.filters.listener.original_dst",
    "envoy.listener.original_src": "envoy.filters.listener.original_src",
    "envoy.listener.proxy_protocol": "envoy.filters.listener.proxy_protocol",
    "envoy.listener.tls_inspector": "envoy.filters.listener.tls_inspector",
    "envoy.client_ssl_auth": "envoy.filters.network.client_ssl_auth",
    "envoy.http_connection_manager": HCM, "envoy.mongo_proxy": "envoy.filters.network.mongo_proxy",
    "envoy.ratelimit": "envoy.filters.network.ratelimit", "envoy.redis_proxy": "envoy.filters.network.redis_proxy",
    "envoy.tcp_proxy": "envoy.filters.network.tcp_proxy",
}

UINT32 = Field(default=0, ge=0, le=4294967295)

# Constructs Go's RE2 refuses although Python's `re` accepts them (lookaround, backreferences, atomic groups,
# possessive quantifiers, conditionals). istiod compiles proxyVersion with Go's regexp.
_PERL_ONLY = re.compile(r"\(\?(?:=|!|<=|<!|>|\(|P=|#)|\\[1-9]|(?<!\\)[*+?}][+]")


def check_go_regex(pattern: str) -> str | None:
    """The error Go's regexp.Compile would report, approximately (None when it compiles)."""
    found = _PERL_ONLY.search(pattern)
    if found:
        return f"error parsing regexp: invalid or unsupported Perl syntax: `{found.group(0)}`"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"error parsing regexp: {exc}"
    return None


class WorkloadSelector(Model):
    labels: dict[str, str] = Field(default_factory=dict, max_length=256)

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        # ValidateAlphaWorkloadSelector (pkg/config/validation/validation.go); the CRD caps values at 63.
        for key, value in labels.items():
            if key == "":
                raise ValueError(f'empty key is not supported in selector: "{key}={value}"')
            if "*" in key or "*" in value:
                raise ValueError(f'wildcard is not supported in selector: "{key}={value}"')
            if len(value) > 63:
                raise ValueError(f"label value {value!r} may have at most 63 characters")
        return labels


class TargetRef(Model):
    """istio.type.v1beta1.PolicyTargetReference, with the CRD's checks.

    ValidateEnvoyFilter does not restrict kinds. Which targets select a waypoint is `EnvoyFilter.selects_waypoint`.
    """

    group: str = Field(default="", max_length=253, pattern=r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    kind: str = Field(min_length=1, max_length=63, pattern=r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
    name: str = Field(min_length=1, max_length=253)
    namespace: str = ""

    @field_validator("namespace")
    @classmethod
    def _same_namespace(cls, value: str) -> str:
        if value:
            raise ValueError("cross namespace referencing is not currently supported")
        return value


class ProxyMatch(Model):
    proxy_version: str = ""
    metadata: dict[str, str] = Field(default_factory=dict)


class SubFilterMatch(Model):
    name: str = ""


class FilterMatch(Model):
    name: str = ""
    sub_filter: SubFilterMatch | None = None


class FilterChainMatch(Model):
    name: str = ""
    sni: str = ""
    transport_protocol: str = ""
    application_protocols: str = ""  # comma separated
    filter: FilterMatch | None = None
    destination_port: int = UINT32
    transport_socket: str = ""  # in the CRD; istiod's filter chain match does not read it


class ListenerMatch(Model):
    port_number: int = UINT32
    port_name: str = ""  # "Not implemented" upstream
    filter_chain: FilterChainMatch | None = None
    listener_filter: str = ""
    name: str = ""


class RouteMatch(Model):
    name: str = ""
    action: RouteAction = "ANY"


class VirtualHostMatch(Model):
    name: str = ""
    domain_name: str = ""
    route: RouteMatch | None = None


class RouteConfigurationMatch(Model):
    port_number: int = UINT32
    port_name: str = ""
    gateway: str = ""
    vhost: VirtualHostMatch | None = None
    name: str = ""


class ClusterMatch(Model):
    port_number: int = UINT32
    service: str = ""
    subset: str = ""
    name: str = ""


class WaypointRouteMatch(Model):
    name: str = ""


class WaypointMatch(Model):
    port_number: int = UINT32
    route: WaypointRouteMatch | None = None
    filter: FilterMatch | None = None  # the proto's WaypointMatch.FilterMatch has the same two fields

    @field_validator("port_number")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 0 < value <= 65535:
            raise ValueError("port must be between 1-65535")
        return value


class EnvoyConfigObjectMatch(Model):
    context: PatchContext = "ANY"
    proxy: ProxyMatch | None = None
    listener: ListenerMatch | None = None
    route_configuration: RouteConfigurationMatch | None = None
    cluster: ClusterMatch | None = None
    waypoint: WaypointMatch | None = None

    @model_validator(mode="after")
    def _crd_rules(self) -> EnvoyConfigObjectMatch:
        # The CRD: `oneOf` the object types, and the CEL rule on `waypoint`.
        if len(self.object_types) > 1:
            raise ValueError("must validate one and only one schema (oneOf): set at most one of listener, routeConfiguration, cluster or waypoint")
        if (self.context == "WAYPOINT") != (self.waypoint is not None):
            raise ValueError("only support waypointMatch when context is WAYPOINT")
        return self

    @property
    def object_types(self) -> list[str]:
        return [n for n in ("listener", "route_configuration", "cluster", "waypoint") if getattr(self, n) is not None]


class Patch(Model):
    operation: Operation = "INVALID"
    value: dict[str, Any] | None = None
    filter_class: FilterClass = "UNSPECIFIED"


def _error(loc: tuple[Any, ...], message: str, value: Any = None) -> InitErrorDetails:
    # The message goes in through the context so braces in it (a proto error quoting JSON) stay literal.
    return InitErrorDetails(type=PydanticCustomError("value_error", "{message}", {"message": message}), loc=loc, input=value)


class ConfigPatch(Model):
    apply_to: ApplyTo = "INVALID"
    match: EnvoyConfigObjectMatch | None = None
    patch: Patch | None = None
    _warnings: list[tuple[str, str]] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _istio_validation(self) -> ConfigPatch:
        errors, warnings = _validate_patch(self)
        if errors:
            raise ValidationError.from_exception_data("ConfigPatch", errors)
        self._warnings = warnings
        return self

    @property
    def warnings(self) -> list[tuple[str, str]]:
        """istiod's warnings for this patch, as (path relative to the patch, message)."""
        return list(self._warnings)


def _validate_patch(cp: ConfigPatch) -> tuple[list[InitErrorDetails], list[tuple[str, str]]]:
    """ValidateEnvoyFilter's loop body for one patch: (errors, warnings as (relative path, message)).

    Also canonicalizes `patch.value` in place (the model is frozen for users, not for its own validator).
    """
    errors: list[InitErrorDetails] = []
    warnings: list[tuple[str, str]] = []
    match = cp.match
    if match is not None and match.context == "WAYPOINT":
        # istiod leaves validation of the WAYPOINT context as an open to-do and skips these patches entirely.
        if cp.patch is not None and cp.patch.value is not None and cp.apply_to in VALUE_TYPES:
            try:
                object.__setattr__(cp.patch, "value", canonical_value(cp.apply_to, cp.patch.value))
            except ValueError:
                pass  # istiod drops such a patch at translation; it never applies anyway
        return errors, warnings
    if cp.apply_to == "INVALID":
        return [_error(("applyTo",), "Envoy filter: missing applyTo", cp.apply_to)], warnings
    if cp.patch is None:
        return [_error(("patch",), "Envoy filter: missing patch")], warnings
    patch = cp.patch
    if patch.operation == "INVALID":
        return [_error(("patch", "operation"), "Envoy filter: missing patch operation", patch.operation)], warnings
    if patch.operation != "REMOVE" and patch.value is None:
        return [_error(("patch", "value"), "Envoy filter: missing patch value for non-remove operation")], warnings
    proxy = match.proxy if match is not None else None
    if proxy is not None and proxy.proxy_version:
        if len(proxy.proxy_version) > MAX_PROXY_VERSION_LEN:
            warnings.append(("match.proxy.proxyVersion", f"Envoy filter: proxyVersion match exceeds {MAX_PROXY_VERSION_LEN} characters and will be ignored"))
        else:
            problem = check_go_regex(proxy.proxy_version)
            if problem is not None:
                return [_error(("match", "proxy", "proxyVersion"), f"Envoy filter: invalid regex for proxy version, [{problem}]", proxy.proxy_version)], warnings
    objects = match.object_types if match is not None else []
    if cp.apply_to in LISTENER_CLASS and objects:
        if match.listener is None:  # type: ignore[union-attr]
            return [_error(("match",), "Envoy filter: applyTo for listener class objects cannot have non listener match")], warnings
        chain = match.listener.filter_chain  # type: ignore[union-attr]
        if chain is not None and chain.filter is not None:
            where = ("match", "listener", "filterChain", "filter")
            if cp.apply_to in ("LISTENER", "FILTER_CHAIN"):
                warnings.append((".".join(where), f"Envoy filter: filter match has no effect when used with {cp.apply_to}"))
            if chain.filter.name == "":
                return errors + [_error(where + ("name",), "Envoy filter: filter match has no name to match on")], warnings
            sub = chain.filter.sub_filter
            if sub is not None:
                if cp.apply_to != "HTTP_FILTER":
                    return [_error(where + ("subFilter",), "Envoy filter: subfilter match can be used with applyTo HTTP_FILTER only")], warnings
                if chain.filter.name not in (HCM, "envoy.http_connection_manager"):
                    return [_error(where + ("name",), f"Envoy filter: subfilter match requires filter match with {HCM}")], warnings
                if sub.name == "":
                    return [_error(where + ("subFilter", "name"), "Envoy filter: subfilter match has no name to match on")], warnings
            for path, name in ((where + ("name",), chain.filter.name), (where + ("subFilter", "name"), sub.name if sub else "")):
                if name in DEPRECATED_FILTER_NAMES:
                    warnings.append((".".join(path), f'using deprecated filter name "{name}"; use "{DEPRECATED_FILTER_NAMES[name]}" instead'))
    elif cp.apply_to in ROUTE_CLASS and objects and match.route_configuration is None:  # type: ignore[union-attr]
        errors.append(_error(("match",), "Envoy filter: applyTo for http route class objects cannot have non route configuration match"))
    elif cp.apply_to == "CLUSTER" and objects and match.cluster is None:  # type: ignore[union-attr]
        errors.append(_error(("match",), "Envoy filter: applyTo for cluster class objects cannot have non cluster match"))
    if patch.value is not None:
        try:
            canonical, strict_problem, missing_typed = _build(cp.apply_to, patch.value)
        except ValueError as exc:
            errors.append(_error(("patch", "value"), str(exc)))
        else:
            object.__setattr__(patch, "value", canonical)
            if strict_problem:
                warnings.append(("patch.value", strict_problem))
            if missing_typed:
                warnings.append(("patch.value", f"using deprecated types by name without typed_config; {', '.join(missing_typed)}"))
    return errors, warnings


def _parse(apply_to: str, value: dict[str, Any], strict: bool):
    from google.protobuf import json_format

    from waypost.xds import codec

    cls = codec.message_class("type.googleapis.com/" + VALUE_TYPES[apply_to])
    message = cls()
    json_format.ParseDict(value, message, ignore_unknown_fields=not strict)
    return message


# Envoy's v2 API, which istiod no longer links in (its types are unknown there); xds-protos still ships it.
_V2_TYPE = re.compile(r"^type\.googleapis\.com/envoy\.(api\.v2|config\.[\w.]*\.v2(alpha\d*)?|extensions\.[\w.]*\.v2(alpha\d*)?)\.")


def _v2_types(value: Any, where: str) -> tuple[str, str] | None:
    if isinstance(value, dict):
        url = value.get("@type")
        if isinstance(url, str) and _V2_TYPE.match(url):
            return url, where
        for key, item in value.items():
            found = _v2_types(item, f"{where}.{key}")
            if found:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _v2_types(item, where)
            if found:
                return found
    return None


def _build(apply_to: str, value: dict[str, Any]) -> tuple[dict[str, Any], str | None, list[str]]:
    """BuildXDSObjectFromStruct, lenient then strict: (canonical value, strict-mode warning, names lacking typed_config)."""
    from google.protobuf import json_format

    v2 = _v2_types(value, VALUE_TYPES[apply_to].rsplit(".", 1)[-1])
    if v2 is not None:
        raise ValueError(f"referenced type unknown (hint: try using the v3 XDS API): Envoy filter: Can not find message descriptor by type_url: {v2[0]} at {v2[1]}")
    try:
        message = _parse(apply_to, value, strict=False)
    except (json_format.Error, TypeError, ValueError, AttributeError, RecursionError) as exc:
        text = f"Envoy filter: {exc}"
        if "Can not find message descriptor by type_url" in text:
            hint = " (hint: try using the v3 XDS API)" if ".v2." in text else ""
            text = f"referenced type unknown{hint}: {text}"
        raise ValueError(text) from None
    strict_problem = None
    try:
        _parse(apply_to, value, strict=True)
    except (json_format.Error, TypeError, ValueError, AttributeError, RecursionError) as exc:
        strict_problem = f"Envoy filter: {exc}"
    canonical = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return canonical, strict_problem, _missing_typed_config(message)


def canonical_value(apply_to: str, value: dict[str, Any]) -> dict[str, Any]:
    """`value` as the Envoy message of `applyTo` and back, with proto field names; ValueError when it does not convert."""
    return _build(apply_to, value)[0]


def _missing_typed_config(message) -> list[str]:
    """recurseMissingTypedConfig: messages that have a typed_config field but set neither it nor config_discovery."""
    out: list[str] = []
    fields = message.DESCRIPTOR.fields_by_name
    set_fields = {fd.name for fd, _ in message.ListFields()}
    for fd, value in message.ListFields():
        # Like istiod (protoreflect), only singular message fields are walked, not lists or maps.
        if fd.message_type is not None and not fd.is_repeated:
            out.extend(_missing_typed_config(value))
    if "typed_config" in fields and not ({"typed_config", "config_discovery"} & set_fields):
        out.append(getattr(message, "name", "") if "name" in fields else "")
    return out


def _not_null(patch: ConfigPatch | None) -> ConfigPatch | None:
    if patch is None:
        raise ValueError("Envoy filter: null config patch")
    return patch


class EnvoyFilterSpec(Model):
    workload_selector: WorkloadSelector | None = None
    target_refs: list[TargetRef] | None = Field(default=None, max_length=16)
    config_patches: list[Annotated[ConfigPatch | None, AfterValidator(_not_null)]] = Field(default_factory=list)
    priority: int = Field(default=0, ge=-(2**31), le=2**31 - 1)

    @model_validator(mode="after")
    def _one_attachment(self) -> EnvoyFilterSpec:
        if self.workload_selector is not None and self.target_refs is not None:
            raise ValueError("only one of targetRefs or workloadSelector can be set")
        return self

    @property
    def patches(self) -> list[ConfigPatch]:
        return [p for p in self.config_patches if p is not None]


class EnvoyFilter(Resource):
    GROUP: ClassVar[str] = NETWORKING_GROUP
    KIND: ClassVar[str] = "EnvoyFilter"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1alpha3",)
    spec: EnvoyFilterSpec = Field(default_factory=EnvoyFilterSpec)

    def warnings(self) -> list[tuple[str, str]]:
        """What istiod's validation warns about, as (field path, message); the first applies to every EnvoyFilter."""
        out = [("spec", ISTIO_WARNING)]
        selector = self.spec.workload_selector
        if selector is not None and not selector.labels:
            out.append(("spec.workloadSelector", "Envoy filter: workload selector specified without labels, will be applied to all services in namespace"))
        for index, cp in enumerate(self.spec.config_patches):
            if cp is not None:
                out.extend((f"spec.configPatches[{index}].{path}", message) for path, message in cp.warnings)
        for index, ref in enumerate(self.spec.target_refs or []):
            if (ref.group, ref.kind) not in ((GATEWAY_GROUP, "Gateway"), (GATEWAY_GROUP, "GatewayClass")):
                message = (
                    f"targetRef {ref.group or 'core'}/{ref.kind} never selects a waypoint: an EnvoyFilter reaches "
                    "waypoints through a Gateway, or GatewayClass istio-waypoint in the root namespace"
                )
                out.append((f"spec.targetRefs[{index}]", message))
        if self.spec.target_refs is None:
            out.append(("spec", "without targetRefs this EnvoyFilter applies to no waypoint (waypoints ignore workloadSelector and namespace-wide EnvoyFilters)"))
        return out

    @property
    def creation_time(self) -> datetime:
        """metadata.creationTimestamp; Go's zero time (first in order) when absent or unreadable."""
        text = self.metadata.creation_timestamp
        if text:
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                pass
            else:
                return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
        return datetime.min.replace(tzinfo=UTC)

    def selects_waypoint(self, waypoint_namespace: str, waypoint_name: str, root_namespace: str) -> bool:
        """WorkloadPolicyMatcher.ShouldAttachPolicy for a waypoint (pilot/pkg/model/policyattachment.go).

        Waypoints never use selectors; for EnvoyFilter istiod gives the matcher no Services, so only a
        Gateway of the waypoint's namespace, or GatewayClass istio-waypoint from the root namespace, selects.
        """
        for ref in self.spec.target_refs or []:
            if ref.group == GATEWAY_GROUP and ref.kind == "GatewayClass" and ref.name == WAYPOINT_GATEWAY_CLASS and self.namespace == root_namespace:
                return True
            if self.namespace != waypoint_namespace or ref.namespace not in ("", waypoint_namespace):
                continue
            if ref.group == GATEWAY_GROUP and ref.kind == "Gateway" and ref.name == waypoint_name:
                return True
        return False
