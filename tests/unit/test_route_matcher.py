"""envoy.route_matcher: a virtual host's match tree picks the route its route list would, for any request.

Both forms are read by envoy.evaluate.select_route (Envoy's first-match route list, and its match tree
whose RouteList actions go through the same per-route matching); the e2e test in test_httproute holds
the tree to real Envoy.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from waypost.envoy import route_matcher
from waypost.envoy.evaluate import select_route

SEGMENTS = ["a", "b", "ab", "v1"]


@st.composite
def a_path(draw, min_segments: int = 1) -> str:
    return "/" + "/".join(draw(st.lists(st.sampled_from(SEGMENTS), min_size=min_segments, max_size=3)))


@st.composite
def a_route(draw) -> dict:
    kind = draw(st.sampled_from(["path", "path_separated_prefix", "path_separated_prefix", "prefix", "safe_regex"]))
    if kind == "safe_regex":
        match: dict = {"safe_regex": {"regex": draw(st.sampled_from(["/a/.*", "/[ab]+", ".*1"]))}}
    elif kind == "prefix":
        match = {"prefix": draw(st.sampled_from(["/", "/a", "/ab/"]))}
    else:
        match = {kind: draw(a_path())}
    if draw(st.integers(0, 5)) == 0:
        match["case_sensitive"] = False
    if draw(st.integers(0, 3)) == 0:
        match["headers"] = [{"name": ":method", "string_match": {"exact": draw(st.sampled_from(["GET", "POST"]))}}]
    return {"match": match}


@st.composite
def a_request_path(draw) -> str:
    path = draw(a_path(min_segments=0)) if draw(st.booleans()) else draw(st.sampled_from(["/", "/A/B", "/a/", "/ab1", "/a?x=/b", "/v1#f", "/a//b"]))
    if draw(st.integers(0, 3)) == 0:
        path += draw(st.sampled_from(["?q=1", "?/a/b", "/"]))
    return path


def _config(vh: dict) -> dict:
    return {"name": "rc", "virtual_hosts": [vh]}


@settings(max_examples=300, deadline=None)
@given(st.lists(a_route(), min_size=route_matcher.MIN_KEYED, max_size=24), st.lists(st.tuples(a_request_path(), st.sampled_from(["GET", "POST"])), min_size=10, max_size=10))
def test_tree_picks_the_route_the_list_picks(routes, requests):
    routes = [{**r, "name": f"r{i}", "direct_response": {"status": 200}} for i, r in enumerate(routes)]
    plain = {"name": "vh", "domains": ["*"], "routes": routes}
    tree = route_matcher.with_matcher(plain)
    for path, method in requests:
        headers = [(":method", method), (":path", path), (":authority", "svc")]
        expected, _ = select_route(_config(plain), headers, path, {})
        got, _ = select_route(_config(tree), headers, path, {})
        assert (got or {}).get("name") == (expected or {}).get("name"), (path, method, routes)


def _sep(i: int, path: str) -> dict:
    return {"name": f"r{i}", "match": {"path_separated_prefix": path}, "direct_response": {"status": 200}}


def test_an_entry_lists_the_routes_of_its_path_and_of_the_paths_above_it_then_the_rest():
    routes = [_sep(0, "/a/b"), _sep(1, "/a"), _sep(2, "/ab")] + [_sep(i, f"/x{i}") for i in range(3, 8)]
    routes.append({"name": "all", "match": {"prefix": "/"}, "direct_response": {"status": 404}})
    tree = route_matcher.compile_routes(routes)
    assert tree is not None
    entries = tree["matcher_tree"]["prefix_match_map"]["map"]
    names = {key: [r["name"] for r in entry["action"]["typed_config"]["routes"]] for key, entry in entries.items()}
    assert names["/a/b"] == ["r0", "r1", "all"]  # /a covers /a/b, in the list's order
    assert names["/a"] == ["r1", "all"]
    assert names["/ab"] == ["r2", "all"]  # /a does not cover /ab
    assert [r["name"] for r in tree["on_no_match"]["action"]["typed_config"]["routes"]] == ["all"]
    assert tree["matcher_tree"]["input"] == route_matcher.header_input(":path")
    shown = [r["name"] for r in route_matcher.routes_of({"matcher": tree})]  # proxy-config lists each route once
    assert sorted(shown) == sorted(r["name"] for r in routes) and shown[:3] == ["r1", "all", "r0"]


def test_short_or_unkeyed_lists_and_repeating_lists_stay_lists():
    few = [_sep(i, f"/x{i}") for i in range(route_matcher.MIN_KEYED - 1)]
    assert route_matcher.compile_routes(few) is None
    unkeyed = [{"name": f"p{i}", "match": {"prefix": f"/p{i}"}} for i in range(20)]
    assert route_matcher.compile_routes(unkeyed) is None
    # every route for any path repeats in each of the 10 entries: 10 × 10 + 20 > 4 × 20
    assert route_matcher.compile_routes([_sep(i, f"/x{i}") for i in range(10)] + unkeyed[:10]) is None
    vh = {"name": "vh", "domains": ["*"], "routes": few}
    assert route_matcher.with_matcher(vh) is vh
