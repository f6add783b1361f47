"""Prometheus metrics of a running mesh: each proxy's Envoy stats with Istio's metric names, and a merge.

Envoy prints the stats access logger's series as `envoy_istio_*`; in Istio the pilot-agent serves the
proxy's metrics on :15020 and dashboards expect `istio_*`. This module does the agent's part: fetch a
proxy's `/stats/prometheus`, rename `envoy_istio_` to `istio_`, and merge several proxies into one
exposition (each family once, each sample labelled with the proxy it came from).
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterable

_FAMILY = re.compile(r"^# (?:TYPE|HELP) (\S+)")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(.+)$")
_SUFFIXES = ("_bucket", "_sum", "_count")


# Destination workload labels come from the chosen endpoint's metadata; when a request reached no mesh
# endpoint (denied, unrouted, no endpoint) Envoy's stats logger leaves them empty ("-" in text formats) and
# Istio's waypoint reports "unknown"
# (istio/proxy istio_stats.cc, Reporter::ServerGateway). Rewriting here costs nothing per request.
_NO_ENDPOINT = re.compile(
    r'(destination_(?:workload|workload_namespace|principal|app|version|canonical_service|canonical_revision|cluster))="-?"'
)


def istio_names(text: str) -> str:
    """Envoy's `envoy_istio_<metric>` → Istio's `istio_<metric>`, with "unknown" for a missing endpoint's labels."""
    text = re.sub(r"(?m)^(# (?:TYPE|HELP) )?envoy_istio_", lambda m: (m.group(1) or "") + "istio_", text)
    return _NO_ENDPOINT.sub(r'\1="unknown"', text)


def fetch(admin: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://{admin}/stats/prometheus", timeout=timeout) as response:
        return istio_names(response.read().decode())


def _family_of(name: str, families: set[str]) -> str:
    if name in families:
        return name
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in families:
            return name[: -len(suffix)]
    return name


def merge(sources: Iterable[tuple[str, str]]) -> str:
    """[(proxy name, exposition text)] → one exposition; samples gain a `proxy` label."""
    types: dict[str, str] = {}
    samples: dict[str, list[str]] = {}
    for proxy, text in sources:
        families: set[str] = set()
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                families.add(name)
                types.setdefault(name, kind)
            elif line and not line.startswith("#"):
                m = _SAMPLE.match(line)
                if not m:
                    continue
                name, labels, value = m.groups()
                inner = labels[1:-1] if labels else ""
                tagged = f'proxy="{proxy}"' + (f",{inner}" if inner else "")
                samples.setdefault(_family_of(name, families), []).append(f"{name}{{{tagged}}} {value}")
    out = []
    for family in sorted(samples):
        if family in types:
            out.append(f"# TYPE {family} {types[family]}")
        out.extend(samples[family])
    return "\n".join(out) + "\n"
