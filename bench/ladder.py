"""Scenario 1, the data-path ladder: each rung adds one piece of the mesh path, measured in the same run.

    python bench/ladder.py [--rounds 2] [--fixed-seconds 3] [--max-seconds 4] [--quick]

Rungs (all on loopback, same nginx backend answering 1 KB, every Envoy with --concurrency 1):
  direct      client → nginx
  bare hop    client → one static Envoy (bench/bare_envoy.yaml: HCM + router) → nginx
  mesh L4     client → ztunnel → HBONE → ztunnel → nginx
  waypoint    client → ztunnel → HBONE → waypoint (L7) → HBONE → ztunnel → nginx, no policy
  +policy     as `waypoint`, with one ALLOW AuthorizationPolicy on the Service (the "full mesh path":
              policy and Istio's metrics on, no access log, as in Istio's default profile)
  +log        as `+policy`, with the access log on for its Service (Telemetry, provider `envoy`)
  heavy       as `waypoint`, with 1000 HTTPRoutes and 1000 AuthorizationPolicy rules on the Service the
              load goes to; the request matches the last route and the last rule (the worst case)

The client is this host at 127.0.0.1: a WorkloadEntry at 127.0.0.1 makes it a mesh client with its own
identity (wrk and h2load cannot bind a source address). Load: h2load at a fixed total rate (open loop,
HTTP/1.1) of 500 and 1000 rps over 4 and 16 connections, and wrk at the maximum rate over 1 and 16
connections. Within each round every load profile runs every rung back to back (A/B alternation);
even rounds reverse the rung order. CPU is utime+stime from /proc over the measured window, per process.

Prints a table per load profile, the ratios and the targets; writes bench/results/ladder.json.
"""

from __future__ import annotations

import argparse
import os
import string
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import (
    HERE, BoxMeter, CpuMeter, admin_get, config_features, ensure_tools, free_port, h2load_rate, mean, mesh_up,
    print_targets, start_nginx, stop_process, table, target, wait_port, wait_quiet, workdir, write_results, wrk,
)
from meshgen import ROUTE

NS = "bench"
ROUTES = 1000  # HTTPRoutes on the heavy Service (the last one is the catch-all the load matches)
RULES = 1000  # AuthorizationPolicy rules on the heavy Service (the last one allows the load generator)
RULES_PER_POLICY = 100
IDLE_SECONDS = 3.0
NCPU = os.cpu_count() or 1
FOREIGN_LIMIT = 0.25  # cores used by processes outside the benchmark above which a run is repeated
MAX_ATTEMPTS = 3

# MeshConfig as Istio's default profile has it, which its published performance figures use: no access log
# (waypost's own default is Istio's demo profile, logging to stdout). The `logged` rung turns the log on for
# its Service with a Telemetry resource, to show what it costs.
BASE = f"""\
apiVersion: v1
kind: Namespace
metadata: {{name: istio-system}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    accessLogFile: ""
---
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}, labels: {{istio.io/dataplane-mode: ambient}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: loadgen, namespace: {NS}}}
spec: {{address: 127.0.0.1, serviceAccount: loadgen, labels: {{app: loadgen}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: backend, namespace: {NS}}}
spec:
  selector: {{matchLabels: {{app: backend}}}}
  template:
    metadata: {{labels: {{app: backend}}}}
    spec:
      serviceAccountName: backend
      containers: [{{name: nginx, image: nginx, ports: [{{name: http, containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: l4, namespace: {NS}}}
spec:
  selector: {{app: backend}}
  ports: [{{name: http, port: 8080}}]
"""

WAYPOINT_SERVICE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {waypoint}, namespace: {ns}}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: v1
kind: Service
metadata: {{name: {service}, namespace: {ns}, labels: {{istio.io/use-waypoint: {waypoint}}}}}
spec:
  selector: {{app: backend}}
  ports: [{{name: http, port: 8080}}]
