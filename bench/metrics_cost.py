"""What Istio's metrics cost a waypoint: the same L7 path with metrics on and off, side by side in one run.

    python bench/metrics_cost.py [--rounds 4] [--seconds 5] [--connections 16]

One mesh, two waypoints, each in front of its own Service with the same nginx backend (1 KB answers):
  metrics on   `waypoint`: the product's config (stats access loggers, grpc_stats and its Lua reader,
               the text access log)
  metrics off  `waypoint-nometrics`: the same config with every metrics piece of envoy/telemetry.py taken
               out by `telemetry.without_metrics` (the text access log stays), applied to that waypoint's
               listeners before they are served

The product has no switch for metrics, so this script runs the mesh's supervisor itself (`--as-supervisor`,
the same `waypost.local.supervisor.main` that `waypost up --detach` starts) after wrapping
`waypost.envoy.waypoint.translate` for the `-nometrics` waypoint. Everything else is `waypost up` as usual;
the script checks in each waypoint's /config_dump that the stats loggers are there, or not.

Load: wrk at the maximum rate (HTTP/1.1 keep-alive, closed loop) from 127.0.0.1 (a WorkloadEntry makes it a
mesh client), alternating on/off within each round and swapping the order every round. A run during which
other processes used more than 0.25 cores is repeated (up to 3 times). Prints req/s and the waypoint's CPU
per 1000 requests for each side, the throughput ratio on ÷ off (target ≥ 90%) and writes
bench/results/metrics_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    WAYPOST,
    BoxMeter,
    CpuMeter,
    Mesh,
    config_features,
    ensure_tools,
    mean,
    print_targets,
    start_nginx,
    stop_process,
    table,
    target,
    wait_quiet,
    workdir,
    write_results,
    wrk,
)
from ladder import BASE, NS, WAYPOINT_SERVICE

NCPU = os.cpu_count() or 1
FOREIGN_LIMIT = 0.25  # cores used by processes outside the benchmark above which a run is repeated
MAX_ATTEMPTS = 3
OFF_SUFFIX = "-nometrics"
# side → (waypoint, Service)
SIDES = {"metrics on": ("waypoint", "l7"), "metrics off": (f"waypoint{OFF_SUFFIX}", "l7-off")}


def manifests() -> str:
    return "---\n".join([BASE] + [WAYPOINT_SERVICE.format(waypoint=w, service=s, ns=NS) for w, s in SIDES.values()])


def as_supervisor(argv: list[str]) -> int:
    """The mesh's supervisor, with the metrics taken out of the `-nometrics` waypoints' listeners."""
    from waypost.envoy import telemetry
    from waypost.envoy import waypoint as waypoint_config
    from waypost.local import supervisor

    translate = waypoint_config.translate

    def without_metrics(snapshot, waypoint):
        resources = translate(snapshot, waypoint)
        if waypoint.name.endswith(OFF_SUFFIX):
            resources = {**resources, "listeners": telemetry.without_metrics(resources["listeners"])}
        return resources

    waypoint_config.translate = without_metrics  # waypost.envoy.translate looks it up on the module
    return supervisor.main(argv)


def mesh_up(manifest: Path, state_dir: Path, timeout: float = 300) -> Mesh:
    """`waypost up --detach`, with this script as the supervisor."""
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, __file__, "--as-supervisor", "--state-dir", str(state_dir), "--concurrency", "1", "--no-watch", "-f", str(manifest)]
    started = time.monotonic()
    with open(state_dir / "logs" / "supervisor.log", "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    state_file = state_dir / "state.json"
    while time.monotonic() - started < timeout:
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        if state.get("phase") == "ready":
            return Mesh(state_dir, state, time.monotonic() - started)
        if state.get("phase") == "failed" or proc.poll() is not None:
            break
        time.sleep(0.2)
    subprocess.run([*WAYPOST, "down", "--state-dir", str(state_dir)], capture_output=True, timeout=120, check=False)
    stop_process(proc)
    raise RuntimeError(f"the mesh did not start; see {state_dir / 'logs'}")


def run_one(url: str, meter: CpuMeter, seconds: float, connections: int) -> dict[str, Any]:
    box = BoxMeter()
    meter.start()
    box.start()
    result = wrk(url, seconds, connections)
    cpu = meter.stop()
    result["box_busy"] = round(box.stop(), 3)
    loadgen_cores = result["loadgen_cpu_s"] / seconds
    result["foreign_cores"] = round(max(0.0, result["box_busy"] * NCPU - sum(cpu.values()) / seconds - loadgen_cores), 3)
    result["cpu_ms_per_1k"] = {k: round(1e6 * v / max(result["requests"], 1), 2) for k, v in cpu.items()}
    return result


def main() -> int:
    if sys.argv[1:2] == ["--as-supervisor"]:
        return as_supervisor(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each wrk run (whole seconds)")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    ensure_tools(["wrk", "nginx"])
    work = workdir("metrics-cost")
    (work / "mesh.yaml").write_text(manifests())
    nginx = None
    runs: list[dict[str, Any]] = []
    mesh = mesh_up(work / "mesh.yaml", work / "state")
    try:
        backend = mesh.workload("backend")["app_address"]
        nginx = start_nginx(work / "nginx", [(backend, 8080)])
        proxies = mesh.proxies()
        waypoints = {side: proxies[f"waypoint~{NS}~{w}"] for side, (w, _) in SIDES.items()}
        features = {side: config_features(p["admin"]) for side, p in waypoints.items()}
        for side, has in (("metrics on", True), ("metrics off", False)):
            if features[side]["metrics (stats access logger)"] != has or not features[side]["access log (file/stdout)"]:
                raise SystemExit(f"{side}: the waypoint's config is not what this benchmark compares: {features[side]}")
        urls = {side: f"http://{mesh.vip(service)}:8080/" for side, (_, service) in SIDES.items()}
        for side, url in urls.items():  # both answer, and the metrics side counts
            wrk(url, 1, 1)
        meter = CpuMeter({"waypoint on": waypoints["metrics on"]["pid"], "waypoint off": waypoints["metrics off"]["pid"],
                          "ztunnel": proxies["ztunnel~node-0"]["pid"], "nginx": nginx.pid}, trees=["nginx"])
        quiet = wait_quiet()
        for rnd in range(1, args.rounds + 1):
            for side in (list(SIDES) if rnd % 2 else list(reversed(SIDES))):
                for attempt in range(1, MAX_ATTEMPTS + 1):
                    result = run_one(urls[side], meter, args.seconds, args.connections)
                    if result["foreign_cores"] <= FOREIGN_LIMIT:
                        break
                    print(f"  (other processes used {result['foreign_cores']:.2f} cores: repeating)", flush=True)
                result["attempts"] = attempt
                runs.append({"round": rnd, "side": side, **result})
                print(f"  round {rnd}  {side:<12} {result['rps']:>9.0f} req/s  p50 {result['p50_ms']:.3f} ms  "
                      f"box busy {result['box_busy']:.0%}", flush=True)
    finally:
        stop_process(nginx)
        subprocess.run([*WAYPOST, "down", "--state-dir", str(mesh.state_dir)], capture_output=True, timeout=120, check=False)

    rows = []
    for side in SIDES:
        rs = [r for r in runs if r["side"] == side]
        own = "waypoint on" if side == "metrics on" else "waypoint off"
        rps = [r["rps"] for r in rs]
        rows.append({
            "side": side, "rps": mean(rps), "spread": 100 * (max(rps) - min(rps)) / mean(rps), "p50_ms": mean(r["p50_ms"] for r in rs),
            "p99_ms": mean(r["p99_ms"] for r in rs), "errors": sum(r["errors"] for r in rs),
            "waypoint_cpu": mean(r["cpu_ms_per_1k"][own] for r in rs), "path_cpu": mean(r["cpu_ms_per_1k"][own] + r["cpu_ms_per_1k"]["ztunnel"] for r in rs),
            "box_busy": mean(r["box_busy"] for r in rs), "repeats": sum(r["attempts"] - 1 for r in rs),
        })
    on, off = rows
    ratio = on["rps"] / off["rps"]
    cpu_ratio = on["waypoint_cpu"] / off["waypoint_cpu"]
    print(f"\n== max rate, {args.connections} connections, {args.rounds} round(s) of {args.seconds:g} s per side; "
          "CPU = utime+stime per 1000 requests")
    print(table(rows, [("side", "waypoint", ""), ("rps", "req/s", ".0f"), ("spread", "±% (rounds)", ".0f"), ("p50_ms", "p50 ms", ".3f"),
                       ("p99_ms", "p99 ms", ".3f"), ("errors", "err", "d"), ("waypoint_cpu", "waypoint CPU ms/1k", ".1f"),
                       ("path_cpu", "waypoint+ztunnel ms/1k", ".1f"), ("box_busy", "box busy", ".0%"), ("repeats", "repeats", "d")]))
    print(f"\nthroughput with metrics ÷ without: {ratio:.1%}   waypoint CPU per request with ÷ without: {cpu_ratio:.2f}×")
    targets = [target("waypoint max throughput with metrics ÷ without", ratio, 0.90, "", True,
                      note=f"{args.connections} conn; waypoint CPU/request ×{cpu_ratio:.2f}")]
    print("\nTargets:")
    print_targets(targets)
    path = write_results("metrics_cost", {"args": vars(args), "features": features, "box_busy_before_start": quiet, "runs": runs,
                                          "summary": rows, "ratio": ratio, "cpu_ratio": cpu_ratio, "targets": targets})
    print(f"\nresults: {path}")
    return 0 if all(t["pass"] for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
