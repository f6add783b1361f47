"""Istio's proxy extensions (extensions.istio.io/v1alpha1): WasmPlugin and TrafficExtension.

Validation follows istio `pkg/config/validation/validation.go` (ValidateWasmPlugin,
ValidateTrafficExtension) and the CRD schema (shared/crds/istio-crd-all.gen.yaml), message for message
where Istio has one. Semantics: shared/spec/istio-ambient-semantics.md §8.1–§8.2 and §4.1 (waypoints take
extensions attached with targetRefs only; a selector attaches to sidecars, which waypost does not run).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from .meta import Model, Resource
from .security import TargetedSpec

EXTENSIONS_GROUP = "extensions.istio.io"
URL_SCHEMES = ("oci", "http", "https", "file")
_SHA256 = re.compile(r"^[a-f0-9]{64}$")

Phase = Literal["UNSPECIFIED_PHASE", "UNSPECIFIED", "AUTHN", "AUTHZ", "STATS"]


class PortSelector(Model):
    number: int = Field(ge=1, le=65535)


class TrafficSelector(Model):
    mode: Literal["UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"] = "CLIENT_AND_SERVER"
    ports: list[PortSelector] = Field(default_factory=list)

    def selects(self, port: int) -> bool:
        """Waypoint chains are SERVER traffic (Istio's inbound class); ports are the service ports."""
        if self.mode == "CLIENT":
            return False
        return not self.ports or any(p.number == port for p in self.ports)


class EnvVar(Model):
    name: str = Field(min_length=1, max_length=256)
    value_from: Literal["INLINE", "HOST"] = "INLINE"
    value: str = ""

    @model_validator(mode="after")
    def _inline_only(self) -> "EnvVar":
        if self.value_from != "INLINE" and self.value:
            raise ValueError("value may only be set when valueFrom is INLINE")
        return self


class VmConfig(Model):
    env: list[EnvVar] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> "VmConfig":
        names = [e.name for e in self.env]
        if len(names) != len(set(names)):
            raise ValueError("duplicate env")
        return self


def check_url(value: str) -> str:
    if not value:
        raise ValueError("url field needs to be set")
    scheme = urlsplit(value).scheme if "://" in value else ""
    if scheme not in ("", *URL_SCHEMES):
        raise ValueError(f"url contains unsupported scheme: {scheme}")
    return value


def normalized_url(value: str) -> str:
    """A URL without a scheme is an OCI image reference (Istio's default)."""
    return value if "://" in value else f"oci://{value}"


class WasmConfig(Model):
    """The module and how Envoy runs it: WasmPlugin's own fields and TrafficExtension's `wasm`."""

    url: str
    sha256: str = ""
    image_pull_policy: Literal["UNSPECIFIED_POLICY", "IfNotPresent", "Always"] = "UNSPECIFIED_POLICY"
    image_pull_secret: str = Field(default="", max_length=253)
    plugin_name: str = Field(default="", max_length=256)
    plugin_config: dict[str, Any] | None = None
    fail_strategy: Literal["FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"] = "FAIL_CLOSE"
    vm_config: VmConfig | None = None
    type: Literal["UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"] = "UNSPECIFIED_PLUGIN_TYPE"
    verification_key: str | None = None  # in the CRD; Istio does not implement it either

    _url = field_validator("url")(check_url)

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str) -> str:
        if value and len(value) != 64:
            raise ValueError("sha256 field must be 64 characters long")
        if value and not _SHA256.match(value):
            raise ValueError("sha256 field must match [a-f0-9]{64} pattern")
        return value

    @property
    def network(self) -> bool:
        return self.type == "NETWORK"


class _Placement(TargetedSpec):
    """Where an extension runs: its attachment, phase, priority within the phase and traffic match."""

    phase: Phase = "UNSPECIFIED"
    priority: int | None = None
    match: list[TrafficSelector] = Field(default_factory=list)


class WasmPluginSpec(_Placement, WasmConfig):
    phase: Phase = "UNSPECIFIED_PHASE"  # WasmPlugin's own name for the default


class WasmPlugin(Resource):
    GROUP: ClassVar[str] = EXTENSIONS_GROUP
    KIND: ClassVar[str] = "WasmPlugin"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1alpha1",)
    spec: WasmPluginSpec

    @property
    def wasm(self) -> WasmConfig:
        return self.spec

    @property
    def lua(self) -> None:
        return None


class Lua(Model):
    inline_code: str = Field(min_length=1, max_length=65536)


class TrafficExtensionSpec(_Placement):
    wasm: WasmConfig | None = None
    lua: Lua | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "TrafficExtensionSpec":
        if self.target_ref is not None:
            raise ValueError("targetRef is not supported by TrafficExtension: use targetRefs")
        if (self.wasm is None) == (self.lua is None):
            raise ValueError("exactly one of wasm or lua must be set")
        return self


class TrafficExtension(Resource):
    GROUP: ClassVar[str] = EXTENSIONS_GROUP
    KIND: ClassVar[str] = "TrafficExtension"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1alpha1",)
    spec: TrafficExtensionSpec

    @property
    def wasm(self) -> WasmConfig | None:
        return self.spec.wasm

    @property
    def lua(self) -> Lua | None:
        return self.spec.lua


def phase_of(extension: WasmPlugin | TrafficExtension) -> str:
    """AUTHN, AUTHZ, STATS or UNSPECIFIED."""
    phase = extension.spec.phase
    return "UNSPECIFIED" if phase in ("UNSPECIFIED", "UNSPECIFIED_PHASE") else phase
