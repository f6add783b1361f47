"""Scenario 2, control-plane scale: synthetic meshes of 100, 1000 and 5000 Services.

    python bench/scale.py [--sizes 100 1000 5000] [--budget 45] [--memory-cap-gb 6]

Two shapes of the same mesh (bench/meshgen.py), each with 1 HTTPRoute and 1 AuthorizationPolicy per
Service, all Services behind one waypoint:
  strict  the issue's mesh: every Service has its own Deployment of 2 pods (and its own ServiceAccount);
  pooled  the Services share 10 Deployments of 2 pods (Service i selects Deployment i mod 10): as many
          Services, routes and policies, 20 pods. It isolates what grows with Services from what grows
          with workloads.

Per size and shape:
  1. from scratch, in a fresh Python process: validate (`load_text`), `build`, then `translate` each proxy,
     timing every stage, with the process's peak RSS, and each proxy's config size (JSON bytes and
     resource counts). A stage that is still running after --budget seconds, or a process above
     --memory-cap-gb, is stopped and reported as DNF (with where it stopped);
  2. when (1) finished in time: `waypost up --detach` on the same manifests, which returns once every
     Envoy has ACKed its config: wall time, the control plane's RSS, each Envoy's RSS and /config_dump size.
Sizes after a DNF in the same shape are not attempted (they only grow). The strict shape also runs a
200-Service point, to show how its cost grows.

Prints a table, the growth ratios and the targets; writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import HERE, BoxMeter, admin_get, mesh_up, print_targets, rss_mb, table, target, wait_quiet, workdir, write_results
from meshgen import synthetic_mesh

POOL = 10  # Deployments of the pooled shape


def manifest(size: int, shape: str) -> str:
    return synthetic_mesh(size, deployments=None if shape == "strict" else POOL)


# -- the child: one pipeline, stage by stage, one JSON line per stage ------------------------------------
def child(size: int, shape: str) -> None:
    cpu_mark = [0.0]

    def emit(stage: str, seconds: float, **extra: Any) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime
        print(json.dumps({"stage": stage, "seconds": round(seconds, 3), "cpu_s": round(cpu - cpu_mark[0], 3),
                          "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), **extra}), flush=True)
        cpu_mark[0] = cpu

    text = manifest(size, shape)
    started = time.perf_counter()
    from waypost import collector
    from waypost.api import load_text
    from waypost.envoy import ProxyConfig
    from waypost.envoy import waypoint as waypoint_config
    from waypost.envoy import ztunnel as ztunnel_config
    from waypost.mesh import build
    from waypost.mesh.addresses import AddressPlan

    emit("import", time.perf_counter() - started, manifest_bytes=len(text))
    t = time.perf_counter()
    loaded = load_text(text, f"synthetic-{size}.yaml")
    if loaded.errors:
        raise SystemExit("\n".join(d.render() for d in loaded.errors[:5]))
    emit("validate", time.perf_counter() - t, resources=len(loaded.resources))
    t = time.perf_counter()
    # As the supervisor runs build and translation: with the cyclic collector paused (waypost.collector).
    with collector.paused():
        snapshot = build(loaded.resources, AddressPlan(250))
    emit("build", time.perf_counter() - t, services=len(snapshot.services), workloads=len(snapshot.workloads))
    # Per proxy, as `waypost.envoy.translate` does it, so a slow proxy kind shows as its own stage.
    jobs = [(w.proxy_id, "waypoint", lambda w=w: waypoint_config.translate(snapshot, w)) for w in snapshot.waypoints]
    jobs += [(ztunnel_config.proxy_id(n), "ztunnel", lambda n=n: ztunnel_config.translate(snapshot, n)) for n in snapshot.nodes]
    for proxy, kind, job in jobs:
        t = time.perf_counter()
        with collector.paused():
            r = job()
        seconds = time.perf_counter() - t
        sizes = {k: len(json.dumps(r[k], separators=(",", ":"))) for k in ("listeners", "clusters", "routes")}
        chains = sum(len(l.get("filter_chains", [])) for l in r["listeners"])
        emit(f"translate {kind}", seconds, proxy=proxy, config_bytes=sum(sizes.values()), listeners=len(r["listeners"]),
             filter_chains=chains, clusters=len(r["clusters"]), routes=len(r["routes"]))
        del r
    assert ProxyConfig  # the same entry point the supervisor uses; imported to fail early if it moved


# -- the parent -----------------------------------------------------------------------------------------
def run_pipeline(size: int, shape: str, budget: float, cap_mb: float) -> dict[str, Any]:
    """Runs the child under a time budget and a memory cap; returns its stages (and a DNF if stopped)."""
    box = BoxMeter()
    box.start()
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(size), shape], stdout=subprocess.PIPE, text=True)
    import os
    import selectors

    os.set_blocking(proc.stdout.fileno(), False)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    stages: list[dict[str, Any]] = []
    buffer = ""
    started = time.monotonic()
    peak = 0.0
    dnf = None
    while True:
        for _ in sel.select(timeout=0.2):
            chunk = proc.stdout.read()
            if chunk:
                buffer += chunk
        *lines, buffer = buffer.split("\n")
        stages += [json.loads(l) for l in lines if l.strip()]
        peak = max(peak, rss_mb(proc.pid))
        if proc.poll() is not None:
            rest = proc.stdout.read() or ""
            stages += [json.loads(l) for l in (buffer + rest).split("\n") if l.strip()]
            break
        elapsed = time.monotonic() - started
        if elapsed > budget or peak > cap_mb:
            why = f"over the {budget:.0f} s budget" if elapsed > budget else f"over the {cap_mb / 1024:.0f} GB memory cap"
            done = [s["stage"] for s in stages]
            at = next(s for s in ("validate", "build", "translate waypoint", "translate ztunnel") if s not in done)
            dnf = f"stopped {why} in {at} after {elapsed:.0f} s (RSS {peak:.0f} MB)"
            proc.kill()
            proc.wait()
            break
    if proc.returncode not in (0, None) and dnf is None:
        dnf = f"failed with exit code {proc.returncode}"
    # The pipeline is one thread: about 1/NCPU busy when it runs alone; more means other work shared the box.
    return {"stages": stages, "dnf": dnf, "peak_rss_mb": round(max([peak] + [s["peak_rss_mb"] for s in stages]), 1), "box_busy": round(box.stop(), 3)}


def live(size: int, shape: str, work: Path, timeout: float) -> dict[str, Any]:
    """`waypost up --detach` (returns once every Envoy ACKed): wall time, RSS, config sizes."""
    path = work / f"{shape}-{size}.yaml"
    path.write_text(manifest(size, shape))
    out: dict[str, Any] = {}
    try:
        with mesh_up([path], work / f"state-{shape}-{size}", timeout=timeout) as mesh:
            out["up_to_all_acked_s"] = round(mesh.up_seconds, 2)
            out["control_plane_rss_mb"] = round(rss_mb(mesh.control_plane_pid), 1)
            out["proxies"] = {}
            for name, p in mesh.proxies().items():
                dump = len(admin_get(p["admin"], "/config_dump", timeout=120))
                out["proxies"][name] = {"rss_mb": round(rss_mb(p["pid"]), 1), "config_dump_mb": round(dump / 1e6, 2)}
    except subprocess.TimeoutExpired:
        out["dnf"] = f"waypost up did not return within {timeout:.0f} s"
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        out["dnf"] = " ".join(lines[:2])[:300]  # "waypost up failed (1):" and the first line that says why
    return out


def row(size: int, shape: str, pipe: dict[str, Any], up: dict[str, Any] | None, live_skipped: str = "") -> dict[str, Any]:
    st = {s["stage"]: s for s in pipe["stages"]}
    tr = [s for s in pipe["stages"] if s["stage"].startswith("translate")]
    wp = next((s for s in tr if s["stage"] == "translate waypoint"), None)
    zt = next((s for s in tr if s["stage"] == "translate ztunnel"), None)
    finished = pipe["dnf"] is None
    total = sum(st[k]["seconds"] for k in ("validate", "build") if k in st) + sum(s["seconds"] for s in tr)
    cpu = sum(st[k]["cpu_s"] for k in ("validate", "build") if k in st) + sum(s["cpu_s"] for s in tr)
    return {
        "shape": shape,
        "services": size,
        "workloads": st.get("build", {}).get("workloads"),
        "validate_s": st.get("validate", {}).get("seconds"),
        "build_s": st.get("build", {}).get("seconds"),
        "translate_waypoint_s": wp and wp["seconds"],
        "translate_ztunnel_s": zt and zt["seconds"],
        "total_s": total if finished else None,
        "total_cpu_s": cpu if finished else None,
        "box_busy": pipe.get("box_busy"),
        "peak_rss_mb": pipe["peak_rss_mb"],
        "waypoint_mb": wp and wp["config_bytes"] / 1e6,
        "ztunnel_mb": zt and zt["config_bytes"] / 1e6,
        "ztunnel_chains": zt and zt["filter_chains"],
        "ztunnel_clusters": zt and zt["clusters"],
        "up_s": (up or {}).get("up_to_all_acked_s"),
        "cp_rss_mb": (up or {}).get("control_plane_rss_mb"),
        "envoy_rss": " ".join(f"{n.split('~')[0]}={p['rss_mb']:.0f}" for n, p in (up or {}).get("proxies", {}).items()) or None,
        "status": pipe["dnf"] or (up or {}).get("dnf") or ("ok" if up else f"ok (pipeline only: {live_skipped})"),
    }


COLUMNS = [
    ("shape", "shape", ""), ("services", "services", "d"), ("workloads", "pods", "d"),
    ("validate_s", "validate s", ".2f"), ("build_s", "build s", ".2f"),
    ("translate_waypoint_s", "xlate waypoint s", ".2f"), ("translate_ztunnel_s", "xlate ztunnel s", ".2f"),
    ("total_s", "total s", ".2f"), ("total_cpu_s", "CPU s", ".2f"), ("box_busy", "box busy", ".0%"), ("peak_rss_mb", "peak RSS MB", ".0f"),
    ("waypoint_mb", "waypoint cfg MB", ".1f"), ("ztunnel_mb", "ztunnel cfg MB", ".1f"),
    ("ztunnel_chains", "zt chains", "d"), ("ztunnel_clusters", "zt clusters", "d"),
    ("up_s", "up→all ACKed s", ".1f"), ("cp_rss_mb", "CP RSS MB", ".0f"), ("envoy_rss", "Envoy RSS MB", ""),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--shapes", nargs="+", default=["strict", "pooled"], choices=["strict", "pooled"])
    parser.add_argument("--budget", type=float, default=45.0, help="seconds one from-scratch pipeline may take")
    parser.add_argument("--memory-cap-gb", type=float, default=6.0)
    parser.add_argument("--up-timeout", type=float, default=180.0, help="seconds `waypost up` may take")
    parser.add_argument("--no-live", action="store_true", help="skip `waypost up` (pure pipeline only)")
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1])
        return 0
    wait_quiet()
    work = workdir("scale")
    rows, raw = [], []
    for shape in args.shapes:
        sizes = sorted(set(args.sizes) | ({200} if shape == "strict" and 100 in args.sizes and 1000 in args.sizes else set()))
        stopped = None
        for size in sizes:
            if stopped:
                rows.append({"shape": shape, "services": size, "status": f"not attempted: {stopped} did not finish"})
                raw.append({"shape": shape, "services": size, "skipped": True})
                print(f"  {shape} {size}: not attempted", flush=True)
                continue
            t = time.monotonic()
            pipe = run_pipeline(size, shape, args.budget, args.memory_cap_gb * 1024)
            up = None
            # The live run repeats the whole pipeline inside the supervisor, then starts and ACKs every Envoy;
            # the 200-Service strict point only shows growth.
            growth_point = shape == "strict" and size == 200 and size not in args.sizes
            if pipe["dnf"] is None and not args.no_live and not growth_point:
                up = live(size, shape, work, args.up_timeout)
            rows.append(row(size, shape, pipe, up, "growth point" if growth_point else "--no-live"))
            raw.append({"shape": shape, "services": size, "pipeline": pipe, "live": up})
            print(f"  {shape} {size}: {rows[-1]['status']} ({time.monotonic() - t:.0f} s)", flush=True)
            if pipe["dnf"]:
                stopped = f"{size} Services"
    print()
    print("From-scratch pipeline (validate → build → translate, fresh process) and `waypost up` until every Envoy ACKed:")
    print(table(rows, COLUMNS))
    for r in rows:
        if not r["status"].startswith("ok"):
            print(f"  {r['shape']} {r['services']}: {r['status']}")

    by = {(r["shape"], r["services"]): r for r in rows}
    growth = []
    for shape in args.shapes:
        pts = [r for r in rows if r["shape"] == shape and r.get("total_s")]
        for a, b in zip(pts, pts[1:]):
            n = b["services"] / a["services"]
            growth.append({"shape": shape, "from": a["services"], "to": b["services"], "services x": n,
                           "time x": b["total_s"] / a["total_s"], "ztunnel cfg x": (b["ztunnel_mb"] or 0) / (a["ztunnel_mb"] or 1),
                           "exponent": _exponent(n, b["total_s"] / a["total_s"])})
    if growth:
        print("\nGrowth (exponent k in time ∝ services^k; 1 = linear, 2 = quadratic):")
        print(table(growth, [("shape", "shape", ""), ("from", "from", "d"), ("to", "to", "d"), ("services x", "services ×", ".1f"),
                             ("time x", "time ×", ".1f"), ("ztunnel cfg x", "ztunnel cfg ×", ".1f"), ("exponent", "k", ".2f")]))

    strict = by.get(("strict", 1000), {})
    pooled = by.get(("pooled", 1000), {})
    targets = [
        target("1000-Service mesh (2 pods each) validated+translated from scratch", strict.get("total_s"), 2.0, "s",
               note=strict.get("status") if strict.get("status") != "ok" else ""),
        target("control-plane RSS for the 1000-Service mesh (2 pods each)", strict.get("cp_rss_mb") or (strict.get("peak_rss_mb") if strict.get("total_s") else None),
               300, "MB", note="" if strict.get("cp_rss_mb") else "no finished run: n/a"),
        target("1000 Services over 20 pods (pooled) validated+translated from scratch", pooled.get("total_s"), 2.0, "s",
               note="not the issue's shape; shows the cost without the per-workload growth"),
        target("control-plane RSS, 1000 Services over 20 pods (pooled, running supervisor)", pooled.get("cp_rss_mb"), 300, "MB"),
    ]
    print("\nTargets:")
    print_targets(targets)
    path = write_results("scale", {"args": vars(args), "rows": rows, "growth": growth, "targets": targets, "raw": raw})
    print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


def _exponent(n: float, ratio: float) -> float:
    import math

    return math.log(ratio) / math.log(n) if n > 1 and ratio > 0 else float("nan")


if __name__ == "__main__":
    sys.exit(main())
