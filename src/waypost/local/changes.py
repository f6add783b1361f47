"""Live configuration: `apply`, `delete` and edits of the watched manifests, applied to a running mesh.

Every change goes the same way, one at a time:
1. load and validate: any located error rejects the whole change, and nothing changes;
2. compose the new resource set (`manifests.py`) and build it, keeping every address that exists
   (`build(previous=address_assignments(...))`), then translate it;
3. roll it out (`rollout.py`): only proxies whose config changed get a push, and the change is done when
   each of them has ACKed it and new workloads listen. If any proxy rejects its config, the previous
   configuration is rolled back out and the change is reported as failed;
4. commit: the new set, overlay, generation and history are what runs; resources.json, applied.json and
   state.json are rewritten.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from waypost import collector
from waypost.api import Diagnostic, Resource, load_paths
from waypost.envoy import (
    TranslationCache,
    translate,
    translate_incremental,
    with_patch_status,
)
from waypost.envoy import translate as _full_translate
from waypost.mesh import MeshSnapshot, address_assignments, build
from waypost.mesh.model import Condition

from .blocks import privileged_ports_problem
from .control import diagnostic_to_json
from .manifests import (
    Key,
    Overlay,
    ResourceHistory,
    by_key,
    cascade,
    changed_keys,
    compose,
    content,
    plural_name,
    resource_name,
    save_overlay,
    track,
)
from .rollout import roll_out
from .workloads import echo_workloads

if TYPE_CHECKING:
    from .supervisor import Supervisor

log = logging.getLogger("waypost.local")

CHANGE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Running:
    """What the mesh runs: the base and overlay it was composed from, and what they built."""

    base: Sequence[Resource]
    overlay: Overlay
    resources: Sequence[Resource]
    snapshot: MeshSnapshot
    generation: int
    history: dict[Key, ResourceHistory]
    translation: TranslationCache | None = None  # what translating `snapshot` left for the next change


@dataclass
class Outcome:
    """The answer to one change: what the client prints, and what the supervisor logs."""

    ok: bool = True
    results: list[dict[str, str]] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    generation: int = 0
    proxies: dict[str, list[str]] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "results": self.results,
            "diagnostics": [diagnostic_to_json(d) for d in self.diagnostics],
            "errors": self.errors,
            "generation": self.generation,
            "proxies": self.proxies,
            "timings_ms": self.timings_ms,
        }


def _result(resource: Resource, action: str) -> dict[str, str]:
    return {"resource": resource_name(resource), "kind": resource.KIND, "namespace": resource.namespace if resource.NAMESPACED else "", "name": resource.name, "action": action}


class Changes:
    """Applies changes to the running mesh of `supervisor`, one at a time (the lock is a guard: the
    supervisor already runs every change on its own thread)."""

    def __init__(self, supervisor: Supervisor, watched_files: dict[str, tuple[str, Any]] | None = None) -> None:
        self._sup = supervisor
        self._lock = threading.Lock()
        # The watched manifests as last loaded, per file (`LoadResult.per_file`): a reload parses only the
        # files that changed.
        self._watched_files = watched_files or {}

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """A control-channel request → its answer (see `control.py`)."""
        op = request.get("op")
        paths = [str(p) for p in request.get("paths", [])]
        if op == "ping":
            running = self._sup.running
            return {"ok": True, "generation": running.generation if running else 0}
        if op == "apply":
            return self.apply(paths, dry_run=bool(request.get("dry_run"))).as_json()
        if op == "delete":
            return self.delete(paths, ignore_not_found=bool(request.get("ignore_not_found")), dry_run=bool(request.get("dry_run"))).as_json()
        return {"ok": False, "errors": [f"unknown control operation {op!r}"]}

    # -- the three sources of change -------------------------------------------------------------------
    def apply(self, paths: Sequence[str], dry_run: bool = False) -> Outcome:
        started = time.monotonic()
        with self._lock:
            loaded = load_paths(paths)
            if loaded.errors:
                return Outcome(ok=False, diagnostics=loaded.diagnostics)
            problem = privileged_ports_problem(loaded.resources)
            if problem:
                return Outcome(ok=False, diagnostics=loaded.diagnostics, errors=[f"error: {problem}"])
            running = self._current()
            present = by_key(running.resources)
            results = []
            for r in loaded.resources:
                before = present.get(r.key)
                action = "created" if before is None else "unchanged" if content(before) == content(r) else "configured"
                results.append(_result(r, action))
            outcome = self._change(running.base, running.overlay.apply(loaded.resources), "apply", dry_run, started)
            outcome.diagnostics = loaded.diagnostics  # warnings (skipped foreign kinds)
            if outcome.ok:
                outcome.results = results
            return outcome

    def delete(self, paths: Sequence[str], ignore_not_found: bool = False, dry_run: bool = False) -> Outcome:
        started = time.monotonic()
        with self._lock:
            loaded = load_paths(paths)
            if loaded.errors:
                return Outcome(ok=False, diagnostics=loaded.diagnostics)
            running = self._current()
            present = by_key(running.resources)
            found = [r for r in loaded.resources if r.key in present]
            missing = [r for r in loaded.resources if r.key not in present]
            keys = cascade({r.key for r in found}, running.resources)
            outcome = self._change(running.base, running.overlay.delete(keys), "delete", dry_run, started)
            outcome.diagnostics = loaded.diagnostics
            if not outcome.ok:
                return outcome
            outcome.results = [_result(r, "deleted") for r in found]
            if missing and not ignore_not_found:
                outcome.ok = False
                outcome.errors = [
                    f'Error from server (NotFound): error when deleting "{r.source.file}": {plural_name(r)} "{r.name}" not found'
                    for r in missing
                ]
            return outcome

    def reload(self, paths: Sequence[str]) -> Outcome:
        """The watched manifests changed: the resources they changed take effect, the others stay."""
        started = time.monotonic()
        with self._lock:
            loaded = load_paths(paths, reuse=self._watched_files)
            self._watched_files = loaded.per_file
            for d in loaded.warnings:
                log.warning("%s", d.render())
            if loaded.errors:
                outcome = Outcome(ok=False, diagnostics=loaded.errors)
            else:
                running = self._current()
                edited = changed_keys(running.base, loaded.resources)
                outcome = self._change(loaded.resources, running.overlay.forget(edited), "watch", False, started)
            if outcome.ok:
                self._sup.last_error = None
                log.info("manifests changed: now at generation %d", outcome.generation)
            else:
                rendered = [d.render() for d in outcome.diagnostics if d.severity.value == "Error"] + outcome.errors
                for line in rendered:
                    log.error("manifests changed but were not applied: %s", line)
                self._sup.last_error = {
                    "source": "watch",
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "message": "the changed manifests were rejected; the mesh keeps running its previous configuration",
                    "errors": rendered,
                    "diagnostics": [diagnostic_to_json(d) for d in outcome.diagnostics],
                }
            self._sup.write_state()
            return outcome

    # -- the change itself -----------------------------------------------------------------------------
    def _current(self) -> Running:
        assert self._sup.running is not None
        return self._sup.running

    def refresh_keys(self) -> Outcome:
        """Re-translates the running resources because fetched JWKS changed (nothing the user wrote did)."""
        with self._lock:
            running = self._current()
            return self._change(running.base, running.overlay, "jwks refresh", False, time.monotonic(), force=True)

    def _change(self, base: Sequence[Resource], overlay: Overlay, source: str, dry_run: bool, started: float, force: bool = False) -> Outcome:
        # The cyclic collector waits until the change is done: building, translating, encoding and writing
        # the status of 1000 routes allocate millions of objects, and its full passes over the heap were a
        # large share of each step (waypost.collector).
        with collector.paused():
            return self._change_now(base, overlay, source, dry_run, started, force)

    def _change_now(self, base: Sequence[Resource], overlay: Overlay, source: str, dry_run: bool, started: float, force: bool) -> Outcome:
        sup = self._sup
        assert sup.fleet is not None
        running = self._current()
        resources = compose(base, overlay)
        outcome = Outcome(generation=running.generation)
        if not force and not _changed_keys(running.resources, resources):
            # Nothing that runs changes (an unchanged apply, a comment edit): only the bookkeeping moves.
            if not dry_run and (overlay != running.overlay or list(base) != list(running.base)):
                self._commit(Running(base, overlay, running.resources, running.snapshot, running.generation, running.history, running.translation), overlay != running.overlay)
            outcome.timings_ms["total"] = _ms(started)
            return outcome
        try:
            snapshot = sup.wasm.attach(sup.jwks.attach(build(resources, running.snapshot.plan, previous=address_assignments(running.snapshot), mesh_config=sup.mesh_config, reuse=running.snapshot)))
            if translate is _full_translate:
                configs, translation = translate_incremental(snapshot, running.translation)
            else:  # `translate` was replaced (the seam tests/e2e/test_live_rollback.py uses): no cache
                configs, translation = translate(snapshot), None
            snapshot = with_patch_status(snapshot, configs)
        except Exception as exc:  # noqa: BLE001 - e.g. AddressSpaceExhausted; the running config must stay
            log.exception("cannot build the changed configuration")
            return Outcome(ok=False, errors=[f"cannot build the mesh from the changed resources: {exc}"], generation=running.generation)
        outcome.timings_ms["compute"] = _ms(started)
        if dry_run:
            outcome.timings_ms["total"] = _ms(started)
            return outcome
        generation = running.generation + 1
        fleet, host = sup.fleet, sup.workloads
        old_configs, old_generations, old_echo = dict(fleet.configs), dict(fleet.generations), list(host.spec or [])
        pushed = time.monotonic()
        rollout = roll_out(fleet, host, configs, echo_workloads(snapshot), {pid: generation for pid in configs}, pushed + CHANGE_TIMEOUT, sup.stopping)
        outcome.timings_ms["rollout"] = _ms(pushed)
        outcome.timings_ms.update({f"rollout {k}": v for k, v in rollout.timings_ms.items()})
        outcome.proxies = {"started": rollout.started, "updated": rollout.updated, "stopped": rollout.stopped}
        if rollout.error:
            outcome.ok = False
            outcome.errors = [f"the change was not applied: {rollout.error}"]
            suspects = _changed_patches(running.resources, resources)
            if suspects:
                outcome.errors.append(
                    "the rejected config carries patches changed by this update: " + ", ".join(suspects)
                    + " (EnvoyFilter/WasmPlugin/TrafficExtension); the running config stays"
                )
            if not sup.stopping.is_set():
                back = roll_out(fleet, host, old_configs, old_echo, old_generations, time.monotonic() + CHANGE_TIMEOUT, sup.stopping)
                outcome.errors.append(
                    f"restoring the previous configuration failed too: {back.error}" if back.error else "the previous configuration was restored"
                )
            log.error("%s change failed: %s", source, "; ".join(outcome.errors))
            if suspects:
                # The rejected versions never ran; the running ones carry the news in their status.
                self._commit(dataclasses.replace(running, snapshot=_mark_rejected(running.snapshot, suspects, rollout.error)), False)
            sup.write_state()
            return outcome
        committing = time.monotonic()
        history = _track(running.history, running.resources, resources, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self._commit(Running(base, overlay, resources, snapshot, generation, history, translation), overlay != running.overlay)
        outcome.timings_ms["commit"] = _ms(committing)
        outcome.generation = generation
        outcome.timings_ms["total"] = _ms(started)
        log.info(
            "%s: generation %d in %.0f ms (started %s, updated %s, stopped %s)", source, generation,
            outcome.timings_ms["total"], rollout.started, rollout.updated, rollout.stopped,
        )
        return outcome

    def _commit(self, running: Running, overlay_changed: bool) -> None:
        if overlay_changed:
            save_overlay(self._sup.state.applied_file, running.overlay)
        self._sup.publish(running)
        self._sup.write_state()


def _changed_keys(old: Sequence[Resource], new: Sequence[Resource]) -> set[Key]:
    """`manifests.changed_keys`, without dumping the resources that are the very same objects on both sides
    (after one `apply`, all but the applied ones): comparing dumps of the whole mesh cost O(mesh) per change."""
    old_ids, new_ids = {id(r) for r in old}, {id(r) for r in new}
    return changed_keys([r for r in old if id(r) not in new_ids], [r for r in new if id(r) not in old_ids])


def _track(history: dict[Key, ResourceHistory], old: Sequence[Resource], new: Sequence[Resource], now: str) -> dict[Key, ResourceHistory]:
    """`manifests.track`, keeping the entry of every resource that is the very same object as before without
    comparing its spec (which dumps it); same result."""
    old_ids = {id(r) for r in old}
    keys = [r.key for r in new]
    same = {key for key, r in zip(keys, new) if id(r) in old_ids and key in history}
    others = [r for key, r in zip(keys, new) if key not in same]
    wanted = {r.key for r in others}
    tracked = track(history, [r for r in old if id(r) not in old_ids or r.key in wanted], others, now) if others else {}
    return {key: history[key] if key in same else tracked[key] for key in keys}


def _mark_rejected(snapshot: MeshSnapshot, suspects: list[str], error: str) -> MeshSnapshot:
    """A `LastUpdateRejected` condition on each running resource named in `suspects` ("Kind ns/name")."""
    condition = Condition("LastUpdateRejected", "True", "EnvoyRejected", f"an update of this resource was rejected and rolled back: {error}")
    wanted = {tuple(s.replace("/", " ").split(" ")) for s in suspects}  # (kind, ns, name)
    statuses = [
        dataclasses.replace(st, conditions=tuple(c for c in st.conditions if c.type != condition.type) + (condition,))
        if (st.kind, st.namespace, st.name) in wanted else st
        for st in snapshot.statuses
    ]
    return dataclasses.replace(snapshot, statuses=tuple(statuses))


def _changed_patches(before: Sequence[Resource], after: Sequence[Resource]) -> list[str]:
    """Resources that patch or extend generated Envoy config and differ between the two sets: the likely
    cause when Envoy rejects an update (a NACK names the listener, not the resource that broke it)."""
    kinds = ("EnvoyFilter", "WasmPlugin", "TrafficExtension")
    old = {r.key: r for r in before if r.KIND in kinds}
    return sorted(f"{r.KIND} {r.namespace}/{r.name}" for r in after if r.KIND in kinds and old.get(r.key) != r)


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 1)
