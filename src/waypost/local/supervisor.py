"""The embedded local mesh: one supervisor process runs the control plane and supervises every proxy and workload.

    manifests → api → mesh → envoy → xds server ─ADS→ ztunnel Envoy(s), waypoint Envoy(s)
                                   └→ CA → SDS secrets
    built-in echo workloads → one asyncio process (waypost.local.echo)

The supervisor writes `state.json` in the state directory (read by `waypost status` and `waypost request`),
restarts a child that dies, and on SIGTERM/SIGINT stops everything it started.
"""

from __future__ import annotations

import os

# The supervisor forks children while gRPC threads serve xDS. gRPC's fork handlers then abort the child
# ("epoll_wait error: Bad file descriptor"); the children exec right away and need none of gRPC's state.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import json
import logging
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from waypost.api import load_paths
from waypost.ca import CertificateAuthority
from waypost.envoy import ProxyConfig, bootstrap, translate
from waypost.mesh import MeshSnapshot, build
from waypost.mesh.addresses import ADMIN_PORT, XDS_PORT
from waypost.xds import TYPE_CLUSTER, TYPE_LISTENER, TYPE_ROUTE, TYPE_SECRET, Snapshot, XdsServer

from .binary import envoy_path
from .blocks import acquire_block
from .state import StateDir, write_json_atomic

log = logging.getLogger("waypost.local")

