"""A virtual host's route list as an equivalent `matcher`: a prefix tree on the path picks the few routes
that could match, which Envoy then tries in order exactly as before.

Envoy tries a virtual host's routes one by one (~23 ns a route measured, bench/RESULTS.md), so a Service
with 1000 HTTPRoute rules pays for every rule before the last on each request. With `matcher` set,
Envoy looks the `:path` header up in a prefix map (longest key that is a prefix wins) and hands the
routes of that entry, a `RouteList`, to the same per-route matching (envoy source/common/router/
config_impl.cc: a RouteList action's routes go through getRouteFromRoutes, each with its whole `match`).
No action, or no route of the list matching, means no route, as for the plain list.

Keys. A route whose path match pins a path K (`path: K`, the path without its query must equal K;
`path_separated_prefix: K`, it must be K or start with K + "/") has key K; any other route (prefix,
regex, case-insensitive, CONNECT) has none and is a route for any path. For a request, let K* be the
longest key that is a prefix of `:path`. A route with key K can match only if K is a prefix of the
path, so K is a prefix of K*; and since the path is K (before any `?`/`#`, which no key holds) or
continues with "/" after K, K* is K or starts with K + "/". So the entry of K* lists, in the original
order, the routes whose key is K* or a "/"-bounded prefix of it, plus every route without a key; the
map's `on_no_match` (no key is a prefix) lists only the routes without a key. Each list holds every
route that can match such a request, in order, so the first match is the route Envoy would have picked.

A virtual host keeps its `routes` when it has fewer than MIN_KEYED keyed routes (nothing to gain) or
when the lists would repeat routes more than MAX_FANOUT times over.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .rbac_matcher import header_input

T_ROUTE_LIST = "type.googleapis.com/envoy.config.route.v3.RouteList"
MIN_KEYED = 8
MAX_FANOUT = 4


def route_key(route: Mapping[str, Any]) -> str | None:
    """The path a route pins (see the module doc), or None."""
    match = route.get("match", {})
    if match.get("case_sensitive") is False or "connect_matcher" in match:
        return None
    key = match.get("path_separated_prefix", match.get("path"))
    if not isinstance(key, str) or not key or "?" in key or "#" in key:
        return None
    return key


def _above(bucket: str) -> list[str]:
    """The paths a route's key may be for the route to match a request whose longest key is `bucket`:
    the bucket and each of its "/"-bounded prefixes."""
    out = [bucket]
    at = bucket.rfind("/")
    while at > 0:
        out.append(bucket[:at])
        at = bucket.rfind("/", 0, at)
    return out


def _route_list(routes: list[Mapping[str, Any]]) -> dict[str, Any]:
    return {"action": {"name": "route-list", "typed_config": {"@type": T_ROUTE_LIST, "routes": routes}}}


def compile_routes(routes: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The match tree for a virtual host's `routes` that picks the same route, or None (module doc)."""
    keys = [route_key(r) for r in routes]
    if sum(k is not None for k in keys) < MIN_KEYED:
        return None
    at: dict[str | None, list[int]] = {}
    for i, k in enumerate(keys):
        at.setdefault(k, []).append(i)
    anyone = at.get(None, [])
    by_key: dict[str, Any] = {}
    total = 0
    for bucket in sorted(k for k in at if k is not None):
        listed = sorted([i for key in _above(bucket) for i in at.get(key, ())] + anyone)
        total += len(listed)
        if total > MAX_FANOUT * len(routes):
            return None
        by_key[bucket] = _route_list([routes[i] for i in listed])
    tree: dict[str, Any] = {"matcher_tree": {"input": header_input(":path"), "prefix_match_map": {"map": by_key}}}
    if anyone:
        tree["on_no_match"] = _route_list([routes[i] for i in anyone])
    return tree


def with_matcher(virtual_host: dict[str, Any]) -> dict[str, Any]:
    """`virtual_host` with its routes as a match tree where that pays (else unchanged)."""
    tree = compile_routes(virtual_host.get("routes", []))
    if tree is None:
        return virtual_host
    out = {k: v for k, v in virtual_host.items() if k != "routes"}
    out["matcher"] = tree
    return out


def routes_of(virtual_host: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A virtual host's routes, also from a match tree written by `compile_routes` (each once: the
    routes of the entries in key order, then those for any path)."""
    if "matcher" not in virtual_host:
        return list(virtual_host.get("routes", []))
    tree = virtual_host["matcher"]
    lists = [entry for _, entry in sorted(tree.get("matcher_tree", {}).get("prefix_match_map", {}).get("map", {}).items())]
    if "on_no_match" in tree:
        lists.append(tree["on_no_match"])
    out, seen = [], set()
    for entry in lists:
        for route in entry.get("action", {}).get("typed_config", {}).get("routes", []):
            key = repr(sorted(route.items()))
            if key not in seen:
                seen.add(key)
                out.append(route)
    return out
