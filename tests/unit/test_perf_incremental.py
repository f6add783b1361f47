"""The structures behind incremental translation (issue 8): snapshot indexes, policy and workload indexes,
read tracking, `translate_incremental`, cached resource documents and partial RDS pushes. Each must give
exactly what the plain computation gives."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.manifests import deny_paths
from waypost.api import load_paths, load_text
from waypost.envoy import translate, translate_incremental
from waypost.mesh import AddressPlan, address_assignments, build
from waypost.mesh import registry
from waypost.mesh.policies import TargetIndex, for_waypoint_chain, targets_service, targets_waypoint
from waypost.mesh.tracking import Diff, Recorder

REPO = Path(__file__).resolve().parents[2]
PLAN = AddressPlan(77)
EXAMPLES = ("quickstart", "routing", "extauthz")


def resources_of(name: str):
    result = load_paths([REPO / "examples" / name])
    assert not result.errors
    return result.resources


@pytest.fixture(scope="module", params=EXAMPLES)
def snapshot(request):
    return build(resources_of(request.param), PLAN)


def test_snapshot_lookups_match_a_scan_in_order(snapshot):
    for s in snapshot.services:
        assert snapshot.service(s.key) is next(x for x in snapshot.services if x.key == s.key)
        assert snapshot.service_by_fqdn(s.fqdn) is next(x for x in snapshot.services if x.fqdn == s.fqdn)
        for p in s.ports:
            assert snapshot.routes_for(s.key, p.port) is next((r for r in snapshot.routes if (r.service, r.port) == (s.key, p.port)), None)
            assert snapshot.l4routes_for(s.key, p.port) is next((r for r in snapshot.l4routes if (r.service, r.port) == (s.key, p.port)), None)
    for w in snapshot.workloads:
        assert snapshot.workload(w.key) is w
    for st in snapshot.statuses:
        assert snapshot.status_of(st.kind, st.namespace, st.name) is next(x for x in snapshot.statuses if (x.kind, x.namespace, x.name) == (st.kind, st.namespace, st.name))
    assert snapshot.service("nope/nothing") is None and snapshot.workload("nope/nothing") is None
    assert snapshot.waypoint(None) is None
    for wp in snapshot.waypoints:
        assert snapshot.waypoint(wp.ref) is wp
        assert snapshot.services_of_waypoint.get(wp.ref, ()) == tuple(s for s in snapshot.services if s.waypoint == wp.ref)


def test_first_of_equal_keys_wins_as_in_a_scan(snapshot):
    service = snapshot.services[0]
    twin = dataclasses.replace(service, vip="127.9.9.9")
    doubled = dataclasses.replace(snapshot, services=(service, twin, *snapshot.services[1:]))
    assert doubled.service(service.key) is service
    assert doubled.service_by_fqdn(service.fqdn) is service


def _scan(policies, waypoint, service, root):
    return [p for p in policies if p.spec.targets and (targets_waypoint(p, waypoint, root) or (service is not None and targets_service(p, service)))]


def test_target_index_finds_what_a_scan_finds(snapshot):
    for policies in (snapshot.authorization_policies, snapshot.request_authentications, snapshot.extensions):
        index = TargetIndex(policies)
        for wp in snapshot.waypoints:
            for service in (None, *snapshot.services):
                for root in (snapshot.root_namespace, "elsewhere"):
                    expected = _scan(policies, wp, service, root)
                    assert index.chain(wp, service, root) == expected
                    assert for_waypoint_chain(policies, wp, service, root) == expected


def test_target_index_keeps_order_and_does_not_repeat_a_policy_that_targets_twice():
    text = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: b-both, namespace: ns}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}, {kind: Service, group: "", name: svc}]
  action: DENY
  rules: [{to: [{operation: {paths: [/x]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a-class, namespace: istio-system}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: [/y]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: c-selector, namespace: ns}
spec:
  selector: {matchLabels: {app: svc}}
  action: DENY
  rules: [{to: [{operation: {ports: ["80"]}}]}]
"""
    loaded = load_text(text, "p.yaml")
    assert not loaded.errors, [d.render() for d in loaded.errors]
    policies = sorted(loaded.resources, key=lambda p: (p.namespace, p.name))
    from waypost.mesh.model import Service, Waypoint

    wp = Waypoint("ns", "wp", "127.0.0.1", "wp", "service", True)
    svc = Service("ns", "svc", "127.0.0.2", (), None, ())
    chain = TargetIndex(policies).chain(wp, svc, "istio-system")
    assert [p.name for p in chain] == ["a-class", "b-both"] == [p.name for p in _scan(policies, wp, svc, "istio-system")]


