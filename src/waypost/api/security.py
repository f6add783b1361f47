"""Istio security kinds (security.istio.io): AuthorizationPolicy, with Istio's validation.

Validation follows istio/istio `pkg/config/validation/validation.go` (ValidateAuthorizationPolicy) as
summarised in shared/spec/istio-ambient-semantics.md §4.1, §5.2–§5.6: what Istio's webhook rejects is a
load error here, with the field that caused it.
"""

from __future__ import annotations

import ipaddress
import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from .meta import Model, Resource

SECURITY_GROUP = "security.istio.io"

# `when` keys (§5.6). Keys with a [..] suffix are matched by prefix.
WHEN_KEYS = {
    "source.ip", "remote.ip", "source.namespace", "source.principal", "source.serviceAccount",
    "source.trustDomain", "destination.ip", "destination.port", "connection.sni",
    "request.auth.principal", "request.auth.audiences", "request.auth.presenter",
}
WHEN_PREFIXES = ("request.headers[", "request.auth.claims[", "experimental.envoy.filters.")
TARGET_KINDS = {("", "Service"), ("core", "Service"), ("networking.istio.io", "ServiceEntry"),
                ("gateway.networking.k8s.io", "Gateway"), ("gateway.networking.k8s.io", "GatewayClass")}


def _check_ips(values: list[str]) -> list[str]:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"invalid IP address or CIDR {v!r}") from None
    return values


def _check_ports(values: list[str]) -> list[str]:
    for v in values:
        if not v.isdigit() or not 0 <= int(v) <= 65535:
            raise ValueError(f"invalid port {v!r}: must be a number from 0 to 65535")
    return values


def _check_wildcards(values: list[str], field: str) -> list[str]:
    for v in values:
        if v.count("*") > 1 or ("*" in v and not (v.startswith("*") or v.endswith("*"))):
            raise ValueError(f"{field}: {v!r} may contain one '*' only, at the start or the end")
    return values


_TEMPLATE_OP = re.compile(r"\{\*\*?\}")


def check_path(value: str) -> str:
    """Plain paths take exact/prefix/suffix/presence forms; `{*}`/`{**}` make a URI template (§5.4)."""
    if "{" not in value and "}" not in value:
        _check_wildcards([value], "paths")
        return value
    if not value.startswith("/"):
        raise ValueError(f"paths: template {value!r} must start with '/'")
    segments = value.split("/")[1:]
    for i, segment in enumerate(segments):
        if _TEMPLATE_OP.search(segment):
            if not _TEMPLATE_OP.fullmatch(segment):
                raise ValueError(f"paths: {value!r}: a segment with a template operator must contain nothing else")
            if segment == "{**}" and i != len(segments) - 1:
                raise ValueError(f"paths: {value!r}: '{{**}}' must be the last segment")
        elif any(ch in segment for ch in "*{}"):
            raise ValueError(f"paths: {value!r}: '*', '{{' and '}}' are only valid as {{*}} or {{**}}")
    return value


