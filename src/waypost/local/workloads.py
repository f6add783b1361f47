"""The built-in echo workloads of a mesh: one `waypost.local.echo` process serves every echo pod.

A change rewrites the process's spec file and sends it SIGHUP; the process starts listeners for new
(pod, port)s, closes removed ones (and their connections), keeps the rest, and bumps the `generation` in
its ready file. That file is how the supervisor knows the change is done.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any

from waypost.mesh import MeshSnapshot

from .children import Child
from .state import StateDir, write_json_atomic


def echo_workloads(snapshot: MeshSnapshot) -> list[dict[str, Any]]:
    """The echo server spec of every pod that runs a built-in echo image, with every port it serves."""
    out = []
    for w in snapshot.workloads:
        if w.kind != "Pod" or w.echo is None:
            continue
        ports = {p.port for p in w.ports}
        for service in snapshot.services:
            for _, eps in service.endpoints:
                ports.update(e.port for e in eps if e.workload == w.key)
        out.append(
            {
                "namespace": w.namespace,
                "pod": w.name,
                "address": w.app_address,
                "ports": sorted(ports),
                "flavor": w.echo,
                "service_version": w.label_map.get("version", ""),
            }
        )
    return out


def listen_addresses(workloads: list[dict[str, Any]]) -> set[str]:
    return {f"{w['address']}:{p}" for w in workloads for p in w["ports"]}


class WorkloadHost:
    def __init__(self, state: StateDir) -> None:
        self.state = state
        self.spec: list[dict[str, Any]] | None = None  # what the process was last told to serve
        self._child: Child | None = None
        self._waiting_for: tuple[int | None, int] = (None, 0)  # ready file (pid, generation) to get past

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    def set(self, workloads: list[dict[str, Any]], deadline: float) -> bool:
        """Tells the process to serve exactly `workloads` (starting it the first time); `wait` says when it does.

        False when it already serves exactly that."""
        if workloads == self.spec and self._child is not None:
            return False
        if self._child is None:
            write_json_atomic(self.state.echo_spec, {"workloads": workloads})
            self.state.echo_ready.unlink(missing_ok=True)
            self._child = self._new_child()
            self._waiting_for = (None, 0)
            self._child.start()
        else:
            # A process still starting has not installed its SIGHUP handler, and SIGHUP would kill it:
            # let it come up first (it reads the spec as it was when it started).
            while self._ready_pid() != self._child.pid and not self._child.exited and time.monotonic() < deadline:
                time.sleep(0.02)
            ready = self._ready() or {}
            self._waiting_for = (ready.get("pid"), int(ready.get("generation", 0)))
            write_json_atomic(self.state.echo_spec, {"workloads": workloads})
            self._child.signal(signal.SIGHUP)
        self.spec = workloads
        return True

    def _new_child(self) -> Child:
        return Child(
            "workloads",
            [sys.executable, "-m", "waypost.local.echo", "--spec", str(self.state.echo_spec), "--ready-file", str(self.state.echo_ready)],
            self.state.logs / "workloads.log",
        )

    def adopt(self, pid: int, restarts: int = 0) -> bool:
        """Takes over the workload process an earlier supervisor started, and what it was told to serve.
        False unless `pid` is that process and has said it serves the spec file."""
        try:
            spec = json.loads(self.state.echo_spec.read_text())["workloads"]
        except (OSError, ValueError, KeyError):
            return False
        ready = self._ready()
        child = self._new_child()
        if ready is None or ready.get("pid") != pid or not child.adopt(pid, restarts):
            return False
        self._child, self.spec = child, spec
        self._waiting_for = (None, 0)
        return True

    def wait(self, deadline: float, stopping: threading.Event) -> str | None:
        """Waits until the process serves the spec last `set`; None, or why it does not."""
        assert self._child is not None and self.spec is not None
        expected = listen_addresses(self.spec)
        while True:
            ready = self._ready()
            if ready is not None and ready.get("pid") == self._child.pid and self._past(ready):
                if ready.get("failed"):
                    return f"workloads failed to listen: {', '.join(ready['failed'])}"
                if expected.issubset(set(ready.get("listening", []))):
                    return None
            if self._child.exited and self._child.restarts == 0:
                return f"workloads exited with {self._child.returncode}; see {self._child.log_file}"
            if stopping.is_set():
                return "the supervisor is stopping"
            if time.monotonic() > deadline:
                return "workloads did not start listening in time"
            time.sleep(0.01)

    def _past(self, ready: dict[str, Any]) -> bool:
        pid, generation = self._waiting_for
        # A restarted process read the newest spec when it started.
        return ready.get("pid") != pid or int(ready.get("generation", 0)) > generation

    def _ready(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state.echo_ready.read_text())
        except (OSError, ValueError):
            return None

    def _ready_pid(self) -> int | None:
        return (self._ready() or {}).get("pid")

    def poll_restart(self) -> bool:
        return self._child.poll_restart() if self._child else False

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop()
