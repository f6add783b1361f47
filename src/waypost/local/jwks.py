"""JWKS for RequestAuthentication `jwksUri`: fetched by the control plane and pushed inline, as istiod does
by default. A fetch that fails leaves the issuer without usable keys (its tokens get 401: fail closed).
Documents are refreshed every `WAYPOST_JWKS_REFRESH` seconds (default 300, Istio's cache time).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
import urllib.request

from waypost.mesh import MeshSnapshot

log = logging.getLogger("waypost.local")


def uris(snapshot: MeshSnapshot) -> dict[str, float]:
    """jwksUri → fetch timeout in seconds, over every RequestAuthentication of the snapshot."""
    out: dict[str, float] = {}
    for policy in snapshot.request_authentications:
        for rule in policy.spec.jwt_rules:
            if rule.jwks_uri:
                out[rule.jwks_uri] = _seconds(rule.timeout) if rule.timeout else 5.0
    return out


def _seconds(value: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)(ms|s|m|h)", value).groups()  # validated by the api layer
    return float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def fetch(uri: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(uri, timeout=timeout) as r:
            document = r.read().decode()
        if not isinstance(json.loads(document).get("keys"), list):
            raise ValueError("not a JSON Web Key Set")
        return document
    except (OSError, ValueError) as exc:
        log.warning("cannot fetch JWKS from %s: %s; its tokens will be rejected", uri, exc)
        return None


class JwksCache:
    def __init__(self) -> None:
        self.documents: dict[str, str | None] = {}
        self.fetched_at = 0.0
        self.interval = float(os.environ.get("WAYPOST_JWKS_REFRESH", "300"))

    def attach(self, snapshot: MeshSnapshot) -> MeshSnapshot:
        """The snapshot with the documents of its jwksUris (fetched now for URIs not seen before)."""
        wanted = uris(snapshot)
        for uri, timeout in wanted.items():
            if uri not in self.documents:
                self.documents[uri] = fetch(uri, timeout)
        if not self.fetched_at:
            self.fetched_at = time.monotonic()
        found = tuple(sorted((u, d) for u, d in self.documents.items() if u in wanted and d is not None))
        return dataclasses.replace(snapshot, jwks_documents=found)

    def refresh_due(self) -> bool:
        return bool(self.documents) and time.monotonic() - self.fetched_at >= self.interval

    def refresh(self) -> bool:
        """Re-fetches every known URI; True when any document changed (the caller re-translates)."""
        self.fetched_at = time.monotonic()
        changed = False
        for uri in list(self.documents):
            document = fetch(uri, 5.0)
            if document != self.documents[uri]:
                self.documents[uri] = document
                changed = True
        return changed