READY_TIMEOUT = 60.0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class StartupError(RuntimeError):
    pass


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

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def secret_resources(ca: CertificateAuthority, names: Sequence[str], cache: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        if name == "ROOTCA":
            out[name] = {"name": name, "validation_context": {"trusted_ca": {"inline_string": ca.root_cert_pem}}}
            continue
        if name not in cache:
            cert = ca.issue(name)
            cache[name] = {
                "name": name,
                "tls_certificate": {
                    "certificate_chain": {"inline_string": cert.cert_chain_pem},
                    "private_key": {"inline_string": cert.private_key_pem},
                },
            }
        out[name] = cache[name]
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


def echo_workloads(snapshot: MeshSnapshot) -> list[dict[str, Any]]:
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


def describe(snapshot: MeshSnapshot) -> dict[str, Any]:
    """The parts of a snapshot that `status` and `request` need, as JSON."""
    return {
        "services": [
            {
                "namespace": s.namespace,
                "name": s.name,
                "vip": s.vip,
                "ports": [{"name": p.name, "port": p.port, "targetPort": p.target_port, "protocol": p.protocol} for p in s.ports],
                "waypoint": str(s.waypoint) if s.waypoint else None,
            }
            for s in snapshot.services
        ],
        "workloads": [
            {
                "kind": w.kind,
                "namespace": w.namespace,
                "pod": w.name,
                "owner": w.owner,
                "address": w.address,
                "app_address": w.app_address,
                "identity": w.identity,
                "captured": w.captured,
                "echo": w.echo,
                "waypoint": str(w.waypoint) if w.waypoint else None,
            }
            for w in snapshot.workloads
        ],
        "waypoints": [
            {"namespace": w.namespace, "name": w.name, "address": w.address, "identity": w.identity, "for": w.traffic_for}
            for w in snapshot.waypoints
        ],
        "conditions": [
            {
                "kind": st.kind,
                "namespace": st.namespace,
                "name": st.name,
                "conditions": [c.as_dict() for c in st.conditions],
                "parents": [{"parentRef": p, "conditions": [c.as_dict() for c in cs]} for p, cs in st.parents],
            }
            for st in snapshot.statuses
        ],
    }


def resource_documents(resources, snapshot: MeshSnapshot, now: str) -> list[dict[str, Any]]:
    """The resources as `kubectl get -o yaml` would show them: defaults filled in, computed status added."""
    from waypost.mesh.status import resource_status

    from waypost.api.gateway import GatewayClass
    from waypost.mesh.waypoints import MESH_CONTROLLER, WAYPOINT_CLASS

    resources = list(resources)
    if not any(isinstance(r, GatewayClass) and r.name == WAYPOINT_CLASS for r in resources):
        # Like istiod, the mesh provides the istio-waypoint class when the user did not declare it.
        resources.append(
            GatewayClass.model_validate(
                {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": WAYPOINT_CLASS}, "spec": {"controllerName": MESH_CONTROLLER}}
            )
        )
    docs = []
    for r in resources:
        doc = _prune(r.model_dump(by_alias=True, exclude_none=True, mode="json"))
        meta = doc.setdefault("metadata", {})
        if r.NAMESPACED:
            meta["namespace"] = r.namespace
        meta.setdefault("creationTimestamp", now)
        meta.setdefault("generation", 1)
        if r.KIND == "Service":
            service = snapshot.service(f"{r.namespace}/{r.name}")
            if service is not None:
                doc.setdefault("spec", {})["clusterIP"] = service.vip
                doc["spec"]["clusterIPs"] = [service.vip]
        status = resource_status(r, snapshot)
        if status is not None:
            for condition in _all_conditions(status):
                condition.setdefault("lastTransitionTime", now)
            doc["status"] = status
        docs.append(doc)
    return docs


def _prune(value: Any) -> Any:
    """Drops empty lists and maps that only model defaults produced, as the API server would not show them."""
    if isinstance(value, dict):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v != {} and v != []}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def _all_conditions(status: dict[str, Any]):
    yield from status.get("conditions", [])
    for item in status.get("parents", []) + status.get("listeners", []):
        yield from item.get("conditions", [])


def _admin_ready(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/ready", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


class Supervisor:
    def __init__(self, state: StateDir, paths: Sequence[str], *, concurrency: int = 1, on_ready: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.state = state
        self.paths = list(paths)
        self.concurrency = concurrency
        self.on_ready = on_ready
        self.children: dict[str, Child] = {}
        self.configs: dict[str, ProxyConfig] = {}
        self.generation = 0
        self._stop = threading.Event()
        self._cert_cache: dict[str, dict[str, Any]] = {}
        self.xds: XdsServer | None = None
        self.info: dict[str, Any] = {}

    # -- lifecycle -------------------------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def run(self) -> int:
        self.state.ensure()
        self.state.pid_file.write_text(f"{os.getpid()}\n")
        try:
            self._start()
        except StartupError as exc:
            self._write({"phase": "failed", "errors": str(exc).splitlines()})
            self._shutdown()
            return 1
        self._write({"phase": "ready"})
        if self.on_ready:
            self.on_ready(self.state.read_state() or {})
        while not self._stop.wait(0.25):
            for child in self.children.values():
                if child.poll_restart():
                    self._write({"phase": "ready"})
        self._shutdown()
        self._write({"phase": "stopped"})
        return 0

    def _start(self) -> None:
        result = load_paths(self.paths)
        if result.errors:
            raise StartupError("\n".join(d.render() for d in result.errors))
        plan, self._block_lock = acquire_block()
        snapshot = build(result.resources, plan)
        self.snapshot = snapshot
        ca = CertificateAuthority.generate()
        ca.save(self.state.certs)
        self.ca = ca
        self.xds = XdsServer(plan.control_plane, XDS_PORT)
        self.xds.start()
        self.xds.add_listener(lambda status: None)
        self.configs = translate(snapshot)
        self.generation = 1
        for pid, config in self.configs.items():
            secrets = secret_resources(ca, config.secrets, self._cert_cache)
            self.xds.set_snapshot(pid, xds_snapshot(config, secrets))
        self.info = {"block": plan.block, "started": _now(), **describe(snapshot)}
        write_json_atomic(self.state.resources_file, resource_documents(result.resources, snapshot, self.info["started"]))
        self._write({"phase": "starting"})
        for pid, config in self.configs.items():
            name = pid.replace("~", ".")
            boot = bootstrap(pid, config.kind, (config.address, ADMIN_PORT), (plan.control_plane, XDS_PORT))
            boot_file = self.state.bootstraps / f"{name}.json"
            boot_file.write_text(json.dumps(boot, indent=1, sort_keys=True))
            argv = [
                envoy_path(), "-c", str(boot_file), "--disable-hot-restart", "--concurrency", str(self.concurrency),
                "--log-level", "warning", "--drain-time-s", "1", "--service-node", pid, "--service-cluster", config.kind,
            ]
            self.children[pid] = Child(pid, argv, self.state.logs / f"{name}.log")
        echo = echo_workloads(snapshot)
        write_json_atomic(self.state.echo_spec, {"workloads": echo})
        self.state.echo_ready.unlink(missing_ok=True)
        self.children["workloads"] = Child(
            "workloads",
            [sys.executable, "-m", "waypost.local.echo", "--spec", str(self.state.echo_spec), "--ready-file", str(self.state.echo_ready)],
            self.state.logs / "workloads.log",
        )
        for child in self.children.values():
            child.start()
        self._wait_ready(echo)

    def _wait_ready(self, echo: list[dict[str, Any]]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        expected = {f"{w['address']}:{p}" for w in echo for p in w["ports"]}
        pending: list[str] = []
        while time.monotonic() < deadline and not self._stop.is_set():
            pending = []
            assert self.xds is not None
            for pid, config in self.configs.items():
                status = self.xds.node_status(pid)
                if status.nacked:
                    raise StartupError(f"{pid} rejected its configuration: {dict(status.nacked)}")
                if not status.in_sync or not _admin_ready(f"{config.address}:{ADMIN_PORT}"):
                    pending.append(pid)
            try:
                ready = json.loads(self.state.echo_ready.read_text())
            except (OSError, ValueError):
                ready = None
            if ready is None:
                pending.append("workloads")
            elif ready.get("failed"):
                raise StartupError(f"workloads failed to listen: {ready['failed']}")
            elif not expected.issubset(set(ready.get("listening", []))):
                pending.append("workloads")
            for child in self.children.values():
                if child.proc is not None and child.proc.poll() is not None:
                    raise StartupError(f"{child.name} exited with {child.proc.returncode} during start-up; see {child.log_file}")
            if not pending:
                return
            time.sleep(0.05)
        raise StartupError(f"not ready after {READY_TIMEOUT:.0f}s: {', '.join(pending)}")

    def _shutdown(self) -> None:
        for child in self.children.values():
            child.stop()
        if self.xds is not None:
            self.xds.stop()

    def _write(self, extra: dict[str, Any]) -> None:
        proxies = []
        for pid, config in self.configs.items():
            child = self.children.get(pid)
            status = self.xds.node_status(pid) if self.xds else None
            proxies.append(
                {
                    "name": pid,
                    "kind": config.kind,
                    "address": config.address,
                    "pid": child.pid if child else None,
                    "admin": f"{config.address}:{ADMIN_PORT}",
                    "version": self.generation if status and status.in_sync else None,
                    "ready": bool(status and status.in_sync),
                    "restarts": child.restarts if child else 0,
                }
            )
        workloads_child = self.children.get("workloads")
        state = {
            **self.info,
            "control_plane": {"pid": os.getpid(), "xds": f"{self.snapshot.plan.control_plane}:{XDS_PORT}" if hasattr(self, "snapshot") else None},
            "proxies": proxies,
            "workloads_process": {"pid": workload_pid} if (workload_pid := workloads_child.pid if workloads_child else None) else None,
            "state_dir": str(self.state.root),
            **extra,
        }
        self.state.write_state(state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m waypost.local.supervisor")
    parser.add_argument("-f", "--filename", action="append", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    supervisor = Supervisor(StateDir(Path(args.state_dir)), args.filename, concurrency=args.concurrency)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
