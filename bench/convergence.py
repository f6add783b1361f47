"""Scenario 3, convergence: how long a change takes to be in force in a running mesh of 1000 Services.

    python bench/convergence.py [--services 1000] [--changes 50] [--file-changes 5] [--bulk 1000]

The mesh: the pooled synthetic mesh of bench/scale.py (1000 Services, each with an HTTPRoute and an
AuthorizationPolicy, over 10 Deployments of 2 pods, all behind one waypoint; the issue's 2-pods-per-
Service shape cannot be translated at 1000 Services, see scale.py), plus the Service `echo` with two
echo Deployments (v1, v2) behind the same waypoint, and a WorkloadEntry at 127.0.0.1 so that this
process is a mesh client.

1. One route change, `--changes` times per mesh size, through the live `apply` path: the HTTPRoute `echo-split` sends
   /p<i> to echo-v2 (everything else to echo-v1); change i moves it to /p<i>. Measured from the moment
   the request goes to the supervisor's control socket (what `waypost apply -f` sends; the CLI's own
   Python start-up is measured separately on a few changes):
   - ACK:      every affected Envoy has ACKed: the supervisor's answer, less the bookkeeping it does after
               the ACKs and before answering (status documents, state files: `commit` in its timings),
   - answer:   the supervisor's answer (it says which Envoys were updated),
   - observed: a prober thread sends GET /p<i> through the mesh back to back from the start, and the
               first answer from an echo-v2 pod is the new behaviour in force.
2. The same change made by writing the watched manifest file (`waypost up -f` polls it), `--file-changes`
   times: file write → observed.
   Then `--policy-changes` edits of one Service's AuthorizationPolicy (apply → ACK; not a target: the policy
   is in the waypoint's main listener, so each edit is an LDS update of it), and the control plane's RSS
   after all these changes (the encoding cache once grew by ~2 MB a change).
3. 1000 HTTPRoutes created at once (one per synthetic Service) with one apply: until the supervisor
   answered (all ACKed), and until `resources.json` (what `waypost get` reads) shows every route Accepted
   with ResolvedRefs for its parent.

Prints p50/p99 tables and the targets; writes bench/results/convergence.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import HERE, WAYPOST, BoxMeter, mesh_up, percentile, print_targets, rss_mb, table, target, wait_quiet, workdir, write_results
from meshgen import NAMESPACE, POLICY, routes_only, synthetic_mesh

# Imported here, not on the first call: the first change's timing is the supervisor's, not this import's.
from waypost.local.control import call

ECHO = f"""\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: prober, namespace: {NAMESPACE}}}
spec: {{address: 127.0.0.1, serviceAccount: prober, labels: {{app: prober}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo-v1, namespace: {NAMESPACE}}}
spec:
  selector: {{matchLabels: {{app: echo, version: v1}}}}
  template:
    metadata: {{labels: {{app: echo, version: v1}}}}
    spec:
      containers: [{{name: echo, image: waypost/echo, ports: [{{name: http, containerPort: 8080}}]}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo-v2, namespace: {NAMESPACE}}}
spec:
  selector: {{matchLabels: {{app: echo, version: v2}}}}
  template:
    metadata: {{labels: {{app: echo, version: v2}}}}
    spec:
      containers: [{{name: echo, image: waypost/echo, ports: [{{name: http, containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: {NAMESPACE}, labels: {{istio.io/use-waypoint: waypoint}}}}
spec:
  selector: {{app: echo}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo-v1, namespace: {NAMESPACE}}}
spec:
  selector: {{app: echo, version: v1}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo-v2, namespace: {NAMESPACE}}}
spec:
  selector: {{app: echo, version: v2}}
  ports: [{{name: http, port: 8080}}]
"""

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo-split, namespace: {ns}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo, port: 8080}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /p{i}}}}}]
    backendRefs: [{{name: echo-v2, port: 8080}}]
  - backendRefs: [{{name: echo-v1, port: 8080}}]
"""


class Prober:
    """Sends GET <path> to the VIP every INTERVAL (keep-alive), recording when an echo-v2 pod first answers.

    Paced, not back to back: a prober that saturates the mesh would slow the very supervisor it times.
    """

    INTERVAL = 0.002

    def __init__(self, vip: str, port: int) -> None:
        self.vip, self.port = vip, port
        self.path = "/"
        self.seen_at: float | None = None
        self.requests = 0
        self._stop = threading.Event()
        self._armed = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def arm(self, path: str) -> None:
        self.path, self.seen_at = path, None
        self._armed.set()

    def wait(self, timeout: float) -> float | None:
        deadline = time.perf_counter() + timeout
        while self.seen_at is None and time.perf_counter() < deadline:
            time.sleep(0.001)
        self._armed.clear()
        return self.seen_at

    def stop(self) -> None:
        self._stop.set()
        self._armed.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            self._armed.wait()
            if self._stop.is_set():
                break
            path = self.path
            try:
                conn = conn or http.client.HTTPConnection(self.vip, self.port, timeout=5)
                conn.request("GET", path)
                body = conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn = None
                time.sleep(0.001)
                continue
            self.requests += 1
            if b"echo-v2" in body and path == self.path and self.seen_at is None:
                self.seen_at = time.perf_counter()
            time.sleep(self.INTERVAL)


def ack_ms(answered_after: float, answer: dict[str, Any]) -> float:
    """Request → every affected Envoy ACKed, in ms: the time until the answer (`answered_after`, seconds) less
    what the supervisor did after the ACKs (its total less compute and rollout)."""
    t = answer["timings_ms"]
    return answered_after * 1000 - (t["total"] - t["compute"] - t["rollout"])


def control_call(state_dir: Path, paths: list[Path]) -> dict[str, Any]:
    return call(state_dir / "control.sock", {"op": "apply", "paths": [str(p) for p in paths]}, timeout=300)


def routes_attached(state_dir: Path, names: set[str]) -> int:
    """How many of the named HTTPRoutes resources.json shows Accepted and ResolvedRefs on every parent."""
    try:
        docs = json.loads((state_dir / "resources.json").read_text())
    except (OSError, ValueError):
        return 0
    n = 0
    for d in docs:
        if d.get("kind") != "HTTPRoute" or d["metadata"]["name"] not in names:
            continue
        parents = d.get("status", {}).get("parents", [])
        ok = parents and all(
            {c["type"]: c["status"] for c in p.get("conditions", [])}.get(k) == "True" for p in parents for k in ("Accepted", "ResolvedRefs")
        )
        n += bool(ok)
    return n


def stats(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99), "max": max(values), "min": min(values)}


def run(services: int, changes: int, cli_changes: int, file_changes: int, bulk_routes: int, policy_changes: int = 10) -> dict[str, Any]:
    work = workdir(f"convergence-{services}")
    (work / "synthetic.yaml").write_text(synthetic_mesh(services, deployments=10))
    (work / "echo.yaml").write_text(ECHO)
    route_file = work / "route.yaml"  # watched: `up -f` names it
    route_file.write_text(ROUTE.format(ns=NAMESPACE, i=0))
    state_dir = work / "state"
    samples: dict[str, list[float]] = {"apply→ACK": [], "apply→answer": [], "apply→observed": [], "cli→answer": [], "cli→observed": [], "file write→observed": [],
                                       "policy apply→ACK": []}
    server: dict[str, list[float]] = {"compute": [], "rollout": [], "rollout push": [], "rollout ack": [], "commit": [], "total": []}
    policy_server: dict[str, list[float]] = {k: [] for k in server}  # the same, for the policy edits
    updated: list[list[str]] = []
    print(f"mesh of {services} Services: {changes} applies, {cli_changes} CLI applies, {file_changes} file edits, {bulk_routes} routes at once", flush=True)
    box = BoxMeter()
    box.start()
    with mesh_up([work / "synthetic.yaml", work / "echo.yaml", route_file], state_dir, timeout=600) as mesh:
        print(f"  up in {mesh.up_seconds:.1f} s", flush=True)
        prober = Prober(mesh.vip("echo"), 8080)
        rss_at_start = rss_mb(mesh.control_plane_pid)
        try:
            # 1. apply, over the control socket, then a few through the CLI.
            for i in range(1, changes + cli_changes + 1):
                f = work / f"change-{i}.yaml"
                f.write_text(ROUTE.format(ns=NAMESPACE, i=i))
                via_cli = i > changes
                prober.arm(f"/p{i}")
                t0 = time.perf_counter()
                if via_cli:
                    proc = subprocess.run([*WAYPOST, "apply", "-f", str(f), "--state-dir", str(state_dir)], capture_output=True, text=True)
                    if proc.returncode != 0:
                        raise SystemExit(f"waypost apply failed: {proc.stdout}{proc.stderr}")
                    answer = None
                else:
                    answer = control_call(state_dir, [f])
                    if not answer.get("ok"):
                        raise SystemExit(f"apply failed: {answer}")
                acked = time.perf_counter()
                seen = prober.wait(60)
                if seen is None:
                    raise SystemExit(f"change {i}: the prober never saw /p{i} answered by echo-v2")
                kind = "cli" if via_cli else "apply"
                samples[f"{kind}→answer"].append((acked - t0) * 1000)
                if answer:
                    samples["apply→ACK"].append(ack_ms(acked - t0, answer))
                samples[f"{kind}→observed"].append((seen - t0) * 1000)
                if answer:
                    for k in server:
                        server[k].append(answer["timings_ms"].get(k, float("nan")))
                    updated.append(answer["proxies"]["updated"])
                if i % 10 == 0:
                    print(f"  {i} changes", flush=True)
            # 2. edit the watched file.
            for j in range(file_changes):
                i = 1000 + j
                prober.arm(f"/p{i}")
                t0 = time.perf_counter()
                route_file.write_text(ROUTE.format(ns=NAMESPACE, i=i))
                seen = prober.wait(60)
                if seen is None:
                    raise SystemExit(f"file change {j}: never observed")
                samples["file write→observed"].append((seen - t0) * 1000)
                time.sleep(1.0)  # the supervisor finishes the change (bookkeeping) before the next write
            # 2b. AuthorizationPolicy edits (not a target): a policy lives in its Service's chain of the
            # waypoint's main listener, so its change is an LDS update of that listener, not an RDS one.
            for j in range(policy_changes):
                f = work / f"policy-{j}.yaml"
                f.write_text(POLICY.format(name="svc0", ns=NAMESPACE, service="svc0", caller=f"app{j % 10}", prefix=f"/policy{j}"))
                t0 = time.perf_counter()
                answer = control_call(state_dir, [f])
                if not answer.get("ok"):
                    raise SystemExit(f"policy apply failed: {answer}")
                samples["policy apply→ACK"].append(ack_ms(time.perf_counter() - t0, answer))
                for k in policy_server:
                    policy_server[k].append(answer["timings_ms"].get(k, float("nan")))
            rss_after_changes = rss_mb(mesh.control_plane_pid)
            # 3. many routes at once.
            bulk = work / "bulk.yaml"
            n = min(bulk_routes, services)
            bulk.write_text(routes_only(n))
            names = {f"bulk{i}" for i in range(n)}
            t0 = time.perf_counter()
            answer = control_call(state_dir, [bulk])
            bulk_acked = (time.perf_counter() - t0) * 1000
            if not answer.get("ok"):
                raise SystemExit(f"bulk apply failed: {answer}")
            while routes_attached(state_dir, names) < len(names):
                if time.perf_counter() - t0 > 120:
                    raise SystemExit("the bulk routes never all showed as attached")
                time.sleep(0.01)
            bulk_attached = (time.perf_counter() - t0) * 1000
            probes = prober.requests
        finally:
            prober.stop()
    rows = [{"measure": k, **stats(v)} for k, v in samples.items() if v]
    rows += [{"measure": f"inside the supervisor: {k}", **stats(v)} for k, v in server.items() if v]
    rows += [{"measure": f"policy edit, inside the supervisor: {k}", **stats(v)} for k, v in policy_server.items() if v]
    return {
        "services": services, "up_seconds": mesh.up_seconds, "summary": rows, "samples_ms": samples, "server_timings_ms": server,
        "updated": sorted({p for u in updated for p in u}), "probes": probes, "box_busy": round(box.stop(), 3),
        "bulk": {"routes": n, "acked_ms": bulk_acked, "attached_ms": bulk_attached, "server_timings_ms": answer["timings_ms"]},
        "cp_rss_mb": {"up": round(rss_at_start, 1), "after_changes": round(rss_after_changes, 1), "changes": changes + cli_changes + file_changes + policy_changes},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, nargs="+", default=[100, 1000], help="mesh sizes, one phase each")
    parser.add_argument("--changes", type=int, nargs="+", default=[50, 50], help="applies per phase (the issue: p50/p99 over 50 changes)")
    parser.add_argument("--cli-changes", type=int, default=2, help="changes made with the `waypost apply` CLI (start-up included)")
    parser.add_argument("--file-changes", type=int, default=2)
    parser.add_argument("--bulk", type=int, default=1000, help="HTTPRoutes created by one apply (at most one per Service)")
    parser.add_argument("--policy-changes", type=int, default=10, help="AuthorizationPolicy edits per phase (timed, not a target)")
    args = parser.parse_args()
    if len(args.changes) != len(args.services):
        parser.error("give one --changes value per --services value")
    wait_quiet()
    phases = [run(n, c, args.cli_changes, args.file_changes, args.bulk, args.policy_changes) for n, c in zip(args.services, args.changes)]
    for ph in phases:
        print(f"\nOne route change in a mesh of {ph['services']} Services (+ echo), ms from the request:")
        print(table(ph["summary"], [("measure", "measure", ""), ("n", "n", "d"), ("p50", "p50 ms", ".1f"), ("p99", "p99 ms", ".1f"),
                                    ("min", "min ms", ".1f"), ("max", "max ms", ".1f")]))
        print(f"Envoys updated per change: {ph['updated']} (prober: {ph['probes']} requests, one every {Prober.INTERVAL * 1000:.0f} ms); "
              f"box busy over the phase: {ph['box_busy']:.0%}")
        b = ph["bulk"]
        print(f"{b['routes']} HTTPRoutes created by one apply: the supervisor answered (all ACKed) after {b['acked_ms']:.0f} ms "
              f"(inside: {b['server_timings_ms']}); all attached in resources.json after {b['attached_ms']:.0f} ms")
        r = ph["cp_rss_mb"]
        print(f"control-plane RSS: {r['up']:.0f} MB after `up`, {r['after_changes']:.0f} MB after {r['changes']} changes")
    big = max(phases, key=lambda p: p["services"])
    ack = stats(big["samples_ms"]["apply→ACK"])
    targets = [
        target(f"one route change ACKed by all affected Envoys, p99 over {ack['n']} (apply → ACK, {big['services']} Services)",
               ack["p99"], 50, "ms", note=f"p50 {ack['p50']:.0f} ms"),
        target(f"{big['bulk']['routes']} routes created at once → all attached", big["bulk"]["attached_ms"] / 1000, 1.0, "s"),
    ]
    print("\nTargets:")
    print_targets(targets)
    path = write_results("convergence", {
        "args": vars(args), "method": "live: waypost apply over the control socket (what the CLI sends), the CLI itself, and watched-file edits",
        "phases": phases, "targets": targets,
    })
    print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
