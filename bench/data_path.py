"""Data-path benchmark: direct vs mesh L4 (ztunnel→ztunnel) vs mesh with waypoint, measured side by side.

    python bench/data_path.py [--duration 10] [--rounds 2] [--connections 16]

The backend is a real nginx (Debian package), listening where the pod's application listens, so the
numbers measure the proxies, not a Python echo server. The load generator is wrk (Debian package), on
127.0.0.1. A WorkloadEntry at 127.0.0.1 makes this host process a mesh client with its own identity.
Scenarios alternate within each round. The script prints a table and ratios, and writes JSON to
bench/results/data_path.json. It installs wrk and nginx with apt-get when they are missing (root only).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WAYPOST = [sys.executable, "-m", "waypost.cli.main"]

MANIFESTS = """
apiVersion: v1
kind: Namespace
metadata: {name: bench, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: bench}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: loadgen, namespace: bench}
spec: {address: 127.0.0.1, serviceAccount: loadgen, labels: {app: loadgen}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend, namespace: bench}
spec:
  selector: {matchLabels: {app: backend}}
  template:
    metadata: {labels: {app: backend}}
    spec:
      containers: [{name: nginx, image: nginx, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: l4, namespace: bench}
spec:
  selector: {app: backend}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: l7, namespace: bench, labels: {istio.io/use-waypoint: waypoint}}
spec:
  selector: {app: backend}
  ports: [{name: http, port: 8080}]
"""

NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx.err;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  server {{ listen {address}:8080; location / {{ return 200 "ok\\n"; }} }}
}}
"""


def ensure_tools() -> None:
    missing = [pkg for tool, pkg in (("wrk", "wrk"), ("nginx", "nginx-light")) if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        if os.geteuid() != 0:
            sys.exit(f"missing {', '.join(missing)}: install with apt-get (needs root)")
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=False, capture_output=True)
        if any(not shutil.which(t) and not Path(f"/usr/sbin/{t}").exists() for t in ("wrk", "nginx")):
            subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, capture_output=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, duration: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url], capture_output=True, text=True, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = {}
    for pct in ("50", "90", "99"):
        m = re.search(rf"\s{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(m.group(1)), m.group(2)
        lat[f"p{pct}_ms"] = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    return {"rps": rps, "requests": total, "non_2xx": int(errors.group(1)) if errors else 0, **lat}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    ensure_tools()
    work = Path(tempfile.mkdtemp(prefix="waypost-bench-"))
    (work / "mesh.yaml").write_text(MANIFESTS)
    state_dir = work / "state"
    started = time.monotonic()
    subprocess.run([*WAYPOST, "up", "-f", str(work / "mesh.yaml"), "--detach", "--state-dir", str(state_dir)], check=True, capture_output=True)
    up_seconds = time.monotonic() - started
    nginx = None
    try:
        state = json.loads((state_dir / "state.json").read_text())
        backend = next(w for w in state["workloads"] if w["owner"] == "backend")
        (work / "nginx.conf").write_text(NGINX_CONF.format(dir=work, address=backend["app_address"]))
        nginx = subprocess.Popen(["nginx", "-c", str(work / "nginx.conf"), "-g", "daemon off;"])
        time.sleep(0.5)
        vip = {s["name"]: s["vip"] for s in state["services"]}
        proxies = {p["kind"]: p["pid"] for p in state["proxies"]}
        scenarios = {
            "direct": f"http://{backend['app_address']}:8080/",
            "mesh L4 (ztunnel→ztunnel)": f"http://{vip['l4']}:8080/",
            "mesh with waypoint": f"http://{vip['l7']}:8080/",
        }
        results: list[dict] = []
        for rnd in range(1, args.rounds + 1):
            for name, url in scenarios.items():
                before = {k: cpu_seconds(pid) for k, pid in proxies.items()}
                r = wrk(url, args.duration, args.connections)
                after = {k: cpu_seconds(pid) for k, pid in proxies.items()}
                cpu = {f"{k}_cpu_ms_per_1k": round(1e6 * (after[k] - before[k]) / max(r["requests"], 1), 1) for k in proxies}
                results.append({"scenario": name, "round": rnd, **r, **cpu})
        header = f"{'scenario':28} {'round':>5} {'req/s':>9} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'non2xx':>6} {'ztunnel CPU ms/1k':>18} {'waypoint CPU ms/1k':>19}"
        print(header)
        for r in results:
            print(
                f"{r['scenario']:28} {r['round']:>5} {r['rps']:>9.0f} {r['p50_ms']:>7.2f} {r['p90_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['non_2xx']:>6}"
                f" {r.get('ztunnel_cpu_ms_per_1k', 0):>18} {r.get('waypoint_cpu_ms_per_1k', 0):>19}"
            )
        best = {name: max(r["rps"] for r in results if r["scenario"] == name) for name in scenarios}
        print(f"\nwaypost up --detach → ready: {up_seconds:.2f} s")
        for name in list(scenarios)[1:]:
            print(f"{name} / direct: {best[name] / best['direct']:.1%} of direct req/s (best rounds)")
        out = HERE / "results"
        out.mkdir(exist_ok=True)
        (out / "data_path.json").write_text(json.dumps({"up_seconds": up_seconds, "args": vars(args), "results": results}, indent=2))
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait()
        subprocess.run([*WAYPOST, "down", "--state-dir", str(state_dir)], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