def test_workload_index_selects_what_a_scan_selects(snapshot):
    index = registry.WorkloadIndex(snapshot.workloads)
    selectors = [None, {}] + [dict(w.labels) for w in snapshot.workloads] + [{k: v} for w in snapshot.workloads for k, v in w.labels]
    selectors.append({"app": "no-such-app"})
    for namespace in {w.namespace for w in snapshot.workloads} | {"elsewhere"}:
        for selector in selectors:
            expected = [
                w for w in snapshot.workloads
                if selector and w.namespace == namespace and not w.is_waypoint and all(w.label_map.get(k) == v for k, v in selector.items())
            ]
            assert index.selected(namespace, selector) == expected


def test_recorder_notes_fields_and_lookups_and_diff_compares_them(snapshot):
    recorder = Recorder(snapshot)
    service = snapshot.services[0]
    assert recorder.service(service.key) is service
    assert recorder.mesh_config is snapshot.mesh_config
    _ = recorder.policy_chains
    assert recorder.deps == {("call", "service", (service.key,), ()), ("attr", "mesh_config"), ("attr", "authorization_policies")}
    with pytest.raises(dataclasses.FrozenInstanceError):
        recorder.services = ()
    moved = dataclasses.replace(snapshot, services=(dataclasses.replace(service, vip="127.9.9.9"), *snapshot.services[1:]))
    diff = Diff(snapshot, moved)
    assert diff.changed(("call", "service", (service.key,), ()))
    assert not diff.changed(("attr", "mesh_config"))
    assert not diff.changed(("call", "service", ("nope/nothing",), ()))
    assert Diff(None, snapshot).changed(("attr", "mesh_config"))  # nothing to compare with: changed


def _configs_json(configs) -> str:
    return json.dumps({k: dataclasses.asdict(v) for k, v in configs.items()}, sort_keys=True, default=str)


ROUTE_CHANGE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: incremental-test, namespace: quickstart}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /p%d}}]
    backendRefs: [{name: echo-v2, port: 80}]