class Source(Model):
    principals: list[str] = Field(default_factory=list)
    not_principals: list[str] = Field(default_factory=list)
    request_principals: list[str] = Field(default_factory=list)
    not_request_principals: list[str] = Field(default_factory=list)
    namespaces: list[str] = Field(default_factory=list)
    not_namespaces: list[str] = Field(default_factory=list)
    service_accounts: list[str] = Field(default_factory=list, max_length=16)
    not_service_accounts: list[str] = Field(default_factory=list, max_length=16)
    ip_blocks: list[str] = Field(default_factory=list)
    not_ip_blocks: list[str] = Field(default_factory=list)
    remote_ip_blocks: list[str] = Field(default_factory=list)
    not_remote_ip_blocks: list[str] = Field(default_factory=list)
    trust_domains: list[str] = Field(default_factory=list)
    not_trust_domains: list[str] = Field(default_factory=list)

    _ips = field_validator("ip_blocks", "not_ip_blocks", "remote_ip_blocks", "not_remote_ip_blocks")(_check_ips)

    @field_validator("principals", "not_principals", "request_principals", "not_request_principals", "namespaces", "not_namespaces", "trust_domains", "not_trust_domains")
    @classmethod
    def _wildcards(cls, values: list[str], info) -> list[str]:
        return _check_wildcards(values, info.field_name)

    @field_validator("service_accounts", "not_service_accounts")
    @classmethod
    def _accounts(cls, values: list[str]) -> list[str]:
        for v in values:
            if "*" in v or v.count("/") > 1 or not v.strip("/"):
                raise ValueError(f"invalid service account {v!r}: use 'sa' or 'namespace/sa', without wildcards")
        return values

    @model_validator(mode="after")
    def _not_empty(self) -> "Source":
        if not any(getattr(self, f) for f in type(self).model_fields):
            raise ValueError("source must not be empty")
        if (self.service_accounts or self.not_service_accounts) and (
            self.principals or self.not_principals or self.namespaces or self.not_namespaces
        ):
            raise ValueError("serviceAccounts cannot be set together with principals or namespaces")
        return self


class Operation(Model):
    hosts: list[str] = Field(default_factory=list)
    not_hosts: list[str] = Field(default_factory=list)
    ports: list[str] = Field(default_factory=list)
    not_ports: list[str] = Field(default_factory=list)
    methods: list[str] = Field(default_factory=list)
    not_methods: list[str] = Field(default_factory=list)
    paths: list[str] = Field(default_factory=list)
    not_paths: list[str] = Field(default_factory=list)

    _ports = field_validator("ports", "not_ports")(_check_ports)

    @field_validator("paths", "not_paths")
    @classmethod
    def _paths(cls, values: list[str]) -> list[str]:
        return [check_path(v) for v in values]

    @field_validator("hosts", "not_hosts", "methods", "not_methods")
    @classmethod
    def _wildcards(cls, values: list[str], info) -> list[str]:
        return _check_wildcards(values, info.field_name)

    @model_validator(mode="after")
    def _not_empty(self) -> "Operation":
        if not any(getattr(self, f) for f in type(self).model_fields):
            raise ValueError("operation must not be empty")
        return self


class RuleFrom(Model):
    source: Source


class RuleTo(Model):
    operation: Operation


class Condition(Model):
    key: str = Field(min_length=1)
    values: list[str] = Field(default_factory=list)
    not_values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _valid(self) -> "Condition":
        if not self.values and not self.not_values:
            raise ValueError(f"condition {self.key!r}: at least one of values or notValues must be set")
        key = self.key
        if key not in WHEN_KEYS and not any(key.startswith(p) for p in WHEN_PREFIXES):
            raise ValueError(f"unknown attribute: {key}")
        if key.startswith(("request.headers[", "request.auth.claims[")) and not key.endswith("]"):
            raise ValueError(f"invalid attribute {key!r}: missing ']'")
        if key in ("source.ip", "remote.ip", "destination.ip"):
            _check_ips(self.values + self.not_values)
        if key == "destination.port":
            _check_ports(self.values + self.not_values)
        if key.startswith("experimental.envoy.filters."):
            raise ValueError(f"{key}: experimental filter-metadata conditions are not supported")
        return self


class Rule(Model):
    from_: list[RuleFrom] | None = Field(default=None, alias="from")
    to: list[RuleTo] | None = None
    when: list[Condition] = Field(default_factory=list)

    @model_validator(mode="after")
    def _present_lists_not_empty(self) -> "Rule":
        if self.from_ is not None and not self.from_:
            raise ValueError("`from` must not be empty when present")
        if self.to is not None and not self.to:
            raise ValueError("`to` must not be empty when present")
        return self


class PolicyTargetReference(Model):
    group: str = ""
    kind: str
    name: str = Field(min_length=1)
    namespace: str | None = None

    @model_validator(mode="after")
    def _allowed(self) -> "PolicyTargetReference":
        if (self.group, self.kind) not in TARGET_KINDS:
            raise ValueError(f"targetRef kind {self.group or 'core'}/{self.kind} is not supported (Service, ServiceEntry, Gateway, GatewayClass)")
        if self.namespace:
            raise ValueError("targetRef namespace must be empty: cross-namespace references are not allowed")
        return self


