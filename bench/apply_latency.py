"""Live-configuration latency: from `waypost apply` of a changed HTTPRoute until every affected Envoy ACKed it.

    python bench/apply_latency.py [--changes 20]

Starts the quickstart mesh, then alternates the `echo-split` route between two versions, `--changes`
times each way of asking:
- `cli`: `waypost apply -f` as a user runs it, wall time of the whole command (Python start-up included);
- `channel`: one request on the supervisor's control socket, round trip (what `apply` waits for);
- `rollout`: inside the supervisor, from the first xDS push until the waypoint's ACK (and no listener warming),
  as the supervisor reports it.
Every change is verified with a request through the mesh. Prints median/p90/max and writes
bench/results/apply_latency.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WAYPOST = [sys.executable, "-m", "waypost.cli.main"]

ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo-split, namespace: quickstart}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo, port: 80}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /{prefix}}}}}]
    backendRefs: [{{name: echo-v2, port: 80}}]
  - backendRefs: [{{name: echo-v1, port: 80}}]
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values), 1),
        "p90_ms": round(percentile(values, 0.9), 1),
        "max_ms": round(max(values), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from waypost.local.client import send
    from waypost.local.control import call
    from waypost.local.state import StateDir

    work = Path(tempfile.mkdtemp(prefix="waypost-apply-bench-"))
    state_dir = work / "state"
    subprocess.run([*WAYPOST, "up", "-f", str(REPO / "examples" / "quickstart"), "--detach", "--state-dir", str(state_dir)], check=True, capture_output=True)
    state = StateDir(state_dir)
    timings: dict[str, list[float]] = {"cli": [], "channel": [], "rollout": []}
    try:
        for i in range(2 * args.changes):
            prefix = f"p{i}"
            manifest = work / f"route-{i}.yaml"
            manifest.write_text(ROUTE.format(prefix=prefix))
            via_cli = i < args.changes
            started = time.perf_counter()
            if via_cli:
                proc = subprocess.run([*WAYPOST, "apply", "-f", str(manifest), "--state-dir", str(state_dir)], capture_output=True, text=True)
                assert proc.returncode == 0 and "configured" in proc.stdout, proc.stderr
                timings["cli"].append((time.perf_counter() - started) * 1000)
            else:
                answer = call(state.control_socket, {"op": "apply", "paths": [str(manifest)]}, timeout=60)
                timings["channel"].append((time.perf_counter() - started) * 1000)
                assert answer["ok"] and answer["proxies"]["updated"] == ["waypoint~quickstart~waypoint"], answer
                timings["rollout"].append(answer["timings_ms"]["rollout"])
            # The change is in force the moment apply returns.
            body = json.loads(send(state.read_state(), "quickstart/client", f"http://echo/{prefix}").body)
            assert body["pod"].startswith("echo-v2-"), body
    finally:
        subprocess.run([*WAYPOST, "down", "--state-dir", str(state_dir)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    results = {name: summary(values) for name, values in timings.items()}
    print(f"{'path':<10}{'n':>4}{'median ms':>12}{'p90 ms':>10}{'max ms':>10}")
    for name, r in results.items():
        print(f"{name:<10}{r['n']:>4}{r['median_ms']:>12}{r['p90_ms']:>10}{r['max_ms']:>10}")
    out = HERE / "results" / "apply_latency.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"changes": args.changes, "results": results, "raw_ms": timings}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
