"""Nodes and their ztunnel addresses: a node keeps its address while it exists, whatever nodes come and go."""

from __future__ import annotations

from waypost.api import load_text
from waypost.envoy import translate
from waypost.mesh.addresses import AddressPlan
from waypost.mesh.build import address_assignments, build

from tests.manifests import ambient_namespace, client


def pods_on(*nodes: str) -> str:
    return ambient_namespace("n") + "".join(client("n", f"on-{node}", node=node) for node in nodes)


def snapshot(text: str, previous=None):
    loaded = load_text(text, "nodes.yaml")
    assert not loaded.errors, [d.render() for d in loaded.errors]
    return build(loaded.resources, AddressPlan(64), previous)


def ztunnels(snap) -> dict[str, str]:
    return {pid: config.address for pid, config in translate(snap).items() if pid.startswith("ztunnel~")}


def test_a_node_added_later_does_not_move_the_others():
    first = snapshot(pods_on("node-1", "node-2"))
    before = ztunnels(first)
    assert list(first.nodes) == ["node-0", "node-1", "node-2"]
    assert len(set(before.values())) == 3
    second = snapshot(pods_on("node-1", "node-2", "node-10"), address_assignments(first))  # sorts before node-2
    after = ztunnels(second)
    assert {k: after[k] for k in before} == before
    assert after["ztunnel~node-10"] not in before.values()


def test_a_removed_node_frees_its_address_for_a_new_one():
    first = snapshot(pods_on("node-1", "node-2"))
    second = snapshot(pods_on("node-2"), address_assignments(first))
    assert ztunnels(second)["ztunnel~node-2"] == ztunnels(first)["ztunnel~node-2"]
    third = snapshot(pods_on("node-2", "node-9"), address_assignments(second))
    assert ztunnels(third)["ztunnel~node-9"] == ztunnels(first)["ztunnel~node-1"]


def test_the_registry_is_reused_when_only_node_addresses_are_passed_along():
    """Node entries in the address assignments must not defeat build's registry reuse (the fast path of a
    route change)."""
    loaded = load_text(pods_on("node-1"), "nodes.yaml")
    first = build(loaded.resources, AddressPlan(64))
    second = build(loaded.resources, AddressPlan(64), address_assignments(first), reuse=first)
    assert second.registry_memo is first.registry_memo
    assert second.ztunnel_address("node-1") == first.ztunnel_address("node-1")