"""

POLICY = deny_paths("quickstart", "incremental-deny", "echo", "/admin")


def test_translate_incremental_equals_translate_through_a_series_of_changes():
    base = list(resources_of("quickstart"))
    steps = [base]
    for i in range(2):
        steps.append(base + load_text(ROUTE_CHANGE % i, "r.yaml").resources)
    steps.append(steps[-1] + load_text(POLICY, "p.yaml").resources)
    steps.append([r for r in steps[-1] if not (r.KIND == "Service" and r.name == "echo-v1")])
    steps.append(base)
    cache = None
    previous = None
    for resources in steps:
        snapshot = build(resources, PLAN, previous=address_assignments(previous) if previous else None)
        configs, cache = translate_incremental(snapshot, cache)
        assert _configs_json(configs) == _configs_json(translate(snapshot))
        previous = snapshot


def test_a_route_change_reuses_the_ztunnel_config_and_the_unchanged_waypoint_resources():
    base = list(resources_of("quickstart"))
    first = build(base + load_text(ROUTE_CHANGE % 1, "r.yaml").resources, PLAN)
    configs, cache = translate_incremental(first)
    second = build(base + load_text(ROUTE_CHANGE % 2, "r.yaml").resources, PLAN, previous=address_assignments(first))
    again, _ = translate_incremental(second, cache)
    ztunnels = [pid for pid, c in configs.items() if c.kind == "ztunnel"]
    assert ztunnels and all(again[pid] is configs[pid] for pid in ztunnels)
    waypoint = next(pid for pid, c in configs.items() if c.kind == "waypoint")
    before = {r["name"]: r for r in configs[waypoint].routes}
    after = {r["name"]: r for r in again[waypoint].routes}
    changed = [name for name in after if after[name] is not before.get(name)]
    assert changed == ["echo.quickstart.svc.cluster.local:80"]
    assert all(a is b for a, b in zip(configs[waypoint].listeners, again[waypoint].listeners))


def test_cached_resource_documents_equal_fresh_ones():
    from waypost.local.documents import resource_documents, resource_documents_cached
    from waypost.local.manifests import track

    base = list(resources_of("quickstart"))
    first = build(base, PLAN)
    history = track({}, [], base, "t0")
    docs, cache = resource_documents_cached(base, first, "t0", history, [], None)
    assert docs == resource_documents(base, first, "t0", history, [])
    changed = base + load_text(ROUTE_CHANGE % 3, "r.yaml").resources
    second = build(changed, PLAN, previous=address_assignments(first))
    history2 = track(history, base, changed, "t1")
    again, _ = resource_documents_cached(changed, second, "t1", history2, docs, cache)
    assert again == resource_documents(changed, second, "t1", history2, docs)
    reused = sum(1 for d in again if any(d is old for old in docs))
    assert reused >= len(base) - 3  # the documents whose status did not change are the earlier objects


def test_a_push_for_an_unchanged_subscription_sends_only_the_changed_routes():
    from envoy.service.discovery.v3 import discovery_pb2

    from waypost.xds import TYPE_ROUTE
    from waypost.xds.protocol import EncodedSnapshot, StreamProtocol

    def encoded(bodies: dict[str, str]) -> EncodedSnapshot:
        from google.protobuf import any_pb2, wrappers_pb2

        packed = {}
        for name, body in bodies.items():
            a = any_pb2.Any()
            a.Pack(wrappers_pb2.StringValue(value=body))
            packed[name] = a
        return EncodedSnapshot({TYPE_ROUTE: "v-" + "-".join(sorted(bodies.values()))}, {TYPE_ROUTE: packed})

    nonces = iter(range(1, 100))
    stream = StreamProtocol("n", lambda: str(next(nonces)))
    one = encoded({"a": "1", "b": "1", "c": "1"})
    [first] = stream.on_request(discovery_pb2.DiscoveryRequest(type_url=TYPE_ROUTE, resource_names=["a", "b", "c"]), one)
    assert len(first.resources) == 3
    stream.on_request(discovery_pb2.DiscoveryRequest(type_url=TYPE_ROUTE, resource_names=["a", "b", "c"], response_nonce=first.nonce, version_info=first.version_info), one)
    two = encoded({"a": "1", "b": "2", "c": "1"})
    [pushed] = stream.on_snapshot(two)
    assert pushed.version_info == two.versions[TYPE_ROUTE] and len(pushed.resources) == 1
    # A NACK makes the next push carry every subscribed resource again.
    stream.on_request(discovery_pb2.DiscoveryRequest(type_url=TYPE_ROUTE, resource_names=["a", "b", "c"], response_nonce=pushed.nonce, error_detail={"message": "no"}), two)
    three = encoded({"a": "1", "b": "3", "c": "1"})
    [full] = stream.on_snapshot(three)
    assert len(full.resources) == 3


ECHO_V2_MOVED = """
apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: quickstart}
spec:
  selector: {app: echo, version: v2}
  ports: [{name: http, port: 81, targetPort: 8080}]
