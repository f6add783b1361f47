"""Scenario 4, the targets, and bench/RESULTS.md: one page from the JSON the scenarios wrote.

    python bench/report.py [--started EPOCH] [--command "make bench"]

Reads bench/results/{ladder,scale,convergence}.json, prints every target with PASS/FAIL, and rewrites
bench/RESULTS.md: command, date, machine, the tables and the targets. Everything below the NOTES marker
in the existing RESULTS.md (the hand-written reading of a run) is kept as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from common import HERE, RESULTS, machine, print_targets
from features import COLUMNS as FEATURE_COLUMNS
from ladder import SEQUENTIAL_COLUMNS

NOTES = "<!-- notes: everything below is written by hand and kept when the file is regenerated -->"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def md_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    out = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key)
            cells.append("–" if v is None or (isinstance(v, float) and v != v) else format(v, fmt) if fmt else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def targets_md(targets: list[dict[str, Any]]) -> str:
    rows = []
    for t in targets:
        measured = "n/a" if t["measured"] is None else f"{t['measured']:.3g} {t['unit']}".strip()
        rows.append({"result": "**PASS**" if t["pass"] else "**FAIL**", "target": t["target"], "measured": measured,
                     "limit": f"{t['op']} {t['limit']:g} {t['unit']}".strip(), "note": t["note"]})
    return md_table(rows, [("result", "result", ""), ("target", "target", ""), ("measured", "measured", ""), ("limit", "goal", ""), ("note", "note", "")])


LADDER_COLUMNS = [
    ("rung", "rung", ""), ("rps", "req/s", ".0f"), ("rps_spread_pct", "±% (rounds)", ".0f"),
    ("p50_ms", "p50 ms", ".3f"), ("p90_ms", "p90 ms", ".3f"), ("p99_ms", "p99 ms", ".3f"), ("errors", "errors", "d"),
    ("path_cpu_ms_per_1k", "proxies CPU ms/1k req", ".1f"), ("proxies_cpu", "per proxy", ""),
    ("nginx_cpu_ms_per_1k", "nginx ms/1k", ".1f"), ("sleeps", "sleeps/req", ""), ("box_busy", "box busy", ".0%"), ("foreign_cores", "other procs cores", ".2f"),
    ("path_rss_mb", "RSS MB", ""),
]


def ladder_md(d: dict[str, Any]) -> list[str]:
    a = d["args"]
    out = [
        "## 1. Data-path ladder (`bench/ladder.py`)",
        "",
        f"{a['rounds']} rounds, rungs alternating within each load profile (even rounds in reverse order); fixed-rate runs "
        f"{a['fixed_seconds']:g} s after {a['warmup']:g} s warm-up (h2load, HTTP/1.1, one process per connection, started "
        f"1/rate apart), max-rate runs {a['max_seconds']:g} s (wrk -t1). 1 KB responses from nginx (1 worker); every Envoy "
        "`--concurrency 1`. Values are means over rounds. CPU = utime+stime from /proc over the measured window ÷ requests "
        "(ms per 1000 requests = milli-vCPU-s per 1000 requests); \"box busy\" = both cores, every process; \"other procs\" = "
        "cores used by processes outside the benchmark (a run where they took over 0.25 cores is repeated, up to 3 times); "
        "\"sleeps/req\" = voluntary context switches of each process's threads per request (each one a wait for the next "
        "event, so a wake-up: at a fixed low rate every request wakes each process several times). "
        "`1000 routes+rules` is the worst case: the load matches the last of 1000 routes and the last of 1000 rules.",
        "",
    ]
    for profile, rows in d["summary"].items():
        out += [f"**{profile}**", "", md_table(rows, LADDER_COLUMNS), ""]
    ratio_rows = [r for r in d["throughput_ratios"]]
    out += ["**Throughput ratios at max rate**", "",
            md_table(ratio_rows, [("profile", "profile", ""), ("rung", "rung", ""), ("of_direct", "÷ direct", ".1%"),
                                  ("of_bare", "÷ bare hop", ".1%"), ("of_waypoint", "÷ empty waypoint", ".1%")]), ""]
    added = [r for r in d["added_latency"] if r["profile"].startswith("1000 rps")]
    out += ["**Latency added over direct at 1000 rps** (all profiles in `results/ladder.json`)", "",
            md_table(added, [("profile", "profile", ""), ("rung", "rung", ""), ("p50", "added p50 ms", ".3f"), ("p99", "added p99 ms", ".3f")]), ""]
    if d.get("sequential_latency"):
        low, high = d["spike_full_added_p50_ms"]
        out += [f"**Unloaded latency, one sequential keep-alive client** ({a.get('sequential', 2000)} GETs per rung and round after 200 "
                f"warm-up; the reference spike's method, shared `spec/envoy-dataplane.md` §5, whose hand-written full path added "
                f"{low:.2f}-{high:.2f} ms p50 on this machine class)", "",
                md_table(d["sequential_latency"], SEQUENTIAL_COLUMNS), ""]
    out += ["Idle CPU with no traffic (cores): " + ", ".join(f"{k} {v:.3f}" for k, v in d["idle_cores"].items()) + ".", ""]
    out += ["Per-request features in the proxies' config (from their /config_dump): "
            + "; ".join(f"{k}: " + ", ".join(f for f, on in v.items() if on) for k, v in d["features"].items()) + ".", ""]
    broken = [d["rungs"][k] for k, ok in d["connection_close_works"].items() if not ok]
    if broken:
        out += [f"**Finding:** a GET with `Connection: close` gets no response (the connection is reset) on: {', '.join(broken)}. "
                "The load generators use keep-alive, so the numbers above are not affected.", ""]
    return out


SCALE_COLUMNS = [
    ("shape", "shape", ""), ("services", "services", "d"), ("workloads", "pods", "d"),
    ("validate_s", "validate s", ".2f"), ("build_s", "build s", ".2f"),
    ("translate_waypoint_s", "translate waypoint s", ".2f"), ("translate_ztunnel_s", "translate ztunnel s", ".2f"),
    ("total_s", "total s", ".2f"), ("total_cpu_s", "CPU s", ".2f"), ("box_busy", "box busy", ".0%"), ("peak_rss_mb", "peak RSS MB", ".0f"),
    ("waypoint_mb", "waypoint config MB", ".1f"), ("ztunnel_mb", "ztunnel config MB", ".1f"),
    ("ztunnel_chains", "ztunnel filter chains", "d"), ("ztunnel_clusters", "ztunnel clusters", "d"),
    ("up_s", "`up` → all ACKed s", ".1f"), ("cp_rss_mb", "control plane RSS MB", ".0f"), ("envoy_rss", "Envoy RSS MB", ""),
    ("status", "status", ""),
]


def scale_md(d: dict[str, Any]) -> list[str]:
    a = d["args"]
    out = [
        "## 2. Control-plane scale (`bench/scale.py`)",
        "",
        "1 HTTPRoute and 1 AuthorizationPolicy per Service, all behind one waypoint, one node. **strict** = the issue's "
        "mesh (2 pods per Service, one Deployment and ServiceAccount each); **pooled** = the same Services, routes and "
        "policies over 10 Deployments of 2 pods. \"total\" = validate + build + translate from scratch in a fresh process, "
        "wall and CPU seconds (\"box busy\" over 50% on 2 cores means other work shared the machine) "
        f"(budget {a['budget']:g} s, memory cap {a['memory_cap_gb']:g} GB); config MB = the JSON of listeners+clusters+routes; "
        "`up` → all ACKed = wall time of `waypost up --detach` (it returns once every Envoy ACKed), which repeats the "
        "pipeline inside the supervisor, issues certificates, encodes, serves and waits.",
        "",
        md_table(d["rows"], SCALE_COLUMNS),
        "",
    ]
    if d["growth"]:
        out += ["Growth, k in time ∝ Services^k:", "",
                md_table(d["growth"], [("shape", "shape", ""), ("from", "from", "d"), ("to", "to", "d"), ("time x", "time ×", ".1f"),
                                       ("ztunnel cfg x", "ztunnel config ×", ".1f"), ("exponent", "k", ".2f")]), ""]
    return out


def convergence_md(d: dict[str, Any]) -> list[str]:
    out = ["## 3. Convergence (`bench/convergence.py`)", "",
           f"Method: {d['method']}. The mesh is the pooled synthetic mesh (the strict one cannot be translated at 1000 Services) "
           "plus an echo Service behind the same waypoint; change i moves the route prefix that goes to echo-v2 to /p<i>. "
           "ACK = the supervisor's answer, sent once every affected Envoy ACKed; observed = a prober (one GET every 2 ms "
           "through the mesh) first gets an echo-v2 answer for /p<i>. Times in ms from the request.", ""]
    for ph in d["phases"]:
        b = ph["bulk"]
        out += [f"**{ph['services']} Services** (`waypost up` {ph['up_seconds']:.1f} s; Envoys updated per change: {', '.join(ph['updated'])}; "
                f"box busy over the phase {ph.get('box_busy', float('nan')):.0%})", "",
                md_table(ph["summary"], [("measure", "measure", ""), ("n", "n", "d"), ("p50", "p50 ms", ".1f"), ("p99", "p99 ms", ".1f"),
                                         ("min", "min ms", ".1f"), ("max", "max ms", ".1f")]), "",
                f"{b['routes']} HTTPRoutes created by one apply: answered (all ACKed) after {b['acked_ms']:.0f} ms "
                f"(inside the supervisor: {', '.join(f'{k} {v:.0f} ms' for k, v in b['server_timings_ms'].items())}); "
                f"all shown attached after {b['attached_ms']:.0f} ms.", ""]
        if "cp_rss_mb" in ph:
            r = ph["cp_rss_mb"]
            out += [f"Control-plane RSS: {r['up']:.0f} MB after `up`, {r['after_changes']:.0f} MB after the {r['changes']} changes above "
                    "(before the bulk apply).", ""]
    return out


def features_md(d: dict[str, Any]) -> list[str]:
    a = d["args"]
    return [
        "## 1b. Per-feature cost of the full path (`bench/features.py`)", "",
        f"The ladder's full path (one ALLOW policy, Istio's metrics, no access log) and variants of it, each changed in one "
        f"respect with the manifests a user would write, each behind its own waypoint in one mesh; wrk -c16 at the maximum "
        f"rate, {a['rounds']} rounds of {a['seconds']:g} s alternating the order; CPU per request from /proc; Δ against `full` "
        "in the same run. `plaintext upstream` = the Service's backend is outside the mesh, so the waypoint's second HBONE leg "
        "and the destination ztunnel drop out.", "",
        md_table(d["summary"], FEATURE_COLUMNS),
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--started", type=float, help="epoch seconds when the run started (for its duration)")
    parser.add_argument("--command", default="make bench")
    args = parser.parse_args()
    parts = {name: load(name) for name in ("ladder", "features", "scale", "convergence")}
    targets = [t for d in parts.values() if d for t in d.get("targets", [])]
    print("Targets (all scenarios):")
    print_targets(targets)
    m = machine()
    duration = f"{(time.time() - args.started) / 60:.1f} min" if args.started else "n/a"
    lines = [
        "# Benchmark results",
        "",
        "Generated by `bench/report.py` from `bench/results/*.json`; regenerate with `make bench`.",
        "",
        f"- command: `{args.command}` (wall time {duration})",
        f"- date: {m['date']}",
        f"- machine: {m['nproc']} vCPU ({m['cpu']}), {m['memory_gib']} GiB RAM, Linux {m['kernel']}, Python {m['python']}, Envoy {m['envoy']}",
        "- everything on loopback on this one machine: load generator, backend, proxies and control plane share the cores",
        "",
        "## Targets",
        "",
        targets_md(targets),
        "",
    ]
    if parts["ladder"]:
        lines += ladder_md(parts["ladder"])
    if parts["features"]:
        lines += features_md(parts["features"])
    if parts["scale"]:
        lines += scale_md(parts["scale"])
    if parts["convergence"]:
        lines += convergence_md(parts["convergence"])
    out = HERE / "RESULTS.md"
    notes = ""
    if out.exists() and NOTES in out.read_text():
        notes = out.read_text().split(NOTES, 1)[1]
    out.write_text("\n".join(lines) + "\n" + NOTES + (notes or "\n"))
    print(f"wrote {out.relative_to(HERE.parent)}")
    return 0 if targets else 1


if __name__ == "__main__":
    sys.exit(main())
