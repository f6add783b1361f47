"""What a computation read from a MeshSnapshot, so that its result can be reused for the next snapshot.

Translation is a pure function of the snapshot, but one proxy (or one service's part of a waypoint) reads
only a little of it. `Recorder` stands in for the snapshot while such a part is computed and notes every
read: a field (`snapshot.services`) or a lookup (`snapshot.service("ns/name")`, `snapshot.workload(key)`,
...). `Diff` then tells, for a newer snapshot, whether any of those reads would return something else. If
none would, the part's earlier result is still exact, whatever the code that computed it does with what
it read, so no hand-written list of dependencies can go stale.

Values are compared with `==`: snapshot values are frozen dataclasses, tuples and API models, compared
by content. A read whose value cannot be compared that way (an index object, an unhashable argument)
counts as changed every time, which is always safe.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .model import MeshSnapshot

# Derived attributes of MeshSnapshot (indexes) → the field they are computed from.
DERIVED: dict[str, str] = {
    "policy_chains": "authorization_policies",
    "authn_chains": "request_authentications",
    "extension_chains": "extensions",
    "services_of_waypoint": "services",
}
# The policy field behind each kind of `MeshSnapshot.waypoint_chain`.
CHAIN_FIELDS: dict[str, str] = {"authz": "authorization_policies", "authn": "request_authentications", "extensions": "extensions"}
_FIELDS = frozenset(f.name for f in dataclasses.fields(MeshSnapshot))
VOLATILE = ("volatile",)  # a read that must be treated as changed every time

Dep = tuple


class Recorder:
    """A read-only MeshSnapshot stand-in that notes what is read (`deps`)."""

    __slots__ = ("_snapshot", "deps")

    def __init__(self, snapshot: MeshSnapshot) -> None:
        object.__setattr__(self, "_snapshot", snapshot)
        object.__setattr__(self, "deps", set())

    def __getattr__(self, name: str) -> Any:
        snapshot = object.__getattribute__(self, "_snapshot")
        deps = object.__getattribute__(self, "deps")
        value = getattr(snapshot, name)
        if name not in _FIELDS and inspect.ismethod(value):
            def call(*args: Any, **kwargs: Any) -> Any:
                dep = ("call", name, args, tuple(sorted(kwargs.items())))
                try:
                    hash(dep)
                except TypeError:
                    dep = VOLATILE
                deps.add(dep)
                return value(*args, **kwargs)

            return call
        if name in _FIELDS:
            deps.add(("attr", name))
        elif name in DERIVED:
            deps.add(("attr", DERIVED[name]))
        else:
            deps.add(VOLATILE)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


# Lookups that are pure functions of the `routes_for` entry of their (service, port) arguments.
_ROUTE_READS = frozenset({"port_has_fault", "routed_by_grpc"})


def _inputs(dep: Dep) -> list[Dep] | None:
    """Reads that determine the answer of lookup `dep`, for lookups that are costly to run on both snapshots
    and that many parts make: when none of these changed, neither did the answer. None: no such shortcut.

    `waypoint_chain(kind, waypoint, service)` is a pure function of that kind's policies, the root
    namespace and the service's kind, namespace and name (`policies.TargetIndex.chain`);
    `destination_rule(...)` of the DestinationRules and the root namespace (`destinations`);
    `port_has_fault` and `routed_by_grpc` of that port's routes."""
    if dep[0] != "call" or dep[3]:
        return None
    if dep[1] == "destination_rule":
        return [("attr", "destination_rules"), ("attr", "root_namespace")]
    if dep[1] == "service_identity" and len(dep[2]) == 1:
        return [("call", "service", dep[2], ())]  # read from the service: unchanged with it
    if dep[1] in _ROUTE_READS and len(dep[2]) == 2:
        return [("call", "routes_for", dep[2], ())]
    if dep[1] != "waypoint_chain" or len(dep[2]) != 3:
        return None
    kind, _waypoint, service = dep[2]
    field = CHAIN_FIELDS.get(kind)
    if field is None:
        return None
    inputs: list[Dep] = [("attr", field), ("attr", "root_namespace")]
    if service is not None:
        inputs.append(("call", "service_identity", (service,), ()))
    return inputs


