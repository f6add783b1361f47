"""Shared pieces of every resource: metadata, source location, label selectors, the model base."""

from __future__ import annotations

from functools import cached_property

import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

# RFC 1123 label / subdomain, as Kubernetes validates object names and namespaces.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class Model(BaseModel):
    """Base for spec structures: camelCase keys as in the manifests, immutable values.

    Unknown fields are rejected (kubectl's default strict field validation) except where a model opts out
    because waypost deliberately reads only part of an upstream object (e.g. a Pod's container spec).
    """

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid", strict=True
    )


class LooseModel(Model):
    """A structure of which waypost reads only some fields; the rest are accepted and ignored."""

    model_config = ConfigDict(extra="allow")


class ObjectMeta(LooseModel):
    name: str = Field(min_length=1, max_length=253)
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    creation_timestamp: str | None = None

    @field_validator("name")
    @classmethod
    def _name_is_dns_subdomain(cls, value: str) -> str:
        if not DNS_SUBDOMAIN.match(value):
            raise ValueError(
                "must be a lowercase RFC 1123 subdomain (a-z, 0-9, '-' and '.', starting and ending alphanumeric)"
            )
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace_is_dns_label(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 63 or not DNS_LABEL.match(value)):
            raise ValueError("must be a lowercase RFC 1123 label (a-z, 0-9 and '-', at most 63 characters)")
        return value


class LabelSelectorRequirement(Model):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)


class LabelSelector(Model):
    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)

    def matches(self, labels: dict[str, str]) -> bool:
        """Kubernetes label-selector semantics (an empty selector matches everything)."""
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and (not present or labels[req.key] not in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True


class Source(BaseModel):
    """Where a resource came from: file and the line of its first key."""

    model_config = ConfigDict(frozen=True)
    file: str
    line: int


class Resource(BaseModel):
    """A typed, validated Kubernetes object. Subclasses set GROUP, KIND, NAMESPACED and declare `spec`."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid")

    GROUP: ClassVar[str] = ""
    KIND: ClassVar[str] = ""
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1",)
    NAMESPACED: ClassVar[bool] = True

    api_version: str
    kind: str
    metadata: ObjectMeta
    status: dict[str, Any] | None = None
    source: Source = Field(default=Source(file="<memory>", line=0), exclude=True)

    @property
    def name(self) -> str:
        return self.metadata.name

    # Cached (the model is frozen; pydantic keeps cached properties out of fields, equality and dumps):
    # the mesh layers ask every resource for its namespace and key many times per change.
    @cached_property
    def namespace(self) -> str:
        return self.metadata.namespace or ("default" if self.NAMESPACED else "")

    @property
    def labels(self) -> dict[str, str]:
        return self.metadata.labels

    @cached_property
    def key(self) -> tuple[str, str, str]:
        """Identity within a mesh: (kind, namespace, name)."""
        return (self.KIND, self.namespace, self.name)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}" if self.NAMESPACED else self.name