"""

ALLOW_LOADGEN = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {ns}}}
spec:
  targetRefs: [{{group: "", kind: Service, name: {service}}}]
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/{ns}/sa/loadgen]}}}}]
    to: [{{operation: {{methods: [GET]}}}}]
"""


def telemetry(name: str, service: str, ns: str, body: str) -> str:
    """A Telemetry resource for one Service; `body` is the rest of its spec (YAML, two-space indented)."""
    return (f"apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n"
            f"  targetRefs: [{{group: \"\", kind: Service, name: {service}}}]\n{body}")


def access_log(service: str, ns: str) -> str:
    """Turns the access log on for `service` (Istio's built-in provider `envoy`)."""
    return telemetry(f"log-{service}", service, ns, "  accessLogging: [{providers: [{name: envoy}]}]\n")


def heavy_service(service: str, waypoint: str, routes: bool, rules: bool) -> list[str]:
    """A Service behind its own waypoint, with ROUTES HTTPRoutes and/or RULES policy rules on it.

    Worst case on purpose: the load (GET / from the load generator) matches the last route (the "/"
    catch-all sorts after the 999 longer prefixes) and the last rule (the 999 others name other callers
    and paths, in policies that sort before the one allowing the load generator).
    """
    docs = [WAYPOINT_SERVICE.format(waypoint=waypoint, service=service, ns=NS)]
    if routes:
        docs += [ROUTE.format(name=f"{service}-{i:04d}", service=service, ns=NS, prefix=f"/r{i}") for i in range(ROUTES - 1)]
        docs.append(ROUTE.format(name=f"{service}-{ROUTES - 1:04d}", service=service, ns=NS, prefix="/"))
    if rules:
        dummy = RULES - 1
        for p in range(0, dummy, RULES_PER_POLICY):
            body = "".join(
                f"  - from: [{{source: {{principals: [cluster.local/ns/{NS}/sa/client{i}]}}}}]\n"
                f"    to: [{{operation: {{paths: [\"/r{i}/*\"]}}}}]\n"
                for i in range(p, min(p + RULES_PER_POLICY, dummy))
            )
            docs.append(
                f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {service}-{p:04d}, namespace: {NS}}}\n"
                f"spec:\n  targetRefs: [{{group: \"\", kind: Service, name: {service}}}]\n  action: ALLOW\n  rules:\n{body}"
            )
        docs.append(ALLOW_LOADGEN.format(name=f"zz-{service}-allow-loadgen", service=service, ns=NS))
    return docs


def manifests() -> str:
    docs = [BASE]
    docs.append(WAYPOINT_SERVICE.format(waypoint="waypoint", service="l7", ns=NS))
    docs.append(WAYPOINT_SERVICE.format(waypoint="waypoint-policy", service="l7p", ns=NS))
    docs.append(ALLOW_LOADGEN.format(name="allow-loadgen", service="l7p", ns=NS))
    docs.append(WAYPOINT_SERVICE.format(waypoint="waypoint-logged", service="l7log", ns=NS))
    docs.append(ALLOW_LOADGEN.format(name="allow-loadgen-logged", service="l7log", ns=NS))
    docs.append(access_log("l7log", NS))
    docs += heavy_service("heavy", "waypoint-heavy", routes=True, rules=True)
    docs += heavy_service("routes", "waypoint-routes", routes=True, rules=False)
    docs += heavy_service("rules", "waypoint-rules", routes=False, rules=True)
    return "---\n".join(docs)


