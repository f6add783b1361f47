"""DestinationRule (networking.istio.io), as a waypoint applies it to the clusters of a host.

Every field of the CRD is modelled. Refused with "not supported" rather than ignored, because the local
mesh cannot honour them: `workloadSelector` (a waypoint never uses selector-scoped rules), `tunnel`,
`tls.credentialName` (no Kubernetes Secrets here: give file paths), `tls.caCrl`, and
`loadBalancer.backendUtilization`. Locality settings are accepted and have no effect: the local mesh is a
single locality. Istio's admission rules (pkg/config/validation/validation.go ValidateDestinationRule)
are load errors.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from .meta import Model, Resource
from .virtualservice import CLASSIC_VERSIONS, ISTIO_NETWORKING_GROUP, check_duration, check_host

_SUBSET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
UINT32 = 4294967295
INT32 = dict(ge=-2147483648, le=2147483647)


def _non_negative(value: int | None, name: str) -> int | None:
    if value is not None and value < 0:
        raise ValueError(f"{name} must not be negative")
    return value


class CookieAttribute(Model):
    name: str
    value: str | None = None


class HTTPCookie(Model):
    name: str
    path: str | None = None
    ttl: str | None = None
    attributes: list[CookieAttribute] = Field(default_factory=list)

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: str | None) -> str | None:
        return check_duration(value, minimum=0.0)


class RingHash(Model):
    minimum_ring_size: int | None = Field(default=None, ge=0, le=UINT32)


class Maglev(Model):
    table_size: int | None = Field(default=None, ge=0, le=UINT32)


class ConsistentHash(Model):
    http_header_name: str | None = None
    http_cookie: HTTPCookie | None = None
    use_source_ip: bool | None = None
    http_query_parameter_name: str | None = None
    ring_hash: RingHash | None = None
    maglev: Maglev | None = None
    minimum_ring_size: int | None = Field(default=None, ge=0, le=UINT32)

    @model_validator(mode="after")
    def _one_key(self) -> "ConsistentHash":
        keys = [k for k in (self.http_header_name, self.http_cookie, self.use_source_ip, self.http_query_parameter_name) if k]
        if len(keys) != 1:
            raise ValueError("consistentHash needs exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName")
        if self.ring_hash is not None and self.maglev is not None:
            raise ValueError("only one of ringHash or maglev may be set")
        if self.minimum_ring_size is not None and (self.ring_hash is not None or self.maglev is not None):
            raise ValueError("minimumRingSize is deprecated: set ringHash.minimumRingSize instead, not both")
        return self


class LocalityFailover(Model):
    from_: str | None = Field(default=None, alias="from")
    to: str | None = None


class LocalityDistribute(Model):
    from_: str | None = Field(default=None, alias="from")
    to: dict[str, int] = Field(default_factory=dict)


class LocalityLbSetting(Model):
    distribute: list[LocalityDistribute] = Field(default_factory=list)
    failover: list[LocalityFailover] = Field(default_factory=list)
    failover_priority: list[str] = Field(default_factory=list)
    enabled: bool | None = None


class ZoneAwareLbSetting(Model):
    enabled: bool | None = None
    failover: list[LocalityFailover] = Field(default_factory=list)
    failover_priority: list[str] = Field(default_factory=list)
    min_cluster_size: int | None = Field(default=None, ge=1, le=UINT32)


class Warmup(Model):
    duration: str
    minimum_percent: float | int | None = Field(default=None, ge=0, le=100)
    aggression: float | int | None = Field(default=None, ge=0)

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: str) -> str:
        return check_duration(value)  # type: ignore[return-value]


class BackendUtilization(Model):
    blackout_period: str | None = None
    weight_expiration_period: str | None = None
    weight_update_period: str | None = None
    weight_stabilization_period: str | None = None
    metric_names_for_computing_utilization: list[str] = Field(default_factory=list)
    error_utilization_penalty_percent: int | None = Field(default=None, ge=0, le=UINT32)


class LoadBalancerSettings(Model):
    simple: Literal["UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"] | None = None
    consistent_hash: ConsistentHash | None = None
    locality_lb_setting: LocalityLbSetting | None = None
    zone_aware_lb_setting: ZoneAwareLbSetting | None = None
    warmup_duration_secs: str | None = None
    warmup: Warmup | None = None
    backend_utilization: BackendUtilization | None = None

    @field_validator("warmup_duration_secs")
    @classmethod
    def _warmup(cls, value: str | None) -> str | None:
        return check_duration(value)

    @model_validator(mode="after")
    def _rules(self) -> "LoadBalancerSettings":
        if self.simple is not None and self.consistent_hash is not None:
            raise ValueError("only one of simple or consistentHash may be set")
        if self.backend_utilization is not None:
            raise ValueError("backendUtilization is not supported (no load reports in the local mesh)")
        if self.simple == "PASSTHROUGH":
            raise ValueError("PASSTHROUGH is not supported in waypoints (a waypoint always picks an endpoint)")
        if self.warmup is not None and self.warmup_duration_secs is not None:
            raise ValueError("only one of warmup or warmupDurationSecs may be set")
        return self


class TCPKeepalive(Model):
    probes: int | None = Field(default=None, ge=0, le=UINT32)
    time: str | None = None
    interval: str | None = None

    _durations = field_validator("time", "interval")(classmethod(lambda cls, v: check_duration(v)))


class TCPSettings(Model):
    max_connections: int | None = Field(default=None, **INT32)
    connect_timeout: str | None = None
    tcp_keepalive: TCPKeepalive | None = None
    max_connection_duration: str | None = None
    idle_timeout: str | None = None

    _durations = field_validator("connect_timeout", "max_connection_duration")(classmethod(lambda cls, v: check_duration(v)))

    @field_validator("idle_timeout")
    @classmethod
    def _idle(cls, value: str | None) -> str | None:
        return check_duration(value, minimum=0.0)

    @field_validator("max_connections")
    @classmethod
    def _max(cls, value: int | None) -> int | None:
        return _non_negative(value, "maxConnections")


class HTTP2KeepAlive(Model):
    interval: str | None = None
    timeout: str | None = None

    _durations = field_validator("interval", "timeout")(classmethod(lambda cls, v: check_duration(v)))


class HTTPSettings(Model):
    http1_max_pending_requests: int | None = Field(default=None, **INT32)
    http2_max_requests: int | None = Field(default=None, **INT32)
    max_requests_per_connection: int | None = Field(default=None, **INT32)
    max_retries: int | None = Field(default=None, **INT32)
    idle_timeout: str | None = None
    h2_upgrade_policy: Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"] | None = None
    use_client_protocol: bool | None = None
    max_concurrent_streams: int | None = Field(default=None, **INT32)
    http2_keep_alive: HTTP2KeepAlive | None = Field(default=None, alias="http2KeepAlive")

    _idle = field_validator("idle_timeout")(classmethod(lambda cls, v: check_duration(v)))

    @model_validator(mode="after")
    def _rules(self) -> "HTTPSettings":
        for name in ("http1_max_pending_requests", "http2_max_requests", "max_requests_per_connection", "max_retries", "max_concurrent_streams"):
            _non_negative(getattr(self, name), name)
        return self


class ConnectionPoolSettings(Model):
    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None


class OutlierDetection(Model):
    consecutive_errors: int | None = Field(default=None, **INT32)  # deprecated: consecutive5xxErrors
    split_external_local_origin_errors: bool | None = None
    consecutive_local_origin_failures: int | None = Field(default=None, ge=0, le=UINT32)
    consecutive_gateway_errors: int | None = Field(default=None, ge=0, le=UINT32)
    consecutive5xx_errors: int | None = Field(default=None, ge=0, le=UINT32, alias="consecutive5xxErrors")
    interval: str | None = None
    base_ejection_time: str | None = None
    max_ejection_percent: int | None = Field(default=None, **INT32)
    min_health_percent: int | None = Field(default=None, **INT32)
    outlier_detection_http_error_codes: list[int] = Field(default_factory=list)

    _durations = field_validator("interval", "base_ejection_time")(classmethod(lambda cls, v: check_duration(v)))

    @model_validator(mode="after")
    def _rules(self) -> "OutlierDetection":
        # validateOutlierDetection.
        if self.consecutive_errors is not None and self.consecutive_errors < 0:
            raise ValueError("outlier detection consecutive errors cannot be negative")
        for name in ("max_ejection_percent", "min_health_percent"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 100:
                raise ValueError(f"{name.replace('_', ' ')} must be between 0 and 100")
        for code in self.outlier_detection_http_error_codes:
            if not 100 <= code <= 599:
                raise ValueError(f"outlierDetectionHttpErrorCodes: {code} is not an HTTP status code")
        if self.consecutive_local_origin_failures is not None and not self.split_external_local_origin_errors:
            raise ValueError("consecutiveLocalOriginFailures needs splitExternalLocalOriginErrors")
        if self.outlier_detection_http_error_codes:
            raise ValueError("outlierDetectionHttpErrorCodes is not supported yet")
        return self


class ClientTLSSettings(Model):
    mode: Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"] | None = None
    client_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    credential_name: str | None = None
    subject_alt_names: list[str] = Field(default_factory=list)
    sni: str | None = None
    insecure_skip_verify: bool | None = None
    ca_crl: str | None = None

    @model_validator(mode="after")
    def _rules(self) -> "ClientTLSSettings":
        # validateTLS, plus the local mesh's limits.
        if self.credential_name:
            raise ValueError("credentialName is not supported (the local mesh has no Secrets): give clientCertificate, privateKey and caCertificates file paths")
        if self.ca_crl:
            raise ValueError("caCrl is not supported yet")
        if self.mode == "MUTUAL" and (not self.client_certificate or not self.private_key):
            raise ValueError("client certificate and private key are required for MUTUAL mode")
        if self.mode in ("SIMPLE", "MUTUAL") and self.insecure_skip_verify and (self.ca_certificates or self.subject_alt_names):
            raise ValueError("cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true")
        return self


class PortSelectorDR(Model):
    number: int | None = Field(default=None, ge=0, le=UINT32)


class PortTrafficPolicy(Model):
    port: PortSelectorDR | None = None
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


class ProxyProtocol(Model):
    version: Literal["V1", "V2"] | None = None


class Tunnel(Model):
    protocol: str | None = None
    target_host: str
    target_port: int = Field(ge=0, le=UINT32)


class RetryBudget(Model):
    percent: float | int | None = Field(default=None, ge=0, le=100)
    min_retry_concurrency: int | None = Field(default=None, ge=0, le=UINT32)
    budget_interval: str | None = None

    _interval = field_validator("budget_interval")(classmethod(lambda cls, v: check_duration(v)))


class TrafficPolicy(Model):
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    port_level_settings: list[PortTrafficPolicy] = Field(default_factory=list)
    tunnel: Tunnel | None = None
    proxy_protocol: ProxyProtocol | None = None
    retry_budget: RetryBudget | None = None

    @model_validator(mode="after")
    def _rules(self) -> "TrafficPolicy":
        if self.tunnel is not None:
            raise ValueError("tunnel is not supported in waypoints")
        seen: set[int] = set()
        for setting in self.port_level_settings:
            if setting.port is None or not setting.port.number:
                raise ValueError("portLevelSettings: each setting needs port.number")
            if not 1 <= setting.port.number <= 65535:
                raise ValueError(f"portLevelSettings: port {setting.port.number} must be between 1 and 65535")
            if setting.port.number in seen:
                raise ValueError(f"portLevelSettings: port {setting.port.number} is given twice")
            seen.add(setting.port.number)
        return self


class Subset(Model):
    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    traffic_policy: TrafficPolicy | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _SUBSET_NAME.match(value) or len(value) > 63:
            raise ValueError(f"subset name {value!r} is invalid: a lowercase RFC 1123 label")
        return value


class WorkloadSelector(Model):
    match_labels: dict[str, str] = Field(default_factory=dict)


class DestinationRuleSpec(Model):
    host: str
    traffic_policy: TrafficPolicy | None = None
    subsets: list[Subset] = Field(default_factory=list)
    export_to: list[str] = Field(default_factory=list)
    workload_selector: WorkloadSelector | None = None

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return check_host(value)

    @model_validator(mode="after")
    def _rules(self) -> "DestinationRuleSpec":
        if self.workload_selector is not None:
            raise ValueError("workloadSelector is not supported: a waypoint uses only DestinationRules without one")
        names = [s.name for s in self.subsets]
        duplicate = sorted({n for n in names if names.count(n) > 1})
        if duplicate:
            raise ValueError(f"duplicate subset names: {', '.join(duplicate)}")
        return self


class DestinationRule(Resource):
    GROUP: ClassVar[str] = ISTIO_NETWORKING_GROUP
    KIND: ClassVar[str] = "DestinationRule"
    VERSIONS: ClassVar[tuple[str, ...]] = CLASSIC_VERSIONS
    spec: DestinationRuleSpec