def _read(snapshot: MeshSnapshot, dep: Dep) -> Any:
    if dep[0] == "attr":
        return getattr(snapshot, dep[1])
    _, name, args, kwargs = dep
    return getattr(snapshot, name)(*args, **dict(kwargs))


# Keyed lookups that are a `get` on one of the snapshot's indexes (`MeshSnapshot.service(key)` is
# `_services_by_key.get(key)`, ...): lookup name -> (the index, how many arguments make its key). A recorded
# call with another number of arguments is not treated as keyed.
_INDEXED: dict[str, tuple[str, int]] = {
    "service": ("_services_by_key", 1),
    "service_by_fqdn": ("_services_by_fqdn", 1),
    "workload": ("_workloads_by_key", 1),
    "routes_for": ("_routes_by_port", 2),
    "l4routes_for": ("_l4routes_by_port", 2),
}
_LOOKUPS_OF_INDEX: dict[str, tuple[str, ...]] = {}
for _name, (_index, _) in _INDEXED.items():
    _LOOKUPS_OF_INDEX[_index] = (*_LOOKUPS_OF_INDEX.get(_index, ()), _name)


def _keyed(dep: Dep) -> tuple[str, Any] | None:
    """(the index, the key) a keyed lookup reads (`_INDEXED`), or None when `dep` is not one."""
    if dep[0] != "call" or dep[3] or dep[1] not in _INDEXED:
        return None
    index, arity = _INDEXED[dep[1]]
    if len(dep[2]) != arity:
        return None
    return index, dep[2][0] if arity == 1 else dep[2]


def _keyed_index(dep: Dep) -> str | None:
    keyed = _keyed(dep)
    return None if keyed is None else keyed[0]


def _lookup_dep(name: str, key: Any) -> Dep:
    """The recorded read of lookup `name` whose arguments make index key `key` (the inverse of `_keyed`)."""
    return ("call", name, key if _INDEXED[name][1] > 1 else (key,), ())


def primitives(dep: Dep) -> tuple:
    """The reads whose answers decide `dep`'s: itself, or, for a lookup with `_inputs`, theirs (recursively;
    possibly repeated). If none of them changed between two snapshots, neither did `dep` (that is what
    `_inputs` promises)."""
    if _keyed_index(dep) is not None:
        return (dep,)
    inputs = _inputs(dep)
    if inputs is None:
        return (dep,)
    return tuple(p for d in inputs for p in primitives(d))


def _members(value: Any) -> Iterable:
    """A ReadIndex value as an iterable: most reads are made by one part and decide one read, so a single
    member is stored as itself (a frozenset costs ~200 bytes; a waypoint of 1000 Services has ~9000 reads)."""
    return value if isinstance(value, frozenset) else (value,)


def _packed(members: set) -> Any:
    return next(iter(members)) if len(members) == 1 else frozenset(members)