# Rung → (label, Service it loads (None: not the mesh), the proxies on its path by role, which profiles).
# Proxy ids are waypost's: ztunnel~node-0, waypoint~NS~NAME. The last two rungs split `heavy` into its two
# halves; they run at max rate only, to keep the whole ladder within its time budget.
RUNGS = {
    "direct": ("direct", [], "all"),
    "bare": ("bare Envoy hop", ["bare"], "all"),
    "l4": ("mesh L4 (ztunnel only)", ["ztunnel"], "all"),
    "waypoint": ("mesh + waypoint", ["ztunnel", "waypoint"], "all"),
    "policy": ("mesh + waypoint + policy", ["ztunnel", "waypoint-policy"], "all"),
    "logged": ("+ policy + access log", ["ztunnel", "waypoint-logged"], "all"),
    "heavy": ("waypoint, 1000 routes+rules", ["ztunnel", "waypoint-heavy"], "all"),
    "routes": ("waypoint, 1000 routes only", ["ztunnel", "waypoint-routes"], "max"),
    "rules": ("waypoint, 1000 rules only", ["ztunnel", "waypoint-rules"], "max"),
}
FULL = "policy"  # the rung the "full mesh path" targets are judged on


def http_get(url: str, close: bool = False) -> tuple[int, int]:
    """(status, body size) of one GET; (0, 0) when the connection fails."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request("GET", u.path or "/", headers={"Connection": "close"} if close else {})
        r = conn.getresponse()
        return r.status, len(r.read())
    except OSError:
        return 0, 0
    finally:
        conn.close()


# Unloaded latency as the reference spike measured it (shared spec/envoy-dataplane.md §5, latency.py): one
# keep-alive client sending GETs one after another, the first ones dropped as warm-up. The spike's figures on
# this machine class, for comparison: direct p50 123-133 µs, full path (policy + stats) 449-469 µs, so
# 0.32-0.34 ms added.
SEQUENTIAL_RUNGS = ("direct", "bare", "l4", "waypoint", "policy")
SPIKE_FULL_ADDED_P50_MS = (0.32, 0.34)
SEQUENTIAL_COLUMNS = [("rung", "rung", ""), ("p50_ms", "p50 ms", ".3f"), ("p90_ms", "p90 ms", ".3f"), ("p99_ms", "p99 ms", ".3f"),
                      ("added_p50_ms", "added p50 ms", ".3f")]  # its table, here and in bench/RESULTS.md


def sequential_latency(url: str, requests: int, warmup: int = 200) -> dict[str, float]:
    """p50/p90/p99 in ms of `requests` sequential keep-alive GETs (after `warmup` unmeasured ones)."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    took = []
    try:
        for i in range(warmup + requests):
            start = time.perf_counter()
            conn.request("GET", u.path or "/")
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"{url} answered {response.status} during the sequential latency run")
            if i >= warmup:
                took.append((time.perf_counter() - start) * 1000)
    finally:
        conn.close()
    took.sort()
    return {q: took[min(len(took) - 1, int(len(took) * f))] for q, f in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99))}


