"""The set of resources a running mesh serves: its `up -f` manifests plus what `apply`/`delete` changed.

    running = compose(base, overlay)
      base     the resources of the `up -f` paths, re-read whenever those files change
      overlay  resources added or replaced by `waypost apply`, and tombstones left by `waypost delete`

The last writer wins, as with two people running `kubectl apply` against one cluster: an overlay entry
shadows the base only until the base itself changes that resource (`Overlay.forget`). So editing a
watched file always takes effect for the resources the edit touches, and an `apply` or `delete` stays in
force while the file leaves that resource alone.

The overlay is saved in the state directory (`applied.json`) so that a restarted supervisor rebuilds the
same set. Pure, apart from `save_overlay`/`load_overlay`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from waypost.api import KINDS, Resource
from waypost.api.diagnostics import Diagnostic, error
from waypost.api.meta import Source

from .state import write_json_atomic

Key = tuple[str, str, str]  # (kind, namespace, name), as `Resource.key`

OVERLAY_VERSION = 1


def content(resource: Resource) -> dict[str, Any]:
    """What a resource says, without where it was read from: equal contents mean "unchanged"."""
    return resource.model_dump(by_alias=True, exclude_none=True, mode="json")


def by_key(resources: Iterable[Resource]) -> dict[Key, Resource]:
    return {r.key: r for r in resources}


def changed_keys(old: Sequence[Resource], new: Sequence[Resource]) -> set[Key]:
    """Keys added, removed or whose content differs between two resource lists."""
    before, after = by_key(old), by_key(new)
    return {
        key
        for key in before.keys() | after.keys()
        if key not in before or key not in after or content(before[key]) != content(after[key])
    }


@dataclass(frozen=True)
class Overlay:
    applied: Mapping[Key, Resource] = field(default_factory=dict)  # in the order they were applied
    deleted: frozenset[Key] = frozenset()

    def apply(self, resources: Iterable[Resource]) -> Overlay:
        applied = dict(self.applied)
        deleted = set(self.deleted)
        for r in resources:
            applied.pop(r.key, None)  # re-applied resources move to the end, like a fresh write
            applied[r.key] = r
            deleted.discard(r.key)
        return Overlay(applied, frozenset(deleted))

    def delete(self, keys: Iterable[Key]) -> Overlay:
        keys = set(keys)
        return Overlay({k: r for k, r in self.applied.items() if k not in keys}, self.deleted | keys)

    def forget(self, keys: Iterable[Key]) -> Overlay:
        """The base changed these resources: its version is now the newest word on them."""
        keys = set(keys)
        return Overlay({k: r for k, r in self.applied.items() if k not in keys}, self.deleted - keys)

    def __bool__(self) -> bool:
        return bool(self.applied or self.deleted)


def compose(base: Sequence[Resource], overlay: Overlay) -> list[Resource]:
    """Base resources in file order (replaced in place when applied over), then newly applied ones."""
    out = [overlay.applied.get(r.key, r) for r in base if r.key not in overlay.deleted]
    present = {r.key for r in out}
    out.extend(r for key, r in overlay.applied.items() if key not in present and key not in overlay.deleted)
    return out


def cascade(keys: Iterable[Key], running: Sequence[Resource]) -> set[Key]:
    """`keys` plus everything in a deleted Namespace: deleting a Namespace deletes its contents, as in Kubernetes."""
    keys = set(keys)
    namespaces = {name for kind, _, name in keys if kind == "Namespace"}
    keys.update(r.key for r in running if r.NAMESPACED and r.namespace in namespaces)
    return keys


def resource_name(resource: Resource) -> str:
    """kubectl's `kind.group/name` (`httproute.gateway.networking.k8s.io/echo`, `service/echo`)."""
    kind = resource.KIND.lower()
    return f"{kind}.{resource.GROUP}/{resource.name}" if resource.GROUP else f"{kind}/{resource.name}"


def plural_name(resource: Resource) -> str:
    """kubectl's `kinds.group` as in its NotFound message (`httproutes.gateway.networking.k8s.io`)."""
    kind = resource.KIND.lower()
    plural = kind + ("es" if kind.endswith(("s", "x", "ch")) else "s")
    return f"{plural}.{resource.GROUP}" if resource.GROUP else plural


# -- history: creation time and generation, as the API server keeps them --------------------------------


@dataclass(frozen=True)
class ResourceHistory:
    created: str
    generation: int


def track(
    history: Mapping[Key, ResourceHistory], old: Sequence[Resource], new: Sequence[Resource], now: str
) -> dict[Key, ResourceHistory]:
    """New resources are created `now` at generation 1; a resource whose spec changed gets generation+1."""
    before = by_key(old)
    out: dict[Key, ResourceHistory] = {}
    for r in new:
        seen = history.get(r.key)
        if seen is None or r.key not in before:
            out[r.key] = ResourceHistory(now, 1)
        elif _spec(before[r.key]) != _spec(r):
            out[r.key] = ResourceHistory(seen.created, seen.generation + 1)
        else:
            out[r.key] = seen
    return out


def _spec(resource: Resource) -> Any:
    # Kubernetes bumps metadata.generation for spec changes only, not for label or annotation edits.
    return content(resource).get("spec")


# -- persistence ---------------------------------------------------------------------------------------


def save_overlay(path: Path, overlay: Overlay) -> None:
    write_json_atomic(
        path,
        {
            "version": OVERLAY_VERSION,
            "applied": [
                {"source": {"file": r.source.file, "line": r.source.line}, "resource": content(r)}
                for r in overlay.applied.values()
            ],
            "deleted": [list(key) for key in sorted(overlay.deleted)],
        },
    )


def load_overlay(path: Path) -> tuple[Overlay, list[Diagnostic]]:
    """The saved overlay; an absent file is an empty overlay. Entries that no longer validate are reported."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return Overlay(), []
    except (OSError, ValueError) as exc:
        return Overlay(), [error(str(path), 0, f"cannot read the applied resources: {exc}")]
    problems: list[Diagnostic] = []
    resources = []
    for index, entry in enumerate(data.get("applied", [])):
        doc = entry.get("resource", {})
        group, _, _ = str(doc.get("apiVersion", "")).rpartition("/")
        cls = KINDS.get((group, doc.get("kind")))
        source = Source(**entry.get("source", {"file": str(path), "line": 0}))
        if cls is None:
            problems.append(error(str(path), 0, f"applied[{index}]: kind {doc.get('kind')!r} is no longer known"))
            continue
        try:
            resources.append(cls.model_validate({**doc, "source": source}))
        except ValueError as exc:
            problems.append(error(str(path), 0, f"applied[{index}]: no longer valid: {exc}"))
    deleted = frozenset(tuple(k) for k in data.get("deleted", []) if isinstance(k, list) and len(k) == 3)
    return Overlay().apply(resources).delete(deleted), problems
