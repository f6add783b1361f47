"""The resource set of a running mesh: `up -f` manifests plus the apply/delete overlay, last writer wins."""

from __future__ import annotations

from waypost.api import load_text
from waypost.local.manifests import (
    Overlay,
    cascade,
    changed_keys,
    compose,
    load_overlay,
    plural_name,
    resource_name,
    save_overlay,
    track,
)


def resources(text: str, file: str = "m.yaml"):
    result = load_text(text, file)
    assert not result.errors, result.errors
    return result.resources


NS = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n"
SVC = "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: a}}\nspec: {{ports: [{{port: {port}}}]}}\n"
ROUTE = (
    "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: a}\n"
    "spec: {parentRefs: [{group: '', kind: Service, name: s}]}\n"
)


def svc(name: str = "s", port: int = 80, file: str = "m.yaml"):
    return resources(SVC.format(name=name, port=port), file)[0]


def keys(rs):
    return [r.key for r in rs]


def test_applied_resource_replaces_the_base_one_in_place():
    base = resources(NS) + [svc("s", 80), svc("t", 80)]
    running = compose(base, Overlay().apply([svc("s", 8080, "applied.yaml")]))
    assert keys(running) == keys(base)
    assert running[1].spec.ports[0].port == 8080


def test_new_applied_resources_come_after_the_base_in_apply_order():
    running = compose([svc("s")], Overlay().apply([svc("u")]).apply([svc("t")]))
    assert [r.name for r in running] == ["s", "u", "t"]


def test_delete_hides_a_base_resource_and_apply_brings_it_back():
    base = [svc("s"), svc("t")]
    overlay = Overlay().delete([("Service", "a", "s")])
    assert [r.name for r in compose(base, overlay)] == ["t"]
    assert [r.name for r in compose(base, overlay.apply([svc("s", 81)]))] == ["s", "t"]


def test_an_edit_of_the_base_wins_over_an_earlier_apply_of_the_same_resource():
    old_base = [svc("s", 80)]
    overlay = Overlay().apply([svc("s", 8080)]).delete([("Service", "a", "gone")])
    new_base = [svc("s", 9090)]
    after = compose(new_base, overlay.forget(changed_keys(old_base, new_base)))
    assert after[0].spec.ports[0].port == 9090


def test_an_edit_elsewhere_in_the_base_keeps_the_applied_version():
    old_base = [svc("s", 80), svc("t", 80)]
    overlay = Overlay().apply([svc("s", 8080)])
    new_base = [svc("s", 80), svc("t", 81)]
    after = compose(new_base, overlay.forget(changed_keys(old_base, new_base)))
    assert [r.spec.ports[0].port for r in after] == [8080, 81]


def test_changed_keys_ignores_where_a_resource_was_read_from():
    assert changed_keys([svc("s", file="one.yaml")], [svc("s", file="two.yaml")]) == set()
    assert changed_keys([svc("s")], [svc("s", 81), svc("t")]) == {("Service", "a", "s"), ("Service", "a", "t")}


def test_deleting_a_namespace_deletes_what_is_in_it():
    running = resources(NS) + [svc("s")] + resources(ROUTE)
    assert cascade({("Namespace", "", "a")}, running) == {
        ("Namespace", "", "a"), ("Service", "a", "s"), ("HTTPRoute", "a", "r"),
    }


def test_generation_counts_spec_changes_only():
    first = [svc("s", 80)]
    history = track({}, [], first, "t0")
    assert history[("Service", "a", "s")].generation == 1
    relabelled = resources(SVC.format(name="s", port=80).replace("namespace: a", "namespace: a, labels: {x: y}"))
    history = track(history, first, relabelled, "t1")
    assert history[("Service", "a", "s")].generation == 1
    history = track(history, relabelled, [svc("s", 81)], "t2")
    assert (history[("Service", "a", "s")].created, history[("Service", "a", "s")].generation) == ("t0", 2)


def test_overlay_survives_a_save_and_load(tmp_path):
    overlay = Overlay().apply(resources(ROUTE, "route.yaml") + [svc("s", 8080)]).delete([("Service", "a", "t")])
    save_overlay(tmp_path / "applied.json", overlay)
    loaded, problems = load_overlay(tmp_path / "applied.json")
    assert not problems
    assert loaded.deleted == overlay.deleted
    assert list(loaded.applied) == list(overlay.applied)
    assert loaded.applied[("HTTPRoute", "a", "r")].source.file == "route.yaml"
    assert loaded == overlay


def test_missing_overlay_file_is_an_empty_overlay(tmp_path):
    assert load_overlay(tmp_path / "applied.json") == (Overlay(), [])


def test_kubectl_style_names():
    (route,) = resources(ROUTE)
    assert resource_name(route) == "httproute.gateway.networking.k8s.io/r"
    assert plural_name(route) == "httproutes.gateway.networking.k8s.io"
    assert (resource_name(svc()), plural_name(svc())) == ("service/s", "services")
