"""The Envoy processes of a mesh (ztunnels, waypoints) and the xDS snapshots each one is served.

The fleet remembers, per proxy, the config it was last given and the config generation that config
belongs to. A proxy whose config did not change in a new generation keeps its old generation (and xDS
pushes it nothing), which is how `state.json` shows that only the affected proxies were updated.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timedelta, timezone
from collections.abc import Iterable, Sequence
from typing import Any

from waypost.ca import CertificateAuthority
from waypost.envoy import ProxyConfig, bootstrap
from waypost.mesh.addresses import ADMIN_PORT, XDS_PORT
from waypost.xds import TYPE_CLUSTER, TYPE_LISTENER, TYPE_ROUTE, TYPE_SECRET, Snapshot, XdsServer
from waypost.xds.types import short_name

from .binary import envoy_path
from .children import Child, admin_ready, listeners_warm
from .state import StateDir


# Workload certificate lifetime (Istio's default is 24 h) and when to renew: at half of it, as Istio's
# agent does (SECRET_GRACE_PERIOD_RATIO 0.5). WAYPOST_CERT_TTL (seconds) shortens it, e.g. to test rotation.
CERT_TTL = timedelta(seconds=float(os.environ.get("WAYPOST_CERT_TTL", str(24 * 3600))))
RENEW_AT = 0.5


def _issue(ca: CertificateAuthority, name: str) -> dict[str, Any]:
    cert = ca.issue(name, ttl=CERT_TTL)
    now = datetime.now(timezone.utc)
    return {
        "name": name,
        "tls_certificate": {
            "certificate_chain": {"inline_string": cert.cert_chain_pem},
            "private_key": {"inline_string": cert.private_key_pem},
        },
        "_renew_at": (now + (cert.not_after - now) * RENEW_AT).timestamp(),
    }


def secret_resources(ca: CertificateAuthority, names: Sequence[str], cache: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """SDS secrets by name: the root, and a workload certificate per SPIFFE identity (issued once, cached
    until renewed)."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        if name == "ROOTCA":
            out[name] = {"name": name, "validation_context": {"trusted_ca": {"inline_string": ca.root_cert_pem}}}
            continue
        if name not in cache:
            cache[name] = _issue(ca, name)
        out[name] = {k: v for k, v in cache[name].items() if not k.startswith("_")}
    return out


def xds_snapshot(config: ProxyConfig, secrets: dict[str, dict[str, Any]]) -> Snapshot:
    return Snapshot(
        {
            TYPE_LISTENER: {l["name"]: l for l in config.listeners},
            TYPE_CLUSTER: {c["name"]: c for c in config.clusters},
            TYPE_ROUTE: {r["name"]: r for r in config.routes},
            TYPE_SECRET: secrets,
        }
    )


FD_HEADROOM = 1024  # files an Envoy needs besides its listening sockets (connections, logs, admin)


def _check_fd_limit(pid: str, config: ProxyConfig) -> None:
    """Refuses to start an Envoy whose listeners need more sockets than it may open: it would abort with
    "socket(2) failed: Too many open files" halfway through applying its config (a ztunnel binds two
    sockets per captured pod). The limit is the hard one, which the child raises its soft limit to."""
    import resource

    sockets = sum(1 + len(listener.get("additional_addresses", [])) for listener in config.listeners if "address" in listener)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and sockets + FD_HEADROOM > hard:
        raise OSError(
            f"{pid} would listen on {sockets} sockets, more than the open-file limit allows ({hard}, "
            f"less {FD_HEADROOM} for connections); raise it (ulimit -Hn) or run fewer pods"
        )