def profiles(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for rate in args.rates:
        for conns in args.fixed_connections:
            out.append({"name": f"{rate} rps, {conns} conn", "kind": "fixed", "rate": rate, "connections": conns})
    for conns in args.max_connections:
        out.append({"name": f"max rate, {conns} conn", "kind": "max", "connections": conns})
    return out


def run_one(profile: dict[str, Any], url: str, meter: CpuMeter, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    box = BoxMeter()
    if profile["kind"] == "fixed":
        # Measure CPU over h2load's main phase only: (re)start the meters when its warm-up ends.
        def restart() -> None:
            meter.start()
            box.start()

        timer = threading.Timer(args.warmup, restart)
        restart()
        timer.start()
        try:
            result = h2load_rate(url, profile["rate"], profile["connections"], args.fixed_seconds, args.warmup, work)
        finally:
            timer.cancel()
        seconds = args.fixed_seconds
        result["loadgen_cores"] = round(result["loadgen_cpu_s"] / (args.fixed_seconds + args.warmup), 3)
    else:
        meter.start()
        box.start()
        result = wrk(url, args.max_seconds, profile["connections"])
        seconds = args.max_seconds
        result["loadgen_cores"] = round(result["loadgen_cpu_s"] / seconds, 3)
    cpu = meter.stop()
    result["box_busy"] = round(box.stop(), 3)
    # CPU the box spent on processes that are not part of the benchmark (another test run, say).
    result["foreign_cores"] = round(max(0.0, result["box_busy"] * NCPU - sum(cpu.values()) / seconds - result["loadgen_cores"]), 3)
    result["cpu_s"] = {k: round(v, 3) for k, v in cpu.items()}
    result["cpu_ms_per_1k"] = {k: round(1e6 * v / max(result["requests"], 1), 2) for k, v in cpu.items()}
    result["cpu_cores"] = {k: round(v / seconds, 3) for k, v in cpu.items()}
    result["sleeps_per_req"] = {k: round(v / max(result["requests"], 1), 2) for k, v in meter.sleeps.items()}
    result["rss_mb"] = meter.rss()
    return result


def start_bare_envoy(work: Path, backend: str) -> tuple[subprocess.Popen, str]:
    from waypost.local.binary import envoy_path

    port = free_port()
    (work / "bare.yaml").write_text(
        string.Template((HERE / "bare_envoy.yaml").read_text()).substitute(
            admin_port=free_port(), listen_address="127.0.0.1", listen_port=port, backend_address=backend, backend_port=8080
        )
    )
    with open(work / "bare.log", "wb") as log:
        proc = subprocess.Popen(
            [envoy_path(), "-c", str(work / "bare.yaml"), "--concurrency", "1", "--disable-hot-restart", "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
        )
    wait_port("127.0.0.1", port)
    return proc, f"http://127.0.0.1:{port}/"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fixed-seconds", type=float, default=3.0, help="measured duration of a fixed-rate run")
    parser.add_argument("--warmup", type=float, default=0.5, help="h2load warm-up before each fixed-rate run")
    parser.add_argument("--max-seconds", type=float, default=4.0, help="duration of a max-rate run (whole seconds)")
    parser.add_argument("--rates", type=int, nargs="+", default=[500, 1000])
    parser.add_argument("--fixed-connections", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--max-connections", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--sequential", type=int, default=2000, help="requests per rung and round of the sequential-client latency run")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s runs: a smoke test of the script")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.fixed_seconds, args.max_seconds, args.warmup, args.sequential = 1, 1.0, 1.0, 0.2, 200
    ensure_tools()
    work = workdir("ladder")
    (work / "mesh.yaml").write_text(manifests())
    nginx = bare = None
    started = time.monotonic()
    with mesh_up([work / "mesh.yaml"], work / "state") as mesh:
        try:
            backend = mesh.workload("backend")["app_address"]
            nginx = start_nginx(work / "nginx", [(backend, 8080)])
            bare, bare_url = start_bare_envoy(work, backend)
            proxies = mesh.proxies()
            waypoints = ["waypoint", "waypoint-policy", "waypoint-logged", "waypoint-heavy", "waypoint-routes", "waypoint-rules"]
            pids = {"ztunnel": proxies["ztunnel~node-0"]["pid"], **{w: proxies[f"waypoint~{NS}~{w}"]["pid"] for w in waypoints}}
            pids.update({"bare": bare.pid, "nginx": nginx.pid, "control plane": mesh.control_plane_pid})
            urls = {
                "direct": f"http://{backend}:8080/",
                "bare": bare_url,
                **{rung: f"http://{mesh.vip(svc)}:8080/" for rung, svc in
                   (("l4", "l4"), ("waypoint", "l7"), ("policy", "l7p"), ("logged", "l7log"), ("heavy", "heavy"), ("routes", "routes"), ("rules", "rules"))},
            }
            features = {name: config_features(proxies[pid]["admin"]) for name, pid in
                        (("ztunnel", "ztunnel~node-0"), ("waypoint", f"waypoint~{NS}~waypoint"), ("waypoint-policy", f"waypoint~{NS}~waypoint-policy"),
                         ("waypoint-logged", f"waypoint~{NS}~waypoint-logged"))}
            heavy_dump_mb = len(admin_get(proxies[f"waypoint~{NS}~waypoint-heavy"]["admin"], "/config_dump")) / 1e6
            # Every rung answers 200 with the 1 KB body before anything is measured (keep-alive, as the load
            # generators; the report says what `Connection: close` does on each rung).
            close_ok = {}
            for rung, url in urls.items():
                status, size = http_get(url)
                if status != 200 or size != 1024:
                    raise SystemExit(f"{RUNGS[rung][0]} ({url}) answered {status} with {size} bytes; logs in {work}/state/logs")
                close_ok[rung] = http_get(url, close=True)[0] == 200
            meter = CpuMeter(pids, trees=["nginx"])
            quiet = wait_quiet()
            # What the processes burn with no traffic at all.
            meter.start()
            time.sleep(IDLE_SECONDS)
            idle = {k: round(v / IDLE_SECONDS, 4) for k, v in meter.stop().items()}
            setup_seconds = time.monotonic() - started
            runs: list[dict[str, Any]] = []
            sequential: list[dict[str, Any]] = []
            for rnd in range(1, args.rounds + 1):
                order = list(RUNGS) if rnd % 2 else list(reversed(RUNGS))
                for rung in [r for r in order if r in SEQUENTIAL_RUNGS and args.sequential > 0]:  # 0: skip
                    sequential.append({"round": rnd, "rung": rung, **sequential_latency(urls[rung], args.sequential)})
                    print(f"  round {rnd}  sequential client   {RUNGS[rung][0]:<28} p50 {sequential[-1]['p50_ms']:.3f} ms", flush=True)
                for profile in profiles(args):
                    for rung in order:
                        if RUNGS[rung][2] != "all" and RUNGS[rung][2] != profile["kind"]:
                            continue
                        # A run during which other processes took a noticeable share of the cores is repeated.
                        for attempt in range(1, MAX_ATTEMPTS + 1):
                            result = run_one(profile, urls[rung], meter, args, work)
                            if result["foreign_cores"] <= FOREIGN_LIMIT:
                                break
                            print(f"  (other processes used {result['foreign_cores']:.2f} cores: repeating)", flush=True)
                        result["attempts"] = attempt
                        runs.append({"round": rnd, "profile": profile["name"], "rung": rung, **result})
                        print(f"  round {rnd}  {profile['name']:<18} {RUNGS[rung][0]:<28} {result['rps']:>9.0f} req/s  "
                              f"p50 {result['p50_ms']:.3f} ms  box busy {result['box_busy']:.0%}", flush=True)
        finally:
            stop_process(bare)
            stop_process(nginx)
    extra = {"features": features, "up_seconds": mesh.up_seconds, "setup_seconds": setup_seconds,
             "heavy_config_dump_mb": heavy_dump_mb, "box_busy_before_start": quiet, "connection_close_works": close_ok, "idle_cores": idle,
             "sequential_runs": sequential}
    return report(args, runs, extra)


def sequential_summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rung: the sequential-client quantiles, means over rounds, and the p50 added over direct."""
    rows = []
    for rung in SEQUENTIAL_RUNGS:
        rs = [r for r in runs if r["rung"] == rung]
        if rs:
            rows.append({"key": rung, "rung": RUNGS[rung][0], **{q: mean(r[q] for r in rs) for q in ("p50_ms", "p90_ms", "p99_ms")}})
    direct = next((r["p50_ms"] for r in rows if r["key"] == "direct"), None)
    for r in rows:
        r["added_p50_ms"] = None if direct is None or r["key"] == "direct" else r["p50_ms"] - direct
    return rows


def summarize(runs: list[dict[str, Any]], profile: str, rung: str) -> dict[str, Any] | None:
    rs = [r for r in runs if r["profile"] == profile and r["rung"] == rung]
    if not rs:
        return None
    roles = RUNGS[rung][1]
    rps = [r["rps"] for r in rs]
    return {
        "rung": RUNGS[rung][0],
        "key": rung,
        "rps": mean(rps),
        "rps_spread_pct": 100 * (max(rps) - min(rps)) / mean(rps) if len(rps) > 1 else 0.0,
        "p50_ms": mean(r["p50_ms"] for r in rs),
        "p90_ms": mean(r["p90_ms"] for r in rs),
        "p99_ms": mean(r["p99_ms"] for r in rs),
        "errors": sum(r["errors"] for r in rs),
        "path_cpu_ms_per_1k": mean(sum(r["cpu_ms_per_1k"][p] for p in roles) for r in rs),
        "proxies_cpu": " ".join(f"{p}={mean(r['cpu_ms_per_1k'][p] for r in rs):.1f}" for p in roles) or "-",
        "nginx_cpu_ms_per_1k": mean(r["cpu_ms_per_1k"]["nginx"] for r in rs),
        "sleeps": " ".join(f"{p}={mean(r['sleeps_per_req'][p] for r in rs):.1f}" for p in [*roles, "nginx"]),
        "path_rss_mb": " ".join(f"{p}={max(r['rss_mb'][p] for r in rs):.0f}" for p in roles) or "-",
        "path_cores": mean(sum(r["cpu_cores"][p] for p in roles) for r in rs),
        "box_busy": mean(r["box_busy"] for r in rs),
        "loadgen_cores": mean(r["loadgen_cores"] for r in rs),
        "foreign_cores": mean(r["foreign_cores"] for r in rs),
        "repeats": sum(r["attempts"] - 1 for r in rs),
    }


COLUMNS = [
    ("rung", "rung", ""),
    ("rps", "req/s", ".0f"),
    ("rps_spread_pct", "±%", ".0f"),
    ("p50_ms", "p50 ms", ".3f"),
    ("p90_ms", "p90 ms", ".3f"),
    ("p99_ms", "p99 ms", ".3f"),
    ("errors", "err", "d"),
    ("path_cpu_ms_per_1k", "path CPU ms/1k", ".1f"),
    ("proxies_cpu", "per proxy CPU ms/1k", ""),
    ("nginx_cpu_ms_per_1k", "nginx ms/1k", ".1f"),
    ("sleeps", "sleeps/req", ""),
    ("path_cores", "path cores", ".2f"),
    ("loadgen_cores", "loadgen cores", ".2f"),
    ("box_busy", "box busy", ".0%"),
    ("foreign_cores", "other procs cores", ".2f"),
    ("path_rss_mb", "RSS MB", ""),
]


def report(args: argparse.Namespace, runs: list[dict[str, Any]], extra: dict[str, Any]) -> int:
    summary: dict[str, list[dict[str, Any]]] = {}
    print()
    for profile in [p["name"] for p in profiles(args)]:
        rows = [row for rung in RUNGS if (row := summarize(runs, profile, rung))]
        summary[profile] = rows
        print(f"== {profile}: {args.rounds} round(s); req/s and latencies are means over rounds; "
              "CPU = utime+stime per 1000 requests; box busy = both cores, all processes")
        print(table(rows, COLUMNS))
        print()
    by = {p: {r["key"]: r for r in rows} for p, rows in summary.items()}

    ratios = []
    for conns in args.max_connections:
        rows = by[f"max rate, {conns} conn"]
        for rung in rows:
            ratios.append({"profile": f"max rate, {conns} conn", "rung": RUNGS[rung][0],
                           "of_direct": rows[rung]["rps"] / rows["direct"]["rps"], "of_bare": rows[rung]["rps"] / rows["bare"]["rps"],
                           "of_waypoint": rows[rung]["rps"] / rows["waypoint"]["rps"]})
    print("Throughput ratios at max rate:")
    print(table(ratios, [("profile", "profile", ""), ("rung", "rung", ""), ("of_direct", "÷ direct", ".1%"),
                         ("of_bare", "÷ bare hop", ".1%"), ("of_waypoint", "÷ empty waypoint", ".1%")]))
    added = []
    for rate in args.rates:
        for conns in args.fixed_connections:
            rows = by[f"{rate} rps, {conns} conn"]
            for rung in list(rows)[1:]:
                added.append({"profile": f"{rate} rps, {conns} conn", "rung": RUNGS[rung][0],
                              "p50": rows[rung]["p50_ms"] - rows["direct"]["p50_ms"], "p99": rows[rung]["p99_ms"] - rows["direct"]["p99_ms"]})
    print("\nLatency added over direct at fixed rates:")
    print(table(added, [("profile", "profile", ""), ("rung", "rung", ""), ("p50", "added p50 ms", ".3f"), ("p99", "added p99 ms", ".3f")]))
    seq = sequential_summary(extra["sequential_runs"])
    print(f"\nUnloaded latency, one sequential keep-alive client ({args.sequential} GETs per rung and round, the spike's method; "
          f"its full path added {SPIKE_FULL_ADDED_P50_MS[0]:.2f}-{SPIKE_FULL_ADDED_P50_MS[1]:.2f} ms p50):")
    print(table(seq, SEQUENTIAL_COLUMNS))
    print("\nIdle CPU (cores, no traffic): " + ", ".join(f"{k} {v:.3f}" for k, v in extra["idle_cores"].items()))

    # Targets. The full mesh path is the `policy` rung; judged at 1000 rps on the worse of the connection counts.
    at_1k = [by[f"1000 rps, {c} conn"] for c in args.fixed_connections] if 1000 in args.rates else []
    metrics_on = extra["features"]["waypoint-policy"]["metrics (stats access logger)"]
    top = max(args.max_connections)
    max_rows = by[f"max rate, {top} conn"]
    targets = [
        target(
            "full mesh path (ztunnel+waypoint+policy) CPU per 1000 requests at 1000 rps",
            max(r[FULL]["path_cpu_ms_per_1k"] for r in at_1k) / 1000 if at_1k else None, 0.10, "vCPU-s",
            note=("metrics ON" if metrics_on else "metrics NOT in the config: not implemented") + "; worse of 4/16 conn; "
            f"at max rate: {max_rows[FULL]['path_cpu_ms_per_1k'] / 1000:.3f}",
        ),
        target("added p50 over direct at 1000 rps (full mesh path)", max(r[FULL]["p50_ms"] - r["direct"]["p50_ms"] for r in at_1k) if at_1k else None,
               0.30, "ms", note="worse of 4/16 conn"),
        target(f"max throughput of the full mesh path ÷ one bare Envoy hop ({top} conn)", max_rows[FULL]["rps"] / max_rows["bare"]["rps"], 0.65, "", True),
        target(f"policy-heavy waypoint ÷ empty waypoint throughput ({top} conn)", max_rows["heavy"]["rps"] / max_rows["waypoint"]["rps"], 0.90, "", True),
    ]
    print("\nTargets:")
    print_targets(targets)
    print(f"\nPer-request features in the proxies' config (from /config_dump): {extra['features']}")
    broken = [RUNGS[k][0] for k, ok in extra["connection_close_works"].items() if not ok]
    if broken:
        print(f"FINDING: a GET with `Connection: close` gets no response (connection reset) on: {', '.join(broken)}")
    print(f"Heavy waypoint /config_dump: {extra['heavy_config_dump_mb']:.1f} MB. waypost up: {extra['up_seconds']:.1f} s; "
          f"setup before the first run: {extra['setup_seconds']:.1f} s.")
    path = write_results("ladder", {
        "args": vars(args), "rungs": {k: v[0] for k, v in RUNGS.items()}, **extra,
        "summary": summary, "throughput_ratios": ratios, "added_latency": added, "sequential_latency": seq,
        "spike_full_added_p50_ms": SPIKE_FULL_ADDED_P50_MS, "targets": targets, "runs": runs,
    })
    print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
