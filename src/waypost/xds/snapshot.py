"""An immutable set of Envoy resources for one node, with per-type content versions."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


CHAINS = "filter_chains"


def content_digest(value: object) -> bytes:
    """sha256 of a value's canonical JSON (sorted keys, no whitespace), raw.

    Raises TypeError when the value holds something JSON cannot represent; such a dict could not be a
    valid Envoy resource either.
    """
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode()).digest()


def chain_parts(resource: object) -> tuple[dict, Sequence[Mapping[str, object]]] | None:
    """(the resource without its filter chains, the chains) for a listener that has chains, else None.

    A listener's digest and encoding are built from these parts, so that a change to one of a waypoint's
    thousands of chains re-hashes and re-encodes that chain, not megabytes of the others."""
    chains = resource.get(CHAINS) if isinstance(resource, Mapping) else None
    if not isinstance(chains, (list, tuple)) or not chains:
        return None
    return {k: v for k, v in resource.items() if k != CHAINS}, chains


def listener_digest(rest_digest: bytes, chain_digests: Iterable[bytes]) -> str:
    """The digest of a listener from the digest of its other fields and those of its chains, in order."""
    h = hashlib.sha256(b"listener\0" + rest_digest)
    for digest in chain_digests:
        h.update(digest)
    return h.hexdigest()


def resource_digest(resource: Mapping[str, object]) -> str:
    """A content hash of the resource: sha256 of its canonical JSON, or for a listener with filter chains, of
    its other fields' and each chain's (`listener_digest`). Raises TypeError as `content_digest`."""
    parts = chain_parts(resource)
    if parts is None:
        return content_digest(resource).hex()
    rest, chains = parts
    return listener_digest(content_digest(rest), (content_digest(c) for c in chains))


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
