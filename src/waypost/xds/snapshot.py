"""An immutable set of Envoy resources for one node, with per-type content versions."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


def resource_digest(resource: Mapping[str, object]) -> str:
    """sha256 of the resource's canonical JSON (sorted keys, no whitespace).

    Raises TypeError when the dict holds something JSON cannot represent; such a dict could not be a
    valid Envoy resource either.
    """
    canonical = json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def type_version(digests: Iterable[tuple[str, str]]) -> str:
    """The version of one resource type from its (name, digest) pairs; "" when there are none.

    A pure function of the content, so a control plane restart or a second replica hands out the same
    version for the same config, and a change to one type leaves every other type's version alone.
    """
    pairs = sorted(digests)
    if not pairs:
        return ""
    # One update of the joined text (the same bytes as one update per name and digest, far fewer calls).
    return hashlib.sha256("".join(f"{name}\0{digest}\n" for name, digest in pairs).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Snapshot:
    """type_url → resource name → resource in Envoy's v3 JSON form (as in Envoy YAML config).

    Nested `typed_config`s carry their `"@type"`. The generator that builds a snapshot must make it
    consistent (every route a listener names exists, ...); the server only hands it out.
    """

    resources: Mapping[str, Mapping[str, dict]]

    def version(self, type_url: str) -> str:
        """Deterministic content hash of this type's resources; "" when the type has none."""
        named = self.resources.get(type_url, {})
        return type_version((name, resource_digest(resource)) for name, resource in named.items())