"""


def test_build_reusing_an_earlier_snapshot_equals_a_build_from_scratch():
    base = list(resources_of("quickstart"))
    route = load_text(ROUTE_CHANGE % 1, "r.yaml").resources
    steps = [base, base + route, base + load_text(ROUTE_CHANGE % 2, "r.yaml").resources]
    # The backend the route names loses its port 80: the reused rule results must not survive that.
    moved = [r for r in steps[-1] if not (r.KIND == "Service" and r.name == "echo-v2")] + load_text(ECHO_V2_MOVED, "s.yaml").resources
    steps += [moved, steps[2], [r for r in steps[2] if not (r.KIND == "Service" and r.name == "echo-v2")], base + route]
    previous = None
    for resources in steps:
        assignments = address_assignments(previous) if previous else None
        reused = build(resources, PLAN, previous=assignments, reuse=previous)
        fresh = build(resources, PLAN, previous=assignments)
        assert reused == fresh
        assert reused.routes == fresh.routes and reused.statuses == fresh.statuses
        previous = reused
    # An unchanged route with unchanged backends keeps its rule results (the very objects).
    again = build(steps[-1], PLAN, previous=address_assignments(previous), reuse=previous)
    route_id = id(next(r for r in steps[-1] if r.KIND == "HTTPRoute" and r.name == "incremental-test"))
    assert again.rule_memo[route_id][1] is previous.rule_memo[route_id][1]
    statuses = {(s.kind, s.name): s for s in build(moved, PLAN).statuses}
    assert "BackendNotFound" in str(statuses[("HTTPRoute", "incremental-test")])


def test_diff_tells_a_waypoint_chain_changed_only_when_its_policies_or_its_service_did():
    base = list(resources_of("quickstart"))
    first = build(base, PLAN)
    echo = first.service("quickstart/echo").key
    waypoint = first.services_of_waypoint and next(iter(first.services_of_waypoint))
    dep = ("call", "waypoint_chain", ("authz", waypoint, echo), ())
    routed = build(base + load_text(ROUTE_CHANGE % 1, "r.yaml").resources, PLAN, previous=address_assignments(first))
    assert not Diff(first, routed).changed(dep)
    denied = build(base + load_text(POLICY, "p.yaml").resources, PLAN, previous=address_assignments(first))
    assert Diff(first, denied).changed(dep)
    # A policy elsewhere changes the policy list, but not this chain's policies: compared, not changed.
    other = deny_paths("quickstart", "elsewhere", "echo-v1", "/admin")
    elsewhere = build(base + load_text(other, "p.yaml").resources, PLAN, previous=address_assignments(first))
    assert not Diff(first, elsewhere).changed(dep)
    gone = build([r for r in base if not (r.KIND == "Service" and r.name == "echo")], PLAN, previous=address_assignments(first))
    assert Diff(first, gone).changed(dep)


def test_load_paths_reuses_the_resources_of_unchanged_files(tmp_path):
    same, edited, broken = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "c.yaml"
    same.write_text(ROUTE_CHANGE % 1)
    edited.write_text(POLICY)
    broken.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {ports: [{port: -1}]}\n")
    first = load_paths([tmp_path])
    edited.write_text(deny_paths("quickstart", "incremental-deny", "echo", "/root"))
    second = load_paths([tmp_path], reuse=first.per_file)
    fresh = load_paths([tmp_path])
    by_name = lambda result: {r.name: r for r in result.resources}  # noqa: E731
    assert by_name(second)["incremental-test"] is by_name(first)["incremental-test"]  # not parsed again
    assert by_name(second)["incremental-deny"] is not by_name(first)["incremental-deny"]
    assert by_name(second)["incremental-deny"] == by_name(fresh)["incremental-deny"]
    assert [d.render() for d in second.diagnostics] == [d.render() for d in fresh.diagnostics] and second.errors


def test_cached_mesh_view_text_is_the_fresh_views_json_and_keeps_unchanged_entries():
    import json

    from waypost.local.documents import mesh_view, mesh_view_texts_cached

    base = list(resources_of("quickstart"))
    first = build(base, PLAN)
    texts, cache = mesh_view_texts_cached(first, None)
    assert texts == {part: json.dumps(value, sort_keys=True) for part, value in mesh_view(first).items()}
    second = build(base + load_text(ROUTE_CHANGE % 1, "r.yaml").resources, PLAN, previous=address_assignments(first), reuse=first)
    again, kept = mesh_view_texts_cached(second, cache)
    assert again == {part: json.dumps(value, sort_keys=True) for part, value in mesh_view(second).items()}
    service = second.services[0]
    assert kept[id(service)][1] is cache[id(first.services[0])][1]  # the same Service object: the same text
    assert again["conditions"] != texts["conditions"] and "incremental-test" in again["conditions"]


def test_a_route_change_reuses_the_registry_and_a_policy_change_only_the_policy_statuses():
    base = list(resources_of("quickstart"))
    first = build(base, PLAN)
    routed_resources = base + load_text(ROUTE_CHANGE % 1, "r.yaml").resources
    routed = build(routed_resources, PLAN, previous=address_assignments(first), reuse=first)
    assert routed == build(routed_resources, PLAN, previous=address_assignments(first))
    # Namespaces, gateways, workloads and services are the same objects: their part of the build is kept.
    assert routed.registry_memo is first.registry_memo
    assert all(a is b for a, b in zip(routed.services, first.services)) and all(a is b for a, b in zip(routed.workloads, first.workloads))
    assert routed.status_memo["authz"][1] is first.status_memo["authz"][1]
    denied_resources = routed_resources + load_text(POLICY, "p.yaml").resources
    denied = build(denied_resources, PLAN, previous=address_assignments(routed), reuse=routed)
    assert denied == build(denied_resources, PLAN, previous=address_assignments(routed))
    assert denied.status_memo["authz"][1] is not routed.status_memo["authz"][1]
    assert denied.status_memo["extensions"][1] is routed.status_memo["extensions"][1]
    # A new pod is a registry input: the registry is built again (and still equals a build from scratch).
    pod = load_text("apiVersion: v1\nkind: Pod\nmetadata: {name: extra, namespace: quickstart, labels: {app: echo}}\nspec: {containers: [{name: c, image: waypost/echo}]}\n", "pod.yaml").resources
    grown = build(denied_resources + pod, PLAN, previous=address_assignments(denied), reuse=denied)
    assert grown.registry_memo is not denied.registry_memo
    assert grown == build(denied_resources + pod, PLAN, previous=address_assignments(denied))
    assert any(w.name == "extra" for w in grown.workloads)


def test_cached_resource_texts_are_the_documents_json_and_keep_only_what_a_status_needs():
    import json

    from waypost.local.documents import resource_documents, resource_texts_cached
    from waypost.local.manifests import track

    base = list(resources_of("quickstart"))
    first = build(base, PLAN)
    history = track({}, [], base, "t0")
    texts, cache = resource_texts_cached(base, first, "t0", history, None)
    docs = resource_documents(base, first, "t0", history, [])
    assert texts == [json.dumps(d, sort_keys=True) for d in docs]
    # The cache keeps each document's kind, name, namespace and status, and its text: not its spec.
    assert all(set(entry[3]) <= {"kind", "metadata", "status"} for entry in cache.documents.values())
    changed = base + load_text(ROUTE_CHANGE % 3, "r.yaml").resources
    second = build(changed, PLAN, previous=address_assignments(first))
    history2 = track(history, base, changed, "t1")
    again, _ = resource_texts_cached(changed, second, "t1", history2, cache)
    # Same as fresh documents written over the earlier ones (a condition that did not change keeps its time).
    assert again == [json.dumps(d, sort_keys=True) for d in resource_documents(changed, second, "t1", history2, docs)]
    assert sum(1 for t in again if any(t is old for old in texts)) >= len(base) - 3


def test_diff_answers_keyed_lookups_from_the_indexes_as_a_lookup_would():
    base = list(resources_of("quickstart"))
    first = build(base, PLAN)
    routed = build(base + load_text(ROUTE_CHANGE % 1, "r.yaml").resources, PLAN, previous=address_assignments(first), reuse=first)
    gone = build([r for r in base if not (r.KIND == "Service" and r.name == "echo-v2")], PLAN, previous=address_assignments(first), reuse=first)
    for new in (routed, gone):
        diff = Diff(first, new)
        keys = {s.key for s in first.services} | {s.key for s in new.services} | {"nowhere/none"}
        for key in keys:
            for dep in (("call", "service", (key,), ()), ("call", "service_identity", (key,), ())):
                before, after = getattr(first, dep[1])(key), getattr(new, dep[1])(key)
                assert diff.changed(dep) == (before != after), (dep, before, after)
            for port in (80, 81, 8080):
                dep = ("call", "routes_for", (key, port), ())
                assert diff.changed(dep) == (first.routes_for(key, port) != new.routes_for(key, port)), dep


def _random_mesh(rng, services: int, extra: dict[str, str]) -> list:
    """A mesh like bench/meshgen.py's (one waypoint, Services with a route and a policy each), plus `extra`
    documents by name; the random changes below edit `extra` and the per-Service knobs."""
    docs = [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: inc, labels: {istio.io/dataplane-mode: ambient}}\n",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: inc}\n"
        "spec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n",
    ]
    for d in range(3):
        docs.append(
            f"apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app{d}, namespace: inc}}\nspec:\n  replicas: {rng.choice([1, 2])}\n"
            f"  selector: {{matchLabels: {{app: app{d}}}}}\n  template:\n    metadata: {{labels: {{app: app{d}}}}}\n"
            f"    spec:\n      serviceAccountName: app{d}\n      containers: [{{name: app, image: nginx, ports: [{{containerPort: 8080}}]}}]\n"
        )
    for i in range(services):
        docs.append(
            f"apiVersion: v1\nkind: Service\nmetadata: {{name: svc{i}, namespace: inc, labels: {{istio.io/use-waypoint: waypoint}}}}\n"
            f"spec:\n  selector: {{app: app{i % 3}}}\n  ports: [{{name: http, port: 8080}}]\n"
        )
    docs += extra.values()
    # Each document parsed once: an unchanged one is the same object in every step, as in the supervisor.
    out = []
    for doc in docs:
        if doc not in _PARSED:
            _PARSED[doc] = load_text(doc, "mesh.yaml").resources
        out += _PARSED[doc]
    return out


_PARSED: dict[str, list] = {}


def _route(name: str, parent: str, prefix: str, backend: str) -> str:
    ref = '{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}' if parent == "waypoint" else f'{{group: "", kind: Service, name: {parent}, port: 8080}}'
    return (f"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: inc}}\nspec:\n"
            f"  parentRefs: [{ref}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n"
            f"    backendRefs: [{{name: {backend}, port: 8080}}]\n")


def _policy(name: str, service: str, path: str) -> str:
    return (f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: inc}}\nspec:\n"
            f"  targetRefs: [{{group: \"\", kind: Service, name: {service}}}]\n  action: ALLOW\n"
            f"  rules:\n  - to: [{{operation: {{paths: [\"{path}\"]}}}}]\n")


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_incremental_translation_through_random_changes_equals_a_fresh_one(seed, monkeypatch):
    """Random route, policy and Service changes, each built reusing the previous snapshot (as the supervisor
    does) and translated incrementally: the result equals a fresh translation, and the read index names
    exactly the waypoint sections whose reads changed."""
    import random

    from waypost.envoy import waypoint as waypoint_config

    from waypost.mesh import routes as route_attachment

    reassembled = []
    original = route_attachment._reassemble
    monkeypatch.setattr(route_attachment, "_reassemble", lambda *a: reassembled.append(1) or original(*a))
    rng = random.Random(seed)
    _PARSED.clear()
    services = 8
    extra = {f"r{i}": _route(f"r{i}", f"svc{i}", f"/p{i}", f"svc{i}") for i in range(services)}
    extra.update({f"p{i}": _policy(f"p{i}", f"svc{i}", f"/p{i}/*") for i in range(0, services, 2)})
    previous = None
    cache = None
    conflicted = False
    for step in range(24):
        if step:
            what = rng.choice(["route", "route", "new route", "drop", "policy", "waypoint route", "services", "grpc"])
            i = rng.randrange(services)
            if step in (2, 3):  # a GRPCRoute comes and goes on a port an unchanged HTTPRoute routes
                what, i = ("grpc", 1) if step == 2 else ("drop g1", 1)
            if what == "drop g1":
                extra.pop("g1", None)
            if what == "route":
                extra[f"r{i}"] = _route(f"r{i}", f"svc{i}", f"/q{step}", f"svc{rng.randrange(services)}")
            elif what == "new route":
                extra[f"n{step}"] = _route(f"n{step}", f"svc{i}", f"/n{step}", f"svc{i}")
            elif what == "drop" and extra:
                extra.pop(rng.choice(sorted(extra)))
            elif what == "policy":
                extra[f"p{i}"] = _policy(f"p{i}", f"svc{i}", f"/z{step}*")
            elif what == "grpc":  # takes the port from the HTTPRoutes there, which become Conflicted
                extra[f"g{i}"] = (f"apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g{i}, namespace: inc}}\nspec:\n"
                                  f"  parentRefs: [{{group: \"\", kind: Service, name: svc{i}, port: 8080}}]\n  rules:\n  - backendRefs: [{{name: svc{i}, port: 8080}}]\n")
            elif what == "waypoint route":
                extra["w"] = _route("w", "waypoint", f"/w{step}", f"svc{i}")
            else:
                services = rng.choice([services - 1, services + 1])
        resources = _random_mesh(random.Random(seed), services, extra)
        snapshot = build(resources, PLAN, previous=address_assignments(previous) if previous else None, reuse=previous)
        fresh = build(resources, PLAN, previous=address_assignments(previous) if previous else None)
        assert snapshot.routes == fresh.routes and snapshot.statuses == fresh.statuses, f"step {step}"
        conflicted = conflicted or any(c.reason == "Conflicted" for st in snapshot.statuses for _, cs in st.parents for c in cs)
        old_memos = cache.waypoint_memos if cache is not None else {}
        configs, new_cache = translate_incremental(snapshot, cache)
        assert _configs_json(configs) == _configs_json(translate(snapshot)), f"step {step}"
        if previous is not None:
            diff = Diff(previous, snapshot)
            for pid, memo in old_memos.items():
                stale = memo.reads.stale(diff)
                brute = {key for key, (_, deps, _) in memo.sections.items() if diff.any_changed(deps)}
                assert stale == brute, f"step {step}: {pid}"
        assert all(isinstance(m, waypoint_config.Memo) and m.reads is not None for m in new_cache.waypoint_memos.values())
        previous, cache = snapshot, new_cache
    assert reassembled  # some steps took the partial route assembly
    assert conflicted  # a GRPCRoute took an HTTPRoute's port in some step
