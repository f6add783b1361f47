"""Choosing a free 127.B.0.0/16 block, so several meshes (and parallel tests) run side by side.

A block is held by an exclusive `flock` on `<lock dir>/block-B.lock` for the supervisor's lifetime; the
kernel drops the lock when the process dies, so a crashed mesh never leaves its block taken. A block whose
control-plane address is already bound by something else is skipped too.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from waypost.api.core import Service
from waypost.api.meta import Resource
from waypost.mesh.addresses import XDS_PORT, AddressPlan

FIRST_BLOCK = 20
LAST_BLOCK = 250


def lock_dir() -> Path:
    path = Path(os.environ.get("WAYPOST_LOCK_DIR", Path(tempfile.gettempdir()) / "waypost-blocks"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _address_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def acquire_block(preferred: int | None = None) -> tuple[AddressPlan, IO[str]]:
    """Locks a free block and returns its plan and the open lock file (keep it open to keep the block)."""
    candidates = [preferred] if preferred else list(range(FIRST_BLOCK, LAST_BLOCK + 1))
    start = os.getpid() % len(candidates)
    for block in candidates[start:] + candidates[:start]:
        handle = open(lock_dir() / f"block-{block}.lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        plan = AddressPlan(block)
        if not _address_free(plan.control_plane, XDS_PORT):
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return plan, handle
    raise RuntimeError("no free 127.B.0.0/16 address block for a new mesh")


def unprivileged_port_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def privileged_ports_problem(resources: Iterable[Resource]) -> str | None:
    """Why this user cannot serve the Services' ports on loopback, or None.

    Ports below net.ipv4.ip_unprivileged_port_start (1024 unless lowered) need root; checked before
    `up` starts anything and before `apply` changes anything, so a mesh never half-binds a change.
    """
    if os.geteuid() == 0:
        return None
    start = unprivileged_port_start()
    low = sorted({(r.ref, p.port) for r in resources if isinstance(r, Service) for p in r.spec.ports if p.port < start})
    if not low:
        return None
    listed = ", ".join(f"{ref}:{port}" for ref, port in low[:5])
    return (
        f"service ports below {start} need root: {listed}. Run as root, or allow them with "
        f"'sysctl net.ipv4.ip_unprivileged_port_start=0'."
    )