class ProxyFleet:
    def __init__(self, state: StateDir, xds: XdsServer, ca: CertificateAuthority, control_plane: str, concurrency: int) -> None:
        self.state = state
        self.xds = xds
        self.ca = ca
        self.control_plane = control_plane
        self.concurrency = concurrency
        self.configs: dict[str, ProxyConfig] = {}  # what xDS serves each proxy now
        self.generations: dict[str, int] = {}  # the config generation that config belongs to
        self._versions: dict[str, dict[str, str]] = {}  # type_url -> version of what xDS serves each proxy
        self._children: dict[str, Child] = {}
        self._addresses: dict[str, str] = {}
        self._lock = threading.Lock()  # the supervisor acts on one thread; this keeps a reader on another (state.json) safe
        self._certs: dict[str, dict[str, Any]] = {}
        # Proxies served new listeners since their last `wait`: only a listener can be warming, and asking
        # Envoy (a regex over every stat name, 100+ ms for a waypoint of 1000 Services) is skipped otherwise.
        self._listeners_pushed: set[str] = set()

    # -- configuration ---------------------------------------------------------------------------------
    def renew_certificates(self, now: float | None = None) -> list[str]:
        """Re-issues the workload certificates past their renewal time and pushes them to the proxies that
        use them (SDS: Envoy swaps the certificate for new connections; open ones keep theirs). Returns the
        renewed identities."""
        now = time.time() if now is None else now
        due = [name for name, entry in self._certs.items() if entry["_renew_at"] <= now]
        for name in due:
            self._certs[name] = _issue(self.ca, name)
        if due:
            for pid, config in list(self.configs.items()):
                if any(name in config.secrets for name in due):
                    self.xds.set_snapshot(pid, xds_snapshot(config, secret_resources(self.ca, config.secrets, self._certs)))
        return due

    def set_config(self, pid: str, config: ProxyConfig, generation: int) -> bool:
        """Serves `config` to the proxy; False (and nothing pushed) when it already has exactly that config.

        Raises EncodeError before changing anything when the config cannot be encoded."""
        if self.configs.get(pid) == config:
            return False
        snapshot = xds_snapshot(config, secret_resources(self.ca, config.secrets, self._certs))
        versions = self.xds.set_snapshot(pid, snapshot)
        before = self._versions.get(pid, {})
        self.configs[pid] = config
        self.generations[pid] = generation
        self._versions[pid] = {t: versions.get(t, "") for t in snapshot.resources}
        if self._versions[pid].get(TYPE_LISTENER) != before.get(TYPE_LISTENER):
            self._listeners_pushed.add(pid)
        return True

    # -- processes -------------------------------------------------------------------------------------
    def start(self, pid: str) -> None:
        config = self.configs[pid]
        _check_fd_limit(pid, config)
        name = pid.replace("~", ".")
        boot = bootstrap(pid, config.kind, (config.address, ADMIN_PORT), (self.control_plane, XDS_PORT))
        boot_file = self.state.bootstraps / f"{name}.json"
        boot_file.write_text(json.dumps(boot, indent=1, sort_keys=True))
        child = self._child(pid, config.kind)
        child.start()
        with self._lock:
            self._children[pid] = child
            self._addresses[pid] = config.address

    def adopt(self, pid: str, kind: str, address: str, os_pid: int, restarts: int = 0) -> bool:
        """Takes over the running Envoy of proxy `pid` that an earlier supervisor of this state directory
        started (it kept serving its last config while no control plane was up; it reconnects to this one's
        xDS server). False, and nothing adopted, unless `os_pid` is that very Envoy."""
        child = self._child(pid, kind)
        if not child.adopt(os_pid, restarts):
            return False
        with self._lock:
            self._children[pid] = child
            self._addresses[pid] = address
        return True

    def _child(self, pid: str, kind: str) -> Child:
        name = pid.replace("~", ".")
        boot_file = self.state.bootstraps / f"{name}.json"
        argv = [
            envoy_path(), "-c", str(boot_file), "--disable-hot-restart", "--concurrency", str(self.concurrency),
            "--log-level", "warning", "--drain-time-s", "1", "--service-node", pid, "--service-cluster", kind,
            # Envoy's own log goes to its own file: stdout (the Child's log) then holds access logs only,
            # flushed every second so `waypost logs` is current.
            "--log-path", str(self.state.logs / f"{name}.envoy.log"), "--file-flush-interval-msec", "1000",
        ]
        return Child(pid, argv, self.state.logs / f"{name}.log")

    def stop(self, pid: str) -> None:
        """Stops the proxy's Envoy and forgets it. xDS keeps its last snapshot: nothing will ask for it."""
        with self._lock:
            child = self._children.pop(pid, None)
            self._addresses.pop(pid, None)
        if child is not None:
            child.stop()
        self.configs.pop(pid, None)
        self.generations.pop(pid, None)
        self._versions.pop(pid, None)
        self._listeners_pushed.discard(pid)

    def started_address(self, pid: str) -> str | None:
        """The address the running Envoy was started with: its admin listener and bootstrap use it."""
        with self._lock:
            return self._addresses.get(pid) if pid in self._children else None

    def poll_restart(self) -> bool:
        with self._lock:
            children = list(self._children.values())
        return any([child.poll_restart() for child in children])

    def stop_all(self) -> None:
        with self._lock:
            children = list(self._children.values())
            self._children.clear()
        for child in children:
            child.stop()

    # -- readiness -------------------------------------------------------------------------------------
    def wait(self, pids: Iterable[str], deadline: float, stopping: threading.Event, new: Iterable[str] = ()) -> str | None:
        """Waits until every proxy has ACKed what it is served and has no listener warming (and, for
        `new` ones, has started serving). Returns None, or the reason it never will."""
        pending = set(pids)
        new = set(new)
        while pending:
            unacked = False
            for pid in sorted(pending):
                problem = self._problem(pid, pid in new)
                if problem:
                    return problem
                address = f"{self.configs[pid].address}:{ADMIN_PORT}"
                if not self.xds.node_status(pid).in_sync:
                    unacked = True
                    continue
                if pid in new and not admin_ready(address):
                    continue
                if pid not in new and pid not in self._listeners_pushed:
                    pending.discard(pid)  # ACKed, and nothing it was served can be warming
                elif listeners_warm(address):
                    pending.discard(pid)
                    self._listeners_pushed.discard(pid)
            if not pending:
                return None
            if stopping.is_set():
                return "the supervisor is stopping"
            if time.monotonic() > deadline:
                return f"not ready in time: {', '.join(sorted(pending))}"
            if unacked:
                self.xds.wait_in_sync(pending, 0.05)  # returns as the ACKs arrive
            else:
                time.sleep(0.005)  # ACKed: Envoy's admin is polled for readiness and warm listeners
        return None

    def _problem(self, pid: str, new: bool) -> str | None:
        status = self.xds.node_status(pid)
        served = self._versions.get(pid, {})
        for type_url, (version, message) in status.nacked.items():
            # A NACK of an older push is history; only a rejection of what is served now counts.
            if version and version == served.get(type_url):
                return f"{pid} rejected its new {short_name(type_url)} configuration: {message}"
        with self._lock:
            child = self._children.get(pid)
        # A proxy that was running before restarts and catches up; one that cannot even start will not.
        if new and child is not None and child.exited:
            return f"{pid} exited with {child.returncode}; see {child.log_file}"
        return None

    # -- state.json ------------------------------------------------------------------------------------
    def proxies_state(self) -> list[dict[str, Any]]:
        out = []
        for pid, config in sorted(self.configs.items()):
            with self._lock:
                child = self._children.get(pid)
            status = self.xds.node_status(pid)
            out.append(
                {
                    "name": pid,
                    "kind": config.kind,
                    "address": config.address,
                    "pid": child.pid if child else None,
                    "admin": f"{config.address}:{ADMIN_PORT}",
                    # The generation of the config this proxy has ACKed; None while it is catching up.
                    "version": self.generations.get(pid) if status.in_sync else None,
                    "ready": status.in_sync,
                    "restarts": child.restarts if child else 0,
                    "xds_versions": {short_name(t): v for t, v in sorted(status.acked.items()) if v},
                }
            )
        return out

