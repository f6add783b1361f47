"""Which DestinationRule a proxy applies to a host, as Istio's PushContext.destinationRule picks it.

Lookup for a proxy (here: a waypoint) in namespace P and a service of namespace S:
1. rules in P itself;
2. rules in S that are exported to P (`exportTo`: empty or `*` = everywhere, `.` = own namespace);
3. rules in the root namespace exported to P.
Within one namespace, an exact host beats a wildcard (`*.example.com`), and the longer wildcard beats the
shorter. Several rules for the same host in one namespace are merged (Istio's mergeDestinationRule): the
oldest rule's trafficPolicy is used (a later one's only when the older has none), and subsets are
collected in age order, a later subset with a name already taken being dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

from waypost.api.destinationrule import DestinationRule, DestinationRuleSpec

from .vsroutes import exported_to, host_matches, resolve_host


class DestinationRuleIndex:
    def __init__(self, rules: Sequence[DestinationRule], root_namespace: str) -> None:
        self.rules = rules
        self.root = root_namespace
        self.by_namespace: dict[str, list[tuple[str, DestinationRule]]] = {}
        for rule in rules:  # oldest first
            self.by_namespace.setdefault(rule.namespace, []).append((resolve_host(rule.spec.host, rule.namespace), rule))
        self._cache: dict[tuple[str, str, str], DestinationRuleSpec | None] = {}

    def lookup(self, host: str, proxy_namespace: str, service_namespace: str) -> DestinationRuleSpec | None:
        key = (host, proxy_namespace, service_namespace)
        if key not in self._cache:
            self._cache[key] = self._lookup(host, proxy_namespace, service_namespace)
        return self._cache[key]

    def _lookup(self, host: str, proxy_namespace: str, service_namespace: str) -> DestinationRuleSpec | None:
        for namespace, local in ((proxy_namespace, True), (service_namespace, False), (self.root, False)):
            found = self._in_namespace(namespace, host, proxy_namespace, local)
            if found is not None:
                return found
        return None

    def _in_namespace(self, namespace: str, host: str, proxy_namespace: str, local: bool) -> DestinationRuleSpec | None:
        matching = [
            (pattern, rule)
            for pattern, rule in self.by_namespace.get(namespace, ())
            if host_matches(pattern, host) and (local or exported_to(rule.spec.export_to, rule.namespace, proxy_namespace))
        ]
        if not matching:
            return None
        exact = [r for p, r in matching if p == host]
        if exact:
            chosen = exact
        else:
            longest = max(len(p) for p, _ in matching)
            chosen = [r for p, r in matching if len(p) == longest]
        return merge([r.spec for r in chosen])


def merge(specs: list[DestinationRuleSpec]) -> DestinationRuleSpec:
    if len(specs) == 1:
        return specs[0]
    first = specs[0]
    policy = next((s.traffic_policy for s in specs if s.traffic_policy is not None), None)
    subsets = []
    names: set[str] = set()
    for spec in specs:
        for subset in spec.subsets:
            if subset.name not in names:
                names.add(subset.name)
                subsets.append(subset)
    return first.model_copy(update={"traffic_policy": policy, "subsets": subsets})
