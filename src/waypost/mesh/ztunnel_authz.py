"""The ztunnel reduction of an AuthorizationPolicy (istio-ambient-semantics.md §4.4).

Istio sends ztunnel L4 attributes only (`pilot/pkg/serviceregistry/ambient/authorization.go`), and
ztunnel evaluates them with its own rules (`src/rbac.rs`): a policy is a list of groups (one per rule);
a group matches when all its clauses match (no clauses: always); a clause matches when any of its
matches does; a match whose fields are all empty never matches. ALLOW rules that use an L7 attribute
are dropped whole (fail closed); DENY rules lose their L7 fields, and an L7 `when` becomes a clause that
can never match.
"""

from __future__ import annotations

from dataclasses import dataclass

from waypost.api.security import AuthorizationPolicy

L4_SOURCE = ("principals", "not_principals", "namespaces", "not_namespaces", "service_accounts", "not_service_accounts", "ip_blocks", "not_ip_blocks")
L4_OPERATION = ("ports", "not_ports")
L4_WHEN = {
    "source.ip": "ip_blocks",
    "source.namespace": "namespaces",
    "source.principal": "principals",
    "destination.ip": "destination_ips",
    "destination.port": "ports",
}
SOURCE_SIDE = {"principals", "not_principals", "namespaces", "not_namespaces", "service_accounts", "not_service_accounts", "ip_blocks", "not_ip_blocks"}


@dataclass(frozen=True)
class Match:
    """Populated fields are ANDed; each field's list is ORed (not_*: must match none)."""

    fields: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def source_side(self) -> bool:
        return all(name in SOURCE_SIDE for name, _ in self.fields)


@dataclass(frozen=True)
class Clause:
    matches: tuple[Match, ...]  # empty: can never match


@dataclass(frozen=True)
class Group:
    clauses: tuple[Clause, ...]  # empty: always matches


@dataclass(frozen=True)
class ZtunnelPolicy:
    namespace: str
    name: str
    action: str
    groups: tuple[Group, ...]


def _match(obj, names: tuple[str, ...]) -> Match | None:
    fields = tuple((n, tuple(getattr(obj, n))) for n in names if getattr(obj, n))
    return Match(fields) if fields else None  # an all-empty match never matches: leave it out


def _when_clause(condition) -> Clause:
    field = L4_WHEN.get(condition.key)
    if field is None:
        return Clause(())  # an L7 condition: never matches at ztunnel
    fields = []
    if condition.values:
        fields.append((field, tuple(condition.values)))
    if condition.not_values:
        fields.append((f"not_{field}", tuple(condition.not_values)))
    return Clause((Match(tuple(fields)),))


def reduce_policy(policy: AuthorizationPolicy) -> ZtunnelPolicy:
    from .policies import has_http_fields

    groups = []
    for rule in policy.spec.rules or []:
        if policy.spec.action == "ALLOW" and has_http_fields(rule):
            continue  # the whole rule is dropped: fail closed
        clauses = []
        if rule.to is not None:
            clauses.append(Clause(tuple(m for t in rule.to if (m := _match(t.operation, L4_OPERATION)))))
        if rule.from_ is not None:
            clauses.append(Clause(tuple(m for f in rule.from_ if (m := _match(f.source, L4_SOURCE)))))
        clauses.extend(_when_clause(c) for c in rule.when)
        if any(not clause.matches for clause in clauses):
            continue  # a clause that can never match makes the group (rule) a no-op
        groups.append(Group(tuple(clauses)))
    return ZtunnelPolicy(policy.namespace, policy.name, policy.spec.action, tuple(groups))
