"""Child processes of the supervisor (Envoys, the workload host) and the Envoy admin checks on them."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
import urllib.request
from urllib.parse import quote
from pathlib import Path

log = logging.getLogger("waypost.local")


def _pdeathsig() -> None:
    """Children get SIGKILL if the supervisor dies without cleaning up (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


class Child:
    """A supervised process: restarted with backoff when it exits on its own."""

    def __init__(self, name: str, argv: list[str], log_file: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._next_start = 0.0

    def start(self) -> None:
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_pdeathsig
            )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def poll_restart(self) -> bool:
        """Restarts the process if it died; True when it did."""
        if self.proc is None or self.proc.poll() is None:
            return False
        now = time.monotonic()
        if now < self._next_start:
            return False
        log.warning("%s exited with %s; restarting", self.name, self.proc.returncode)
        self.restarts += 1
        self._next_start = now + min(5.0, 0.2 * 2 ** min(self.restarts, 5))
        self.start()
        return True

    def signal(self, signum: int) -> bool:
        """Sends `signum` to a running process; False when it is not running."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        self.proc.send_signal(signum)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


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
