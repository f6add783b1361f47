"""The keeper: restarts the control plane when it dies, while the proxies and workloads keep serving.

    python -m waypost.local.keeper --state-dir DIR -- SUPERVISOR-ARGS...

As istiod and the proxies are separate pods in a cluster, a crash of the control plane must not take the
data plane with it: Envoy keeps its last config while its xDS server is away (issue 9). Here the
supervisor (control plane and process supervisor in one) runs as this process's child, with `--kept`, so
that the Envoys and the workload process it starts do not die with it. This process is a child subreaper
(Linux prctl PR_SET_CHILD_SUBREAPER): when the supervisor dies, its children become this process's, which
reaps them when they exit. A supervisor that dies without being asked to stop is started again with
`--resume`; it takes over the address block, the CA, the `apply`-ed resources and the running processes,
and the Envoys reconnect to it (`waypost status` counts `control_plane_restarts`).

SIGTERM/SIGINT stop the mesh: they are passed to the supervisor, which stops everything, and no restart
follows. The supervisor gets SIGTERM if this process dies (its death signal), so killing the keeper stops
the mesh as `waypost down` does. A supervisor that never got ready the first time is not restarted: that
is a start-up failure for `waypost up` to report, not a crash.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .children import raise_fd_limit, set_death_signal
from .state import StateDir, pid_alive, process_argv

log = logging.getLogger("waypost.keeper")

PR_SET_CHILD_SUBREAPER = 36
FIRST_BACKOFF = 0.2  # seconds before the first restart; doubles per quick crash, up to MAX_BACKOFF
MAX_BACKOFF = 5.0
STABLE_AFTER = 30.0  # a supervisor that ran this long resets the backoff
_TICK = 0.05


def _become_subreaper() -> None:
    import ctypes

    if ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _supervisor_death_signal() -> None:
    set_death_signal(signal.SIGTERM)  # the keeper is gone: the supervisor stops the mesh


class Keeper:
    def __init__(self, state: StateDir, supervisor_argv: Sequence[str]) -> None:
        self.state = state
        self.argv = list(supervisor_argv)  # without --kept/--resume
        self.restarts = 0
        self._stop = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None

    def request_stop(self, *_: Any) -> None:
        self._stop.set()
        child = self._child
        if child is not None and pid_alive(child.pid):
            try:
                os.kill(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def run(self, on_tick: Callable[[], None] | None = None) -> int:
        """Runs the supervisor until it stops on request or fails to start; returns its exit code.

        `on_tick` is called every few tens of milliseconds (the foreground `up` shows progress with it)."""
        _become_subreaper()
        raise_fd_limit()
        self.state.ensure()
        self.state.keeper_pid_file.write_text(f"{os.getpid()}\n")
        try:
            code = self._run(on_tick)
            if code != 0:
                stop_leftovers(self.state)  # a supervisor that died (or never got up) stopped nothing
            return code
        finally:
            self.state.keeper_pid_file.unlink(missing_ok=True)

    def _run(self, on_tick: Callable[[], None] | None) -> int:
        backoff = FIRST_BACKOFF
        resume = False
        while True:
            started = time.monotonic()
            code = self._run_once(resume, on_tick)
            phase = (self.state.read_state() or {}).get("phase")
            if self._stop.is_set() or code == 0:
                return code
            if not resume and phase in (None, "starting", "failed"):
                return code  # never got ready: a start-up failure, reported by `up`
            if time.monotonic() - started > STABLE_AFTER:
                backoff = FIRST_BACKOFF
            log.warning("the control plane exited with %s; restarting it in %.1f s (the proxies keep serving)", _describe(code), backoff)
            if self._stop.wait(backoff):
                return code
            backoff = min(MAX_BACKOFF, backoff * 2)
            self.restarts += 1
            resume = True

    def _run_once(self, resume: bool, on_tick: Callable[[], None] | None) -> int:
        argv = [*self.argv, "--kept", *(["--resume"] if resume else [])]
        with open(self.state.logs / "supervisor.log", "ab") as out:
            child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_supervisor_death_signal)
        self._child = child
        if self._stop.is_set():  # asked to stop while it was being started
            self.request_stop()
        while True:
            # Reap everything: the supervisor, and the proxies it left to this process when it died.
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    pid, status = 0, 0
                if pid == 0:
                    break
                if pid == child.pid:
                    child.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
                    self._child = None
                    return child.returncode
            if on_tick is not None:
                on_tick()
            time.sleep(_TICK)


def stop_leftovers(state: StateDir) -> list[int]:
    """SIGKILLs the proxies and the workload process `state.json` lists that still run from this state
    directory (a supervisor that was killed could not stop them); returns their pids."""
    current = state.read_state() or {}
    pids = [p.get("pid") for p in current.get("proxies", [])]
    pids.append((current.get("workloads_process") or {}).get("pid"))
    stopped = []
    for pid in pids:
        if pid and _is_ours(pid, state):
            os.kill(pid, signal.SIGKILL)
            stopped.append(pid)
    return stopped


def _is_ours(pid: int, state: StateDir) -> bool:
    argv = process_argv(pid)
    return argv is not None and any(str(state.root) in a for a in argv)


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        print("usage: python -m waypost.local.keeper --state-dir DIR -- SUPERVISOR-ARGS...", file=sys.stderr)
        return 2
    split = args.index("--")
    parser = argparse.ArgumentParser(prog="python -m waypost.local.keeper")
    parser.add_argument("--state-dir", required=True)
    own = parser.parse_args(args[:split])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    keeper = Keeper(StateDir(Path(own.state_dir)), [sys.executable, "-m", "waypost.local.supervisor", *args[split + 1:]])
    signal.signal(signal.SIGTERM, keeper.request_stop)
    signal.signal(signal.SIGINT, keeper.request_stop)
    return keeper.run()


if __name__ == "__main__":
    sys.exit(main())