class WorkloadSelector(Model):
    match_labels: dict[str, str] = Field(default_factory=dict)


class Provider(Model):
    name: str


class TargetedSpec(Model):
    """Istio policy attachment: a workload selector, or targetRef(s), or neither (namespace-wide)."""

    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: list[PolicyTargetReference] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _one_attachment(self) -> "TargetedSpec":
        if sum(x is not None and x != [] for x in (self.selector, self.target_ref, self.target_refs)) > 1:
            raise ValueError("only one of selector, targetRef or targetRefs may be set")
        return self

    @property
    def targets(self) -> list[PolicyTargetReference]:
        return [self.target_ref] if self.target_ref is not None else list(self.target_refs)


class AuthorizationPolicySpec(TargetedSpec):
    action: Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"] = "ALLOW"
    provider: Provider | None = None
    rules: list[Rule] | None = None

    @model_validator(mode="after")
    def _istio_validation(self) -> "AuthorizationPolicySpec":
        # ValidateAuthorizationPolicy (istio pkg/config/validation/validation.go), message for message.
        # An empty `rules: []` is nil in the proto, like an absent one.
        if self.action == "CUSTOM":
            if not self.rules:
                raise ValueError(
                    "CUSTOM action without `rules` is meaningless as it will never be triggered, "
                    "add an empty rule `{}` if you want it be triggered for every request"
                )
            if self.provider is None or not self.provider.name:
                raise ValueError("`provider.name` must not be empty")
            for rule in self.rules:
                for entry in rule.from_ or []:
                    for field, label in CUSTOM_UNSUPPORTED_SOURCE.items():
                        if getattr(entry.source, field):
                            raise ValueError(f"{label} is currently not supported with CUSTOM action")
                for condition in rule.when:
                    if condition.key in CUSTOM_UNSUPPORTED_WHEN or condition.key.startswith("request.auth."):
                        raise ValueError(f"{condition.key} is currently not supported with CUSTOM action")
        elif self.provider is not None:
            raise ValueError(f"`provider` must not be with non CUSTOM action, found {self.action}")
        if self.action == "DENY" and not self.rules:
            raise ValueError(
                "DENY action without `rules` is meaningless as it will never be triggered, "
                "add an empty rule `{}` if you want it be triggered for every request"
            )
        return self


# Source fields and `when` keys a CUSTOM rule may not use: the external authorizer sees the request, and
# Istio only supports matching on the request itself (istio validation.go, "not supported with CUSTOM").
CUSTOM_UNSUPPORTED_SOURCE = {
    "namespaces": "From.Namespaces", "not_namespaces": "From.NotNamespaces",
    "service_accounts": "From.ServiceAccounts", "not_service_accounts": "From.NotServiceAccounts",
    "trust_domains": "From.TrustDomains", "not_trust_domains": "From.NotTrustDomains",
    "principals": "From.Principals", "not_principals": "From.NotPrincipals",
    "request_principals": "From.RequestPrincipals", "not_request_principals": "From.NotRequestPrincipals",
}
CUSTOM_UNSUPPORTED_WHEN = {"source.namespace", "source.serviceAccount", "source.trustDomain", "source.principal"}


class AuthorizationPolicy(Resource):
    GROUP: ClassVar[str] = SECURITY_GROUP
    KIND: ClassVar[str] = "AuthorizationPolicy"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1", "v1beta1")
    spec: AuthorizationPolicySpec = Field(default_factory=AuthorizationPolicySpec)


class JWTHeader(Model):
    name: str = Field(min_length=1)
    prefix: str | None = None


class ClaimToHeader(Model):
    header: str = Field(min_length=1)
    claim: str = Field(min_length=1)


