"""What each per-request feature of the full mesh path costs: variants of one waypoint, side by side.

    python bench/features.py [--rounds 3] [--seconds 4] [--quick]

Every variant is the ladder's full path (client → ztunnel → waypoint → ztunnel → nginx, one ALLOW policy,
Istio's metrics, no access log) changed in one respect, written as the manifests a user would write (each
behind its own waypoint, so they run in one mesh at once):

  full              the ladder's `+policy` rung
  + access log      a Telemetry turns the access log on (provider `envoy`)
  - metrics         a Telemetry disables ALL_METRICS
  counter only      a Telemetry disables REQUEST_DURATION, REQUEST_SIZE and RESPONSE_SIZE (keeps REQUEST_COUNT)
  - policy          no AuthorizationPolicy
  plaintext upstream  the Service selects a backend outside the mesh (a WorkloadEntry with
                    `istio.io/dataplane-mode: none`), so the waypoint forwards in plaintext: no second HBONE
                    leg, no destination ztunnel
  floor             - metrics, - policy and plaintext upstream together: what the waypoint costs with
                    nothing but HBONE termination, HTTP routing and the internal listener hop

Load: wrk -t1 -c16 at the maximum rate, every variant once per round, rounds alternating the order. CPU is
utime+stime from /proc per request; Δ is against `full` in the same run. Writes bench/results/features.json.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from common import CpuMeter, HERE, ensure_tools, mean, mesh_up, start_nginx, stop_process, table, wait_quiet, workdir, write_results, wrk
from ladder import ALLOW_LOADGEN, BASE, NS, WAYPOINT_SERVICE, access_log, http_get, telemetry

OUTSIDE = "127.0.0.2"  # the out-of-mesh backend's address (nginx listens there too)


def metrics_off(service: str, *metrics: str) -> str:
    """A Telemetry that disables these metrics (Istio's names, or ALL_METRICS) for `service`."""
    overrides = "".join(f"    - {{match: {{metric: {m}}}, disabled: true}}\n" for m in metrics)
    return telemetry(f"metrics-{service}", service, NS, f"  metrics:\n  - providers: [{{name: prometheus}}]\n    overrides:\n{overrides}")


OUTSIDE_BACKEND = f"""\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: outside, namespace: {NS}}}
spec: {{address: {OUTSIDE}, labels: {{app: outside, istio.io/dataplane-mode: none}}}}
"""

# variant → (label, Service, backend app label, policy?, extra documents)
VARIANTS: dict[str, tuple[str, str, str, bool, list[str]]] = {
    "full": ("full (policy + metrics)", "f-full", "backend", True, []),
    "log": ("+ access log", "f-log", "backend", True, [access_log("f-log", NS)]),
    "nometrics": ("- metrics", "f-nometrics", "backend", True, [metrics_off("f-nometrics", "ALL_METRICS")]),
    "counter": ("counter only", "f-counter", "backend", True, [metrics_off("f-counter", "REQUEST_DURATION", "REQUEST_SIZE", "RESPONSE_SIZE")]),
    "nopolicy": ("- policy", "f-nopolicy", "backend", False, []),
    "plain": ("plaintext upstream", "f-plain", "outside", True, []),
    "floor": ("floor (- metrics - policy, plaintext upstream)", "f-floor", "outside", False,
              [metrics_off("f-floor", "ALL_METRICS")]),
}


def manifests() -> str:
    docs = [BASE, OUTSIDE_BACKEND]
    for key, (_, service, app, policy, extra) in VARIANTS.items():
        docs.append(WAYPOINT_SERVICE.format(waypoint=f"wp-{key}", service=service, ns=NS).replace("{app: backend}", f"{{app: {app}}}"))
        if policy:
            docs.append(ALLOW_LOADGEN.format(name=f"allow-{key}", service=service, ns=NS))
        docs += extra
    return "---\n".join(docs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each wrk run (whole seconds)")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s runs: a smoke test of the script")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 1.0
    ensure_tools()
    work = workdir("features")
    (work / "mesh.yaml").write_text(manifests())
    nginx = None
    runs: list[dict[str, Any]] = []
    with mesh_up([work / "mesh.yaml"], work / "state") as mesh:
        try:
            backend = mesh.workload("backend")["app_address"]
            nginx = start_nginx(work / "nginx", [(backend, 8080), (OUTSIDE, 8080)])
            proxies = mesh.proxies()
            pids = {key: proxies[f"waypoint~{NS}~wp-{key}"]["pid"] for key in VARIANTS}
            pids.update({"ztunnel": proxies["ztunnel~node-0"]["pid"], "nginx": nginx.pid})
            urls = {key: f"http://{mesh.vip(service)}:8080/" for key, (_, service, *_rest) in VARIANTS.items()}
            for key, url in urls.items():
                status, size = http_get(url)
                if status != 200 or size != 1024:
                    raise SystemExit(f"variant {key} ({url}) answered {status} with {size} bytes; logs in {work}/state/logs")
                wrk(url, 1, 4)  # warm the connections and the stats
            meter = CpuMeter(pids, trees=["nginx"])
            wait_quiet()
            for rnd in range(1, args.rounds + 1):
                order = list(VARIANTS) if rnd % 2 else list(reversed(VARIANTS))
                for key in order:
                    meter.start()
                    out = wrk(urls[key], args.seconds, 16)
                    cpu = meter.stop()
                    n = max(out["requests"], 1)
                    runs.append({"round": rnd, "variant": key, "rps": out["rps"], "p50_ms": out["p50_ms"],
                                 "waypoint_us": 1e6 * cpu[key] / n, "ztunnel_us": 1e6 * cpu["ztunnel"] / n, "nginx_us": 1e6 * cpu["nginx"] / n})
                    print(f"  round {rnd}  {VARIANTS[key][0]:<46} {out['rps']:>8.0f} req/s  waypoint {runs[-1]['waypoint_us']:6.1f} µs/req  "
                          f"ztunnel {runs[-1]['ztunnel_us']:5.1f}", flush=True)
        finally:
            stop_process(nginx)
    return report(args, runs)


# The summary table's columns (key, heading, format), here and in bench/RESULTS.md.
COLUMNS = [("variant", "variant", ""), ("rps", "req/s", ".0f"), ("rps_of_full", "÷ full", ".0%"), ("p50_ms", "p50 ms", ".3f"),
           ("waypoint_us", "waypoint µs/req", ".1f"), ("ztunnel_us", "ztunnel µs/req", ".1f"), ("path_us", "path µs/req", ".1f"),
           ("d_waypoint_us", "Δ waypoint µs", "+.1f"), ("d_path_us", "Δ path µs", "+.1f")]


def report(args: argparse.Namespace, runs: list[dict[str, Any]]) -> int:
    rows = []
    for key, (label, *_rest) in VARIANTS.items():
        rs = [r for r in runs if r["variant"] == key]
        row = {"key": key, "variant": label, **{k: mean(r[k] for r in rs) for k in ("rps", "p50_ms", "waypoint_us", "ztunnel_us", "nginx_us")}}
        row["path_us"] = row["waypoint_us"] + row["ztunnel_us"]
        rows.append(row)
    full = rows[0]
    for row in rows:
        row["d_waypoint_us"] = row["waypoint_us"] - full["waypoint_us"]
        row["d_path_us"] = row["path_us"] - full["path_us"]
        row["rps_of_full"] = row["rps"] / full["rps"]
    print(f"\n== per-feature cost, wrk -c16 at max rate, {args.rounds} round(s) of {args.seconds:g} s; means over rounds; Δ against `full`")
    print(table(rows, COLUMNS))
    path = write_results("features", {"args": vars(args), "variants": {k: v[0] for k, v in VARIANTS.items()}, "summary": rows, "runs": runs})
    print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