@dataclass(frozen=True)
class ReadIndex:
    """Who read what, inverted: for each read, the parts (by key) that made it, and for each primitive read
    (`primitives`), the reads it decides. With it, the parts a new snapshot may change are found from what
    changed (a few index keys, a field) instead of by checking every read of every part.

    Values are never mutated: `updated` copies what it changes, so an older index stays valid."""

    readers: Mapping[Dep, Any] = field(default_factory=dict)  # read -> keys of the parts that made it (`_members`)
    decides: Mapping[Dep, Any] = field(default_factory=dict)  # primitive read -> reads it decides (`_members`)
    plain: frozenset = frozenset()  # primitive reads that are not keyed lookups: compared one by one

    def updated(self, removed: Mapping[str, Iterable[Dep]], added: Mapping[str, Iterable[Dep]]) -> ReadIndex:
        """This index after parts `removed` (key -> their reads) were dropped and parts `added` were made."""
        readers, decides, plain = dict(self.readers), dict(self.decides), set(self.plain)
        touched: dict[Dep, set] = {}
        for change, sign in ((removed, False), (added, True)):
            for key, deps in change.items():
                for d in deps:
                    keys = touched.get(d)
                    if keys is None:
                        keys = touched[d] = set(_members(readers[d])) if d in readers else set()
                    (keys.add if sign else keys.discard)(key)
        deciding: dict[Dep, set] = {}  # primitive -> the reads it decides, copied once when first changed
        for d, keys in touched.items():
            was_read = d in readers
            if keys:
                readers[d] = _packed(keys)
            elif was_read:
                del readers[d]
            if bool(keys) == was_read:
                continue  # still read (or still not): what decides it is already recorded
            for p in primitives(d):
                deps = deciding.get(p)
                if deps is None:
                    deps = deciding[p] = set(_members(decides[p])) if p in decides else set()
                (deps.add if keys else deps.discard)(d)
        for p, deps in deciding.items():
            if deps:
                decides[p] = _packed(deps)
                if _keyed_index(p) is None:
                    plain.add(p)
            else:
                decides.pop(p, None)
                plain.discard(p)
        return ReadIndex(readers, decides, frozenset(plain))

    def stale(self, diff: Diff) -> set[str] | None:
        """Keys of the parts some read of which answers differently in `diff.new` than in `diff.old`: exactly
        the parts for which `diff.any_changed(their reads)` holds. None: every part (no earlier snapshot)."""
        if diff.old is None:
            return None
        if diff.old is diff.new:
            return set()
        candidates: set = set()
        for p in self.plain:
            if diff.changed(p):
                candidates.update(_members(self.decides[p]))
        for index, names in _LOOKUPS_OF_INDEX.items():
            for key in diff.index_changes(index):
                for name in names:
                    dep = _lookup_dep(name, key)
                    if dep in self.decides:
                        candidates.update(_members(self.decides[dep]))
        out: set[str] = set()
        for d in candidates:
            if d in self.readers and diff.changed(d):
                out.update(_members(self.readers[d]))
        return out


def _changed_keys(old: dict, new: dict) -> set:
    """The keys whose values differ between two indexes, in one pass (equal values are mostly the very
    same objects: `build(..., reuse=)` interns them)."""
    out = {k for k, v in new.items() if (w := old.get(k, _ABSENT)) is not v and w != v}
    out.update(k for k in old if k not in new)
    return out


_ABSENT = object()


class Diff:
    """Which reads give a different answer in `new` than in `old` (each read compared once, then remembered).

    Lookups by key on the snapshot's indexes (`_INDEXED`) are answered from one comparison of the two
    indexes rather than by two lookups each: a waypoint of 1000 services has some 10,000 such reads, and a
    change touches a handful of keys."""

    def __init__(self, old: MeshSnapshot | None, new: MeshSnapshot) -> None:
        self.old = old
        self.new = new
        self._changed: dict[Dep, bool] = {}
        self._index_changes: dict[str, set] = {}

    def _indexed(self, dep: Dep) -> bool | None:
        """The answer for a keyed lookup on an index, or None when `dep` is not one."""
        keyed = _keyed(dep)
        return None if keyed is None else keyed[1] in self.index_changes(keyed[0])

    def index_changes(self, index: str) -> set:
        """The keys of snapshot index `index` (`_INDEXED`) whose values differ between the two snapshots."""
        changes = self._index_changes.get(index)
        if changes is None:
            source = MeshSnapshot._INDEX_SOURCES.get(index)
            if source is not None and getattr(self.old, source) is getattr(self.new, source):
                changes = self._index_changes[index] = set()  # the same tuple: nothing to compare (or index)
            else:
                changes = self._index_changes[index] = _changed_keys(getattr(self.old, index), getattr(self.new, index))
        return changes

    def changed(self, dep: Dep) -> bool:
        known = self._changed.get(dep)
        if known is not None:
            return known
        if dep == VOLATILE or self.old is None:
            result = True
        elif self.old is self.new:
            result = False
        elif (indexed := self._indexed(dep)) is not None:
            result = indexed
        elif (inputs := _inputs(dep)) is not None and not any(self.changed(d) for d in inputs):
            result = False
        else:
            try:
                before, after = _read(self.old, dep), _read(self.new, dep)
                result = not (before is after or before == after)
            except Exception:  # noqa: BLE001 - a read that fails on either side cannot be vouched for
                result = True
        self._changed[dep] = result
        return result

    def any_changed(self, deps: Iterable[Dep]) -> bool:
        # A loop rather than any(generator): this runs for every dependency of every section of every
        # proxy on each change, and most answers are already known.
        known = self._changed
        for d in deps:
            answer = known.get(d)
            if answer is None:
                answer = self.changed(d)
            if answer:
                return True
        return False
