"""Moving a running mesh from the proxies and workloads it has to the ones a new snapshot needs.

Make before break, in three steps:
1. start what is new: Envoys of new waypoints, listeners of new echo pods (removed pods keep serving);
2. push the new config to every existing proxy whose config changed, and wait for their ACKs;
3. stop what is gone: Envoys of removed waypoints, listeners of removed pods.
So a ztunnel never routes to a waypoint or pod that is not there yet, nor loses one it still routes to.

One exception: an address moves between a pod's application and the ztunnel when the pod is enrolled in
(or removed from) the ambient mesh, because the ztunnel binds an enrolled pod's IP (see
`mesh/addresses.py`). Whoever gives such an address up must do so before the other binds it, so an echo
listener on an address the proxies will bind stops in step 1, and one on an address the proxies hold
until step 2 starts in step 3.

Going back after a failure is the same move in the other direction: `roll_out` to the old configs.
"""

from __future__ import annotations

import dataclasses

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from waypost.envoy import ProxyConfig
from waypost.xds import EncodeError

from .fleet import ProxyFleet
from .workloads import WorkloadHost


@dataclass
class Rollout:
    started: list[str] = field(default_factory=list)  # proxies whose Envoy was started
    updated: list[str] = field(default_factory=list)  # running proxies that were pushed a new config
    stopped: list[str] = field(default_factory=list)  # proxies whose Envoy was stopped
    workloads_changed: bool = False
    error: str | None = None
    # Where the time went: "push" = translating the configs to xDS (encoding) and handing them over,
    # "ack" = waiting for the Envoys to ACK them and warm their listeners.
    timings_ms: dict[str, float] = field(default_factory=lambda: {"push": 0.0, "ack": 0.0})

    def _timed(self, what: str, since: float) -> float:
        now = time.monotonic()
        self.timings_ms[what] = round(self.timings_ms[what] + (now - since) * 1000, 1)
        return now


def roll_out(
    fleet: ProxyFleet,
    host: WorkloadHost,
    configs: Mapping[str, ProxyConfig],
    echo: list[dict[str, Any]],
    generations: Mapping[str, int],
    deadline: float,
    stopping: threading.Event,
) -> Rollout:
    """Serves `configs` (proxy id → config, each at its generation) and runs `echo`; stops on the first error."""
    out = Rollout()
    # An Envoy is (re)started when it is new or its address moved: its bootstrap names its admin address.
    fresh = [pid for pid, c in configs.items() if fleet.started_address(pid) != c.address]
    changed = [pid for pid, c in configs.items() if pid not in fresh and fleet.configs.get(pid) != c]
    gone = [pid for pid in fleet.configs if pid not in configs]
    try:
        # 1. make. The workload host first: it is the slowest to start (a Python process).
        held, needed = _proxy_ips(fleet.configs.values()), _proxy_ips(configs.values())
        claimed = {w["address"] for w in echo}
        first = [w for w in echo if w["address"] not in held]
        keep = [w for w in host.spec or [] if w["address"] not in claimed | needed]
        out.workloads_changed = host.set(first + keep, deadline)
        for pid in fresh:
            fleet.stop(pid)
            fleet.set_config(pid, configs[pid], generations[pid])
        for pid in fresh:
            fleet.start(pid)
            out.started.append(pid)
        out.error = fleet.wait(fresh, deadline, stopping, new=fresh) or (host.wait(deadline, stopping) if out.workloads_changed else None)
        if out.error:
            return out
        # 2. switch. Clusters make before break: a config that drops clusters is first served with them
        # still there, and they go once it is ACKed. Otherwise Envoy applies the cluster removal before the
        # route that stops naming them, and requests in between get 500 cluster_not_found.
        bridging = {pid: b for pid in changed if (b := _bridge(fleet.configs.get(pid), configs[pid])) is not None}
        t = time.monotonic()
        for pid in changed:
            if fleet.set_config(pid, bridging.get(pid, configs[pid]), generations[pid]):
                out.updated.append(pid)
        t = out._timed("push", t)
        out.error = fleet.wait(out.updated, deadline, stopping)
        t = out._timed("ack", t)
        if out.error:
            return out
        for pid in bridging:
            fleet.set_config(pid, configs[pid], generations[pid])
        t = out._timed("push", t)
        out.error = fleet.wait(list(bridging), deadline, stopping)
        out._timed("ack", t)
        if out.error:
            return out
        # 3. break
        for pid in gone:
            fleet.stop(pid)
            out.stopped.append(pid)
        if host.set(echo, deadline):
            out.workloads_changed = True
            out.error = host.wait(deadline, stopping)
    except EncodeError as exc:
        out.error = f"cannot encode the configuration: {exc}"
    except OSError as exc:
        out.error = f"cannot start a process: {exc}"
    return out


def _bridge(old: ProxyConfig | None, new: ProxyConfig) -> ProxyConfig | None:
    """`new` plus the clusters of `old` it drops; None when it drops none."""
    if old is None:
        return None
    kept = {c["name"] for c in new.clusters}
    dropped = [c for c in old.clusters if c["name"] not in kept]
    if not dropped:
        return None
    return dataclasses.replace(new, clusters=tuple(sorted((*new.clusters, *dropped), key=lambda c: c["name"])))


def _proxy_ips(configs: Iterable[ProxyConfig]) -> set[str]:
    """Every IP address some proxy listens on."""
    out = set()
    for config in configs:
        for listener in config.listeners:
            for entry in [listener, *listener.get("additional_addresses", [])]:
                address = entry.get("address", {}).get("socket_address", {}).get("address")
                if address:
                    out.add(address)
    return out