class JWTRule(Model):
    issuer: str = Field(min_length=1)
    audiences: list[str] = Field(default_factory=list)
    jwks_uri: str | None = None
    jwks: str | None = None
    from_headers: list[JWTHeader] = Field(default_factory=list)
    from_params: list[str] = Field(default_factory=list)
    from_cookies: list[str] = Field(default_factory=list)
    output_payload_to_header: str | None = None
    forward_original_token: bool = False
    output_claim_to_headers: list[ClaimToHeader] = Field(default_factory=list)
    space_delimited_claims: list[str] = Field(default_factory=list)
    timeout: str | None = None

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9]+(\.[0-9]+)?(ms|s|m|h)", value):
            raise ValueError(f"timeout {value!r} must be a duration such as 5s or 500ms")
        return value

    @model_validator(mode="after")
    def _keys(self) -> "JWTRule":
        if self.jwks_uri and self.jwks:
            raise ValueError("only one of jwks or jwksUri may be set")
        if self.jwks_uri:
            if not self.jwks_uri.startswith(("http://", "https://")):
                raise ValueError(f"jwksUri {self.jwks_uri!r} must be an http:// or https:// URL")
            return self  # fetched by the control plane (waypost.local.jwks)
        if not self.jwks:
            raise ValueError("a jwtRule needs its keys: set `jwks` or `jwksUri`")
        import json

        try:
            keys = json.loads(self.jwks)
        except ValueError as exc:
            raise ValueError(f"jwks is not valid JSON: {exc}") from None
        if not isinstance(keys, dict) or not isinstance(keys.get("keys"), list):
            raise ValueError('jwks must be a JSON Web Key Set: {"keys": [...]}')
        return self


class RequestAuthenticationSpec(TargetedSpec):
    jwt_rules: list[JWTRule] = Field(default_factory=list, max_length=4096)

    @model_validator(mode="after")
    def _unique_issuers(self) -> "RequestAuthenticationSpec":
        issuers = [r.issuer for r in self.jwt_rules]
        if len(issuers) != len(set(issuers)):
            raise ValueError("jwtRules: each issuer may appear once")
        return self


class RequestAuthentication(Resource):
    GROUP: ClassVar[str] = SECURITY_GROUP
    KIND: ClassVar[str] = "RequestAuthentication"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1", "v1beta1")
    spec: RequestAuthenticationSpec = Field(default_factory=RequestAuthenticationSpec)


MtlsMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]


class MutualTLS(Model):
    mode: MtlsMode = "UNSET"


class PeerAuthenticationSpec(Model):
    """Istio `security/v1beta1/peer_authentication.proto`; validation as ValidatePeerAuthentication."""

    selector: WorkloadSelector | None = None
    mtls: MutualTLS | None = None
    port_level_mtls: dict[int, MutualTLS] | None = None

    @field_validator("port_level_mtls", mode="before")
    @classmethod
    def _port_keys(cls, value):
        # A map<uint32, …> in the proto: YAML writes the keys as ints, JSON as strings.
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if isinstance(key, str) and key.isdigit():
                    key = int(key)
                if not isinstance(key, int) or isinstance(key, bool):
                    raise ValueError(f"portLevelMtls key {key!r} is not a port number")
                out[key] = item
            return out
        return value

    @model_validator(mode="after")
    def _istio_validation(self) -> "PeerAuthenticationSpec":
        empty_selector = self.selector is None or not self.selector.match_labels
        if empty_selector and self.port_level_mtls:
            raise ValueError("mesh/namespace peer authentication cannot have port level mTLS")
        if self.port_level_mtls is not None and not self.port_level_mtls:
            raise ValueError("port level mTLS, if defined, must have at least one element")
        for port in self.port_level_mtls or {}:
            if not 1 <= port <= 65535:
                raise ValueError("port must be in range 1..65535")
        return self


class PeerAuthentication(Resource):
    GROUP: ClassVar[str] = SECURITY_GROUP
    KIND: ClassVar[str] = "PeerAuthentication"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1", "v1beta1")
    spec: PeerAuthenticationSpec = Field(default_factory=PeerAuthenticationSpec)
