"""`waypost proxy-config KIND PROXY`: what an Envoy actually runs, from its admin config dump (istioctl's columns)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import yaml

from waypost.envoy import route_matcher

from .render import table

KINDS = ("listener", "route", "cluster", "secret", "all")


def config_dump(admin: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{admin}/config_dump", timeout=5) as r:
        return json.loads(r.read())


def certs(admin: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{admin}/certs", timeout=5) as r:
        return json.loads(r.read())


def _section(dump: dict[str, Any], suffix: str) -> dict[str, Any]:
    return next((c for c in dump.get("configs", []) if c.get("@type", "").rsplit(".", 1)[-1] == suffix), {})


def clusters(dump: dict[str, Any]) -> list[dict[str, Any]]:
    section = _section(dump, "ClustersConfigDump")
    return [c["cluster"] for c in section.get("static_clusters", []) + section.get("dynamic_active_clusters", [])]


def listeners(dump: dict[str, Any]) -> list[dict[str, Any]]:
    section = _section(dump, "ListenersConfigDump")
    return [l["active_state"]["listener"] for l in section.get("dynamic_listeners", []) if "active_state" in l]


def routes(dump: dict[str, Any]) -> list[dict[str, Any]]:
    section = _section(dump, "RoutesConfigDump")
    return [r["route_config"] for r in section.get("static_route_configs", []) + section.get("dynamic_route_configs", [])]


def cluster_rows(items: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for c in sorted(items, key=lambda c: c["name"]):
        parts = c["name"].split("|")
        if len(parts) == 4 and parts[0] in ("outbound", "inbound-vip", "inbound-pod", "missing"):
            direction, port, subset, fqdn = parts
            rows.append([fqdn, port, subset or "-", direction, c.get("type", "EDS"), "-"])
        else:
            rows.append([c["name"], "-", "-", "-", c.get("type", "STATIC"), "-"])
    return rows


def _address(listener: dict[str, Any]) -> tuple[str, str]:
    if "internal_listener" in listener:
        return "internal", "-"
    sock = listener.get("address", {}).get("socket_address", {})
    extra = len(listener.get("additional_addresses", []))
    addresses = sock.get("address", "-") + (f" (+{extra})" if extra else "")
    return addresses, str(sock.get("port_value", "-"))


def listener_rows(items: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for l in sorted(items, key=lambda l: l["name"]):
        addresses, port = _address(l)
        chains = l.get("filter_chains", [])
        rows.append([l["name"], addresses, port, len(chains) + (1 if "default_filter_chain" in l else 0)])
    return rows


def route_rows(items: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for rc in sorted(items, key=lambda r: r["name"]):
        for vh in rc.get("virtual_hosts", []):
            for route in route_matcher.routes_of(vh):
                match = route.get("match", {})
                text = next((f"{k}: {v}" for k, v in match.items() if k in ("path", "prefix", "path_separated_prefix", "safe_regex")), "-")
                if isinstance(match.get("safe_regex"), dict):
                    text = f"regex: {match['safe_regex'].get('regex')}"
                rows.append([rc["name"], vh["name"], ",".join(vh.get("domains", [])), text, route.get("name", "-")])
    return rows


def secret_rows(cert_dump: dict[str, Any]) -> list[list[Any]]:
    rows = []
    seen = set()
    for entry in cert_dump.get("certificates", []):
        for kind, key in (("Cert Chain", "cert_chain"), ("CA", "ca_cert")):
            for cert in entry.get(key, []):
                sans = ",".join(s.get("uri", s.get("dns", "")) for s in cert.get("subject_alt_names", [])) or "ROOTCA"
                row = (sans, kind, "ACTIVE", "true", cert.get("serial_number", "-"), cert.get("expiration_time", "-"), cert.get("valid_from", "-"))
                if row not in seen:
                    seen.add(row)
                    rows.append(list(row))
    return sorted(rows)


HEADERS = {
    "cluster": ["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "DESTINATION RULE"],
    "listener": ["NAME", "ADDRESSES", "PORT", "CHAINS"],
    "route": ["NAME", "VHOST NAME", "DOMAINS", "MATCH", "ROUTE"],
    "secret": ["RESOURCE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE"],
}


def render(kind: str, admin: str, output: str) -> str:
    dump = config_dump(admin)
    raw = {
        "cluster": lambda: clusters(dump),
        "listener": lambda: listeners(dump),
        "route": lambda: routes(dump),
        "secret": lambda: certs(admin),
    }
    kinds = ["listener", "route", "cluster", "secret"] if kind == "all" else [kind]
    if output in ("json", "yaml"):
        payload = {k: raw[k]() for k in kinds} if kind == "all" else raw[kind]()
        return json.dumps(payload, indent=2) if output == "json" else yaml.safe_dump(payload, sort_keys=False).rstrip()
    rows = {
        "cluster": lambda: cluster_rows(clusters(dump)),
        "listener": lambda: listener_rows(listeners(dump)),
        "route": lambda: route_rows(routes(dump)),
        "secret": lambda: secret_rows(certs(admin)),
    }
    return "\n\n".join(table(HEADERS[k], rows[k]()) for k in kinds)
