"""Istio's Telemetry API (telemetry.istio.io v1 / v1alpha1): metric overrides and access logging.

Validation follows istio `pkg/config/validation/validation.go` (ValidateTelemetry) and the CRD schema.
Semantics (which Telemetries apply to a waypoint chain, how they merge) live in `waypost.mesh.telemetry`.
Tracing is accepted (the field is part of the kind) but waypost exports no traces: the resource's status
says so rather than dropping it silently.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .meta import Model, Resource
from .security import TargetedSpec

TELEMETRY_GROUP = "telemetry.istio.io"
Mode = Literal["CLIENT_AND_SERVER", "CLIENT", "SERVER"]
METRICS = (
    "ALL_METRICS", "REQUEST_COUNT", "REQUEST_DURATION", "REQUEST_SIZE", "RESPONSE_SIZE", "TCP_OPENED_CONNECTIONS",
    "TCP_CLOSED_CONNECTIONS", "TCP_SENT_BYTES", "TCP_RECEIVED_BYTES", "GRPC_REQUEST_MESSAGES", "GRPC_RESPONSE_MESSAGES",
)


class ProviderRef(Model):
    name: str = Field(min_length=1)


class MetricSelector(Model):
    metric: Literal[METRICS] | None = None  # type: ignore[valid-type]
    custom_metric: str | None = None
    mode: Mode = "CLIENT_AND_SERVER"

    @model_validator(mode="after")
    def _one(self) -> "MetricSelector":
        if self.metric is not None and self.custom_metric is not None:
            raise ValueError("only one of metric or customMetric may be set")
        return self


class TagOverride(Model):
    operation: Literal["UPSERT", "REMOVE"] = "UPSERT"
    value: str | None = None

    @model_validator(mode="after")
    def _value(self) -> "TagOverride":
        if self.operation == "UPSERT" and not self.value:
            raise ValueError("must set value when operation is UPSERT")
        if self.operation == "REMOVE" and self.value:
            raise ValueError("must not set value when operation is REMOVE")
        return self


class MetricsOverrides(Model):
    match: MetricSelector | None = None
    disabled: bool | None = None
    tag_overrides: dict[str, TagOverride] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _tags(self) -> "MetricsOverrides":
        for name in self.tag_overrides:
            if not name:
                raise ValueError("tagOverrides: a tag name must not be empty")
        return self


class Metrics(Model):
    providers: list[ProviderRef] = Field(default_factory=list)
    overrides: list[MetricsOverrides] = Field(default_factory=list)
    reporting_interval: str | None = None


class LogSelector(Model):
    mode: Mode = "CLIENT_AND_SERVER"


class AccessLogFilter(Model):
    expression: str = Field(min_length=1)


class AccessLogging(Model):
    match: LogSelector | None = None
    providers: list[ProviderRef] = Field(default_factory=list)
    disabled: bool | None = None
    filter: AccessLogFilter | None = None


class LiteralTag(Model):
    value: str = Field(min_length=1)


class EnvironmentTag(Model):
    name: str = Field(min_length=1)
    default_value: str = ""


class HeaderTag(Model):
    name: str = Field(min_length=1)
    default_value: str = ""


class FormatterTag(Model):
    value: str = Field(min_length=1)


class CustomTag(Model):
    literal: LiteralTag | None = None
    environment: EnvironmentTag | None = None
    header: HeaderTag | None = None
    formatter: FormatterTag | None = None

    @model_validator(mode="after")
    def _one(self) -> "CustomTag":
        # The CRD's oneOf: none of the four, or exactly one.
        if sum(v is not None for v in (self.literal, self.environment, self.header, self.formatter)) > 1:
            raise ValueError("only one of literal, environment, header or formatter may be set")
        return self


class TracingSelector(Model):
    mode: Mode = "CLIENT_AND_SERVER"


class Tracing(Model):
    """Typed so a malformed entry is refused as the CRD refuses it, though waypost exports no traces."""

    match: TracingSelector | None = None
    providers: list[ProviderRef] = Field(default_factory=list)
    random_sampling_percentage: float | None = Field(default=None, ge=0, le=100)
    disable_span_reporting: bool | None = None
    custom_tags: dict[str, CustomTag] = Field(default_factory=dict)
    use_request_id_for_trace_sampling: bool | None = None
    enable_istio_tags: bool | None = None
    disable_context_propagation: bool | None = None


class TelemetrySpec(TargetedSpec):
    metrics: list[Metrics] = Field(default_factory=list)
    access_logging: list[AccessLogging] = Field(default_factory=list)
    tracing: list[Tracing] = Field(default_factory=list)


class Telemetry(Resource):
    GROUP: ClassVar[str] = TELEMETRY_GROUP
    KIND: ClassVar[str] = "Telemetry"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1", "v1alpha1")
    spec: TelemetrySpec = Field(default_factory=TelemetrySpec)

    @property
    def namespace_wide(self) -> bool:
        """Istio: no selector labels and no targetRefs (an empty selector counts as none)."""
        return not (self.spec.selector and self.spec.selector.match_labels) and not self.spec.targets
