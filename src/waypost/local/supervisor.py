"""The embedded local mesh: one supervisor process runs the control plane and supervises every proxy and workload.

    manifests → api → mesh → envoy → xds server ─ADS→ ztunnel Envoy(s), waypoint Envoy(s)
                                   └→ CA → SDS secrets
    built-in echo workloads → one asyncio process (waypost.local.echo)

The supervisor writes `state.json` in the state directory (read by `waypost status` and `waypost request`),
restarts a child that dies, and on SIGTERM/SIGINT stops everything it started.

The configuration is live: `waypost apply/delete` reach the supervisor over its control socket
(`control.py`), and edits to the `up -f` manifests are noticed by polling (`watch.py`). Every change is
handled by `changes.py`, one at a time.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from waypost import collector
from waypost.api import load_paths
from waypost.api.meshconfig import MeshConfig, load_mesh_config_file
from waypost.ca import CertificateAuthority
from waypost.envoy import translate_incremental, with_patch_status
from waypost.mesh import build
from waypost.mesh.addresses import XDS_PORT
from waypost.xds import XdsServer

from .blocks import acquire_block
from .changes import Changes, Running
from .children import Child  # noqa: F401 - re-exported: where it lived before
from .control import ControlServer
from .documents import DocumentCache, ViewCache, mesh_view_texts_cached, resource_texts_cached
from .fleet import ProxyFleet, secret_resources, xds_snapshot  # noqa: F401 - re-exported
from .jwks import JwksCache
from .wasm import WasmCache
from .manifests import compose, load_overlay, track
from .metrics_server import PATH as METRICS_PATH
from .metrics_server import STATS_PORT, MetricsEndpoints
from .rollout import roll_out
from .state import StateDir, json_object_text, json_value_text, write_text_atomic
from .watch import POLL_INTERVAL, ManifestWatcher

PROGRESS_INTERVAL = 0.25  # seconds between state.json refreshes while the mesh starts
XDS_MAX_STREAMS = 2048  # threads are started on demand; a refused stream would leave its proxy unconfigured
from .workloads import WorkloadHost, echo_workloads  # noqa: F401 - re-exported

log = logging.getLogger("waypost.local")

READY_TIMEOUT = 60.0
_TICK = 0.25


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class StartupError(RuntimeError):
    pass


class Supervisor:
    def __init__(
        self,
        state: StateDir,
        paths: Sequence[str],
        *,
        concurrency: int = 1,
        on_ready: Callable[[dict[str, Any]], None] | None = None,
        watch: bool = True,
        mesh_config: MeshConfig | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        resume: bool = False,
    ) -> None:
        self.state = state
        # Started again by the keeper after a crash: take over the mesh the last supervisor of this state
        # directory ran (its address block, CA, `apply`-ed resources and still-running processes).
        self.resume = resume
        self.paths = list(paths)
        self.mesh_config = mesh_config  # from `up --mesh-config`; the istio ConfigMap overlays it
        self.concurrency = concurrency
        self.on_ready = on_ready
        self.on_progress = on_progress  # called with state.json's content while the proxies start
        self.watch = watch
        self.info: dict[str, Any] = {}
        self.running: Running | None = None
        self.last_error: dict[str, Any] | None = None
        self.fleet: ProxyFleet | None = None
        self.workloads = WorkloadHost(state)
        self.xds: XdsServer | None = None
        self.changes: Changes | None = None
        self._control: ControlServer | None = None
        self._metrics: MetricsEndpoints | None = None
        self.jwks = JwksCache()
        self.wasm = WasmCache(state.root / "wasm")
        self._watcher: ManifestWatcher | None = None
        self._stop = threading.Event()
        self._state_lock = threading.Lock()
        # resources.json: one compact JSON line per resource, each unchanged one's text reused (indenting took
        # the json module's pure-Python encoder; `waypost get -o json` indents a document).
        self._doc_cache: DocumentCache | None = None
        self._view_texts: dict[str, str] = {}  # state.json's mesh view: key -> its JSON there
        self._view_cache: ViewCache | None = None  # mesh_view entries' JSON of the snapshot last published
        self._actions: queue.Queue[tuple[Callable[[], dict[str, Any]], Future[dict[str, Any]]]] = queue.Queue()
        self._actions_lock = threading.Lock()
        self._accepting = True

    # -- lifecycle -------------------------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    @property
    def stopping(self) -> threading.Event:
        return self._stop

    def run(self) -> int:
        self.state.ensure()
        self.state.pid_file.write_text(f"{os.getpid()}\n")
        try:
            self._start()
        except StartupError as exc:
            self.write_state({"phase": "failed", "errors": str(exc).splitlines()})
            self._shutdown()
            return 1
        self.write_state()
        if self.on_ready:
            self.on_ready(self.state.read_state() or {})
        self._loop()
        self._shutdown()
        self.write_state({"phase": "stopped"})
        return 0

    def _loop(self) -> None:
        """The supervisor's one thread of action: changes, restarts and the watch all happen here.

        Children must be started from this long-lived thread: PR_SET_PDEATHSIG fires when the *thread*
        that forked a child ends, so an Envoy started by a control connection's thread would be killed as
        soon as that connection closed.
        """
        assert self.fleet is not None and self.changes is not None
        next_poll = time.monotonic() + POLL_INTERVAL
        while not self._stop.is_set():
            try:
                action, done = self._actions.get(timeout=_TICK)
            except queue.Empty:
                pass
            else:
                try:
                    done.set_result(action())
                except Exception as exc:  # noqa: BLE001 - reported to the waiting client
                    log.exception("change failed")
                    done.set_exception(exc)
            if self.fleet.poll_restart() | self.workloads.poll_restart():
                self.write_state()
            if self.jwks.refresh_due() and self.jwks.refresh():
                self.changes.refresh_keys()  # a jwksUri's keys rotated: push the new ones
            if self.fleet.renew_certificates():
                log.info("renewed workload certificates")
            if self._watcher is not None and time.monotonic() >= next_poll:
                if self._watcher.changed():
                    self.changes.reload(self.paths)
                next_poll = time.monotonic() + POLL_INTERVAL
        with self._actions_lock:
            self._accepting = False
        while not self._actions.empty():
            self._actions.get_nowait()[1].set_exception(RuntimeError("the supervisor is stopping"))

    def _submit(self, request: dict[str, Any]) -> dict[str, Any]:
        """Control-channel requests arrive on their connection's thread; they run on the supervisor's."""
        assert self.changes is not None
        changes = self.changes
        done: Future[dict[str, Any]] = Future()
        with self._actions_lock:
            if not self._accepting:
                return {"ok": False, "errors": ["the supervisor is stopping"]}
            self._actions.put((lambda: changes.handle(request), done))
        return done.result()

    def _start(self) -> None:
        if self.watch:
            # Before reading, so that an edit made while the mesh starts is not missed.
            self._watcher = ManifestWatcher(self.paths)
        result = load_paths(self.paths)
        if result.errors:
            raise StartupError("\n".join(d.render() for d in result.errors))
        overlay, problems = load_overlay(self.state.applied_file)
        if problems:
            raise StartupError("\n".join(d.render() for d in problems))
        resources = compose(result.resources, overlay)
        previous = self.state.read_state() if self.resume else None
        if self.resume and not (previous and previous.get("block")):
            raise StartupError(f"nothing to resume in {self.state.root}: no state.json of a running mesh")
        plan, self._block_lock = acquire_block(previous["block"] if previous else None)
        try:
            with collector.paused():
                snapshot = self.wasm.attach(self.jwks.attach(build(resources, plan, mesh_config=self.mesh_config)))
        except ValueError as exc:  # e.g. AddressSpaceExhausted
            raise StartupError(str(exc)) from None
        if previous:
            ca = CertificateAuthority.load(self.state.certs)  # the root every running proxy trusts
        else:
            ca = CertificateAuthority.generate()
            ca.save(self.state.certs)
        # One ADS stream per Envoy holds one server thread: room for every proxy a local mesh can run.
        self.xds = XdsServer(plan.control_plane, XDS_PORT, max_workers=XDS_MAX_STREAMS)
        self.xds.start()
        self.fleet = ProxyFleet(self.state, self.xds, ca, plan.control_plane, self.concurrency)
        started = now()
        self.info = {"block": plan.block, "started": started, "control_plane_restarts": 0}
        if previous:
            self.info.update(started=previous.get("started", started), control_plane_restarts=int(previous.get("control_plane_restarts", 0)) + 1)
            self._adopt(previous)
        with collector.paused():
            configs, translation = translate_incremental(snapshot)
            snapshot = with_patch_status(snapshot, configs)
        self.running = Running(result.resources, overlay, resources, snapshot, 1, track({}, [], resources, started), translation)
        self.changes = Changes(self, result.per_file)
        self.publish(self.running)
        self.write_state({"phase": "starting"})
        # While the proxies start, state.json is refreshed so `up` can show how far it got.
        started_up = threading.Event()
        progress = threading.Thread(target=self._report_progress, args=(started_up,), name="progress", daemon=True)
        progress.start()
        try:
            rollout = roll_out(
                self.fleet, self.workloads, configs, echo_workloads(snapshot), {pid: 1 for pid in configs},
                time.monotonic() + READY_TIMEOUT, self._stop,
            )
        finally:
            started_up.set()
            progress.join()
        if rollout.error:
            raise StartupError(rollout.error)
        _trim_heap()  # what encoding every proxy's first config left behind
        self._control = ControlServer(self.state.control_socket, self._submit)
        self._control.start()
        self._metrics = MetricsEndpoints(plan.control_plane)

    def _adopt(self, previous: dict[str, Any]) -> None:
        """Takes over the processes the last supervisor left running: they kept serving their last config
        and reconnect to this xDS server, which serves them the current one (the rollout waits for their
        ACKs as for any change). One that is gone is started anew by the rollout."""
        assert self.fleet is not None
        adopted = []
        for p in previous.get("proxies", []):
            if p.get("pid") and self.fleet.adopt(p["name"], p["kind"], p["address"], int(p["pid"]), int(p.get("restarts", 0))):
                adopted.append(p["name"])
        workloads = (previous.get("workloads_process") or {}).get("pid")
        kept_workloads = bool(workloads) and self.workloads.adopt(int(workloads))
        log.info("resuming the mesh in %s: adopted %d proxies%s", self.state.root, len(adopted), " and the workloads" if kept_workloads else "")

    def _report_progress(self, done: threading.Event) -> None:
        while not done.wait(PROGRESS_INTERVAL):
            self.write_state({"phase": "starting"})
            if self.on_progress is not None:
                self.on_progress(self.state.read_state() or {})

    def _shutdown(self) -> None:
        if self._metrics is not None:
            self._metrics.stop()
        if self._control is not None:
            self._control.stop()
        if self.fleet is not None:
            self.fleet.stop_all()
        self.workloads.stop()
        if self.xds is not None:
            self.xds.stop()

    # -- what the CLI reads ----------------------------------------------------------------------------
    def publish(self, running: Running) -> None:
        """Makes `running` current and writes resources.json; `write_state` writes the rest."""
        with self._state_lock:
            self.running = running
            self._view_texts, self._view_cache = mesh_view_texts_cached(running.snapshot, self._view_cache)
            texts, self._doc_cache = resource_texts_cached(running.resources, running.snapshot, now(), running.history, self._doc_cache)
            write_text_atomic(self.state.resources_file, "[\n  " + ",\n  ".join(texts) + "\n]" if texts else "[]")
        # What runs now stays until the next change: take it out of the cyclic collector's full passes, which
        # otherwise walk millions of long-lived objects (resources, snapshot, configs, caches) during a change
        # and add hundreds of milliseconds to it at random. Refcounting still frees it once it is replaced.
        gc.freeze()
        _trim_heap()

    def write_state(self, extra: dict[str, Any] | None = None) -> None:
        extra = {"phase": "ready", **(extra or {})}
        with self._state_lock:
            running = self.running
            proxies = self.fleet.proxies_state() if self.fleet else []
            if self._metrics is not None:
                self._metrics.sync(proxies)
                for p in proxies:
                    p["metrics"] = f"http://{p['address']}:{STATS_PORT}{METRICS_PATH}"
            state = {
                **self.info,
                "control_plane": {
                    "pid": os.getpid(),
                    "xds": f"{running.snapshot.plan.control_plane}:{XDS_PORT}" if running else None,
                    "control_socket": str(self.state.control_socket) if self._control else None,
                },
                "proxies": proxies,
                "metrics": f"http://{running.snapshot.plan.control_plane}:{STATS_PORT}{METRICS_PATH}" if running and self._metrics else None,
                "workloads_process": {"pid": self.workloads.pid} if self.workloads.pid else None,
                "state_dir": str(self.state.root),
                "config_generation": running.generation if running else 0,
                "watching": self.paths if self._watcher else [],
                "applied": {
                    "resources": [list(k) for k in running.overlay.applied] if running else [],
                    "deleted": sorted(list(k) for k in running.overlay.deleted) if running else [],
                },
                "last_error": self.last_error,
                **extra,
            }
            self._write_state_file(state)

    def _write_state_file(self, state: dict[str, Any]) -> None:
        """state.json, exactly as `write_json_atomic` lays it out, with the mesh view's JSON as published
        (`mesh_view_texts_cached`: the view, every Service and workload, is megabytes at 1000 Services and
        rarely changes)."""
        view = {key: text for key, text in self._view_texts.items() if key not in state}
        items = [(key, view[key] if key in view else json_value_text(state[key])) for key in sorted({*state, *view})]
        write_text_atomic(self.state.state_file, json_object_text(items))


def _trim_heap() -> None:
    """Hands the C heap's free memory back to the system (glibc malloc_trim): encoding and hashing a
    large config leave megabytes of freed buffers (protobuf arenas, JSON strings) that glibc otherwise keeps,
    counted in the control plane's RSS. A few milliseconds; a no-op without glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m waypost.local.supervisor")
    parser.add_argument("-f", "--filename", action="append", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--no-watch", action="store_true", help="do not reload the manifests when they change")
    parser.add_argument("--mesh-config", help="MeshConfig YAML file (the istio ConfigMap in istio-system overlays it)")
    parser.add_argument("--kept", action="store_true", help="run under waypost.local.keeper: the proxies outlive this process")
    parser.add_argument("--resume", action="store_true", help="take over the mesh a crashed supervisor left (with --kept)")
    args = parser.parse_args(argv)
    from .children import raise_fd_limit

    raise_fd_limit()
    if args.kept:
        from . import children

        children.DIE_WITH_SUPERVISOR = False
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    mesh_config = None
    if args.mesh_config:
        mesh_config, problems = load_mesh_config_file(args.mesh_config)
        if problems:
            for d in problems:
                print(d.render(), file=sys.stderr)
            return 2
    supervisor = Supervisor(
        StateDir(Path(args.state_dir)), args.filename, concurrency=args.concurrency, watch=not args.no_watch, mesh_config=mesh_config, resume=args.resume
    )
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
