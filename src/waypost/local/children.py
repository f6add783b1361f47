"""Child processes of the supervisor (Envoys, the workload host) and the Envoy admin checks on them.

Two ways to outlive nothing, or to outlive the supervisor:
- alone (`waypost up` run in-process, tests), children die with the supervisor (PR_SET_PDEATHSIG), so a
  killed supervisor leaves nothing behind;
- kept (`waypost.local.keeper`), children must keep serving while the supervisor is down: they are started
  without the death signal, the keeper (a child subreaper) inherits them when the supervisor dies, and the
  restarted supervisor adopts them by pid (`Child.adopt`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
import urllib.request
from urllib.parse import quote
from pathlib import Path

from .state import pid_alive, process_argv

log = logging.getLogger("waypost.local")

# False under the keeper (set by `supervisor.main --kept`): children must survive the supervisor.
DIE_WITH_SUPERVISOR = True


def set_death_signal(signum: int) -> None:
    """This process gets `signum` when the thread that started it ends (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signum)
    except OSError:
        pass


def raise_fd_limit() -> None:
    """As many open files as this process (and the children it starts, which inherit the limit) may have:
    a ztunnel holds two sockets per captured pod (its outbound and HBONE listeners) plus one per service
    port, so 10000 pods need more than the 20000 a default limit may allow ("socket(2) failed: Too many
    open files" aborts Envoy). The soft limit goes up to the hard one; with the privilege to do so, the
    hard one up to the kernel's nr_open. Called once at start-up by the keeper and the supervisor, not in
    a child between fork and exec, where a multi-threaded parent's locks make Python code unsafe."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        ceiling = hard
    for limit in (max(hard, min(ceiling, 1 << 20)), hard):
        if limit == resource.RLIM_INFINITY or limit <= soft:
            return
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, max(limit, hard)))
            return
        except (ValueError, OSError):
            continue


def _pdeathsig() -> None:
    """Children get SIGKILL if the supervisor dies without cleaning up."""
    set_death_signal(signal.SIGKILL)




class Child:
    """A supervised process: restarted with backoff when it exits on its own.

    An adopted child (`adopt`) is a process an earlier supervisor started: it is known by pid only (the
    keeper, not this process, is its parent and reaps it), and it is started anew like any other once it
    exits."""

    def __init__(self, name: str, argv: list[str], log_file: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._next_start = 0.0
        self._adopted: int | None = None  # pid of an adopted process

    def start(self) -> None:
        self._adopted = None
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_pdeathsig if DIE_WITH_SUPERVISOR else None,
            )

    def adopt(self, pid: int, restarts: int = 0) -> bool:
        """Takes over a running process an earlier supervisor started with this child's argv; False, and
        nothing adopted, unless `pid` runs exactly that argv (the binary's path aside, which /proc may spell
        differently), so a pid reused by an unrelated process is never taken for one of ours."""
        argv = process_argv(pid)
        if argv is None or argv[1:] != list(self.argv[1:]):
            return False
        self.proc = None
        self._adopted = pid
        self.restarts = restarts
        return True

    @property
    def pid(self) -> int | None:
        if self._adopted is not None:
            return self._adopted
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | str:
        return self.proc.returncode if self.proc is not None and self.proc.returncode is not None else "?"

    @property
    def exited(self) -> bool:
        if self._adopted is not None:
            return not pid_alive(self._adopted)
        return self.proc is not None and self.proc.poll() is not None

    def poll_restart(self) -> bool:
        """Restarts the process if it died; True when it did."""
        if (self.proc is None and self._adopted is None) or not self.exited:
            return False
        now = time.monotonic()
        if now < self._next_start:
            return False
        log.warning("%s exited with %s; restarting", self.name, self.returncode)
        self.restarts += 1
        self._next_start = now + min(5.0, 0.2 * 2 ** min(self.restarts, 5))
        self.start()
        return True

    def signal(self, signum: int) -> bool:
        """Sends `signum` to a running process; False when it is not running."""
        if self._adopted is not None:
            if not pid_alive(self._adopted):
                return False
            os.kill(self._adopted, signum)
            return True
        if self.proc is None or self.proc.poll() is not None:
            return False
        self.proc.send_signal(signum)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        if self._adopted is not None:
            _stop_pid(self._adopted, timeout)
            return
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _stop_pid(pid: int, timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout`, for a process this one did not start (its parent reaps it)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            deadline = float("inf")
        time.sleep(0.02)


def _admin_get(address: str, path: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=1) as r:
            return r.read().decode() if r.status == 200 else None
    except OSError:
        return None


def admin_ready(address: str) -> bool:
    """Envoy's /ready: the server finished initialising (its first listeners are warm)."""
    return _admin_get(address, "/ready") is not None


def listeners_warm(address: str) -> bool:
    """No listener is still warming. A listener that arrives in an update is ACKed before it has warmed
    (it waits for its routes and secrets), and only serves once warm, so "in sync" alone is not enough."""
    text = _admin_get(address, "/stats?filter=" + quote("^listener_manager\\.total_listeners_warming$"))
    if text is None:
        return False
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "listener_manager.total_listeners_warming":
            return value.strip() == "0"
    return False
