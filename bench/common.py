"""What every benchmark shares: tools, processes, load generators, meshes, tables, targets and results.

Nothing here is product code; `bench/` only drives waypost the way a user would (the CLI) or through its
pure library entry points, and measures.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
WAYPOST = [sys.executable, "-m", "waypost.cli.main"]
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

sys.path.insert(0, str(REPO / "src"))  # the product, when not run from the venv's editable install

# Debian packages the load generators and the backend come from: tool → package.
TOOLS = {"wrk": "wrk", "h2load": "nghttp2-client", "nginx": "nginx-light"}


# -- tools ---------------------------------------------------------------------------------------------
def which(tool: str) -> str | None:
    return shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None)


def ensure_tools(tools: Iterable[str] = TOOLS) -> None:
    """Installs the missing Debian packages (root only); `apt-get update` only when a first try fails."""
    missing = sorted({TOOLS[t] for t in tools if which(t) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing Debian packages {', '.join(missing)}: install them with apt-get (needs root)")
    print(f"installing {', '.join(missing)} with apt-get …", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    if subprocess.run(install, capture_output=True, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, env=env)
        subprocess.run(install, check=True, capture_output=True, env=env)
    # nginx-light's postinst starts the system nginx on :80; the benchmarks start their own.
    subprocess.run(["systemctl", "stop", "nginx"], capture_output=True)
    subprocess.run(["/usr/sbin/nginx", "-s", "stop"], capture_output=True)


# -- processes -----------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except OSError:
        return 0.0
    return pages * PAGE / 2**20


def tree_pids(pid: int) -> list[int]:
    """The process and its descendants (nginx's worker, say)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError):
                    todo.extend(int(c) for c in (task / "children").read_text().split())
    return out


def sleeps(pid: int) -> int:
    """Voluntary context switches of all a process's threads (each is a wait for an event, so a later wake-up)."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


class CpuMeter:
    """CPU seconds of named processes between `start()` and `stop()`; those named in `trees` count with
    their descendants (nginx's worker), the others alone (the supervisor's children are the proxies).
    `stop()` also leaves in `self.sleeps` how often each one's threads went to sleep in between."""

    def __init__(self, pids: dict[str, int], trees: Iterable[str] = ()) -> None:
        self.pids = pids
        self.trees = set(trees)
        self._before: dict[str, float] = {}
        self._sleeps_before: dict[str, int] = {}
        self.sleeps: dict[str, int] = {}

    def _members(self, name: str) -> list[int]:
        pid = self.pids[name]
        return tree_pids(pid) if name in self.trees else [pid]

    def _read(self) -> tuple[dict[str, float], dict[str, int]]:
        """(CPU seconds, sleeps) of each name, walking each process tree once."""
        members = {name: self._members(name) for name in self.pids}
        return ({name: sum(cpu_seconds(p) for p in pids) for name, pids in members.items()},
                {name: sum(sleeps(p) for p in pids) for name, pids in members.items()})

    def start(self) -> None:
        self._before, self._sleeps_before = self._read()

    def stop(self) -> dict[str, float]:
        after, slept = self._read()
        self.sleeps = {name: slept[name] - self._sleeps_before.get(name, 0) for name in slept}
        return {name: after[name] - self._before.get(name, 0.0) for name in after}

    def rss(self) -> dict[str, float]:
        return {name: round(sum(rss_mb(p) for p in self._members(name)), 1) for name in self.pids}


class BoxMeter:
    """How busy the whole machine was (all cores, all processes) between `start()` and `stop()`: 0..1."""

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    def start(self) -> None:
        self._busy, self._total = self._read()

    def stop(self) -> float:
        busy, total = self._read()
        return (busy - self._busy) / max(total - self._total, 1)


def wait_quiet(max_wait: float = 60.0, busy_below: float = 0.15, window: float = 3.0) -> float:
    """Waits (up to max_wait s) until the machine is nearly idle over a window; returns how busy it was.

    Other work on the box (a test suite, say) competes with the benchmark for the same two cores.
    """
    deadline = time.monotonic() + max_wait
    while True:
        box = BoxMeter()
        box.start()
        time.sleep(window)
        busy = box.stop()
        if busy < busy_below or time.monotonic() > deadline:
            return busy
        print(f"  waiting for a quiet machine (busy {busy:.0%}) …", flush=True)


def children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def wait_port(ip: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((ip, port)) == 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {ip}:{port}")
        time.sleep(0.02)


def stop_process(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """Ends one process we started, by its pid."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


# -- backend -------------------------------------------------------------------------------------------
NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx.err;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
{listens}
    location / {{ return 200 "{body}"; }}
  }}
}}
"""


def start_nginx(workdir: Path, listens: Sequence[tuple[str, int]], body_bytes: int = 1024) -> subprocess.Popen:
    """Debian's nginx, one worker, answering every GET with a `body_bytes` body."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            dir=workdir, listens="\n".join(f"    listen {a}:{p};" for a, p in listens), body="x" * (body_bytes - 1) + "\\n"
        )
    )
    proc = subprocess.Popen([which("nginx"), "-c", str(conf), "-g", "daemon off;"], stdin=subprocess.DEVNULL)
    for address, port in listens:
        wait_port(address, port)
    return proc


# -- load generators -----------------------------------------------------------------------------------
def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, duration: float, connections: int) -> dict[str, Any]:
    """Closed loop, as fast as the path answers: wrk -t1 (wrk cannot pace; see h2load_rate)."""
    before = children_cpu()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", url], capture_output=True, text=True, check=True
    ).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result: dict[str, Any] = {
        "requests": total,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "errors": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, socket_errors.groups())) if socket_errors else 0),
        "loadgen_cpu_s": children_cpu() - before,
    }
    for pct in ("50", "90", "99"):
        m = re.search(rf"\s{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\b", out)
        result[f"p{pct}_ms"] = round(_ms(m.group(1), m.group(2)), 3)
    return result


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def h2load_rate(url: str, rate: float, connections: int, duration: float, warmup: float, workdir: Path) -> dict[str, Any]:
    """Open loop at a fixed total rate over HTTP/1.1, one h2load process per connection.

    h2load paces each connection with its own timer (--rps is per connection), and the timers of one
    process start together: 16 connections in one process send in bursts of 16 at once, which measures
    queueing behind the burst rather than the path. So each connection gets its own process, started
    1/rate apart, which spreads the requests evenly. Latencies come from the per-request logs (h2load
    itself prints only mean/sd).
    """
    logs = [workdir / f"h2load-{i}.tsv" for i in range(connections)]
    procs = []
    before = children_cpu()
    try:
        for i, log in enumerate(logs):
            log.unlink(missing_ok=True)
            procs.append(subprocess.Popen(
                ["h2load", "--h1", "-t1", "-c1", f"--rps={rate / connections:g}", f"-D{int(duration * 1000)}ms",
                 f"--warm-up-time={int(warmup * 1000)}ms", f"--log-file={log}", url],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            ))
            time.sleep(1 / rate)
        for proc in procs:
            _, err = proc.communicate(timeout=duration + warmup + 30)
            if proc.returncode != 0:
                raise RuntimeError(f"h2load failed: {err[-500:]}")
    finally:
        for proc in procs:
            stop_process(proc)
    rows = [line.split("\t") for log in logs for line in log.read_text().splitlines() if line]
    latencies = [int(r[2]) / 1000 for r in rows if r[1] == "200"]
    return {
        "requests": len(rows),
        "rps": round(len(rows) / duration, 1),
        "errors": sum(1 for r in rows if r[1] != "200"),
        "p50_ms": round(percentile(latencies, 50), 3),
        "p90_ms": round(percentile(latencies, 90), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "loadgen_cpu_s": children_cpu() - before,
    }


# -- meshes --------------------------------------------------------------------------------------------
@dataclass
class Mesh:
    """A mesh started with `waypost up --detach`; `down` in a finally."""

    state_dir: Path
    state: dict[str, Any]
    up_seconds: float

    def proxies(self, kind: str | None = None) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in self.state["proxies"] if kind is None or p["kind"] == kind}

    def vip(self, name: str, namespace: str | None = None) -> str:
        return next(s["vip"] for s in self.state["services"] if s["name"] == name and namespace in (None, s.get("namespace")))

    def workload(self, owner: str) -> dict[str, Any]:
        return next(w for w in self.state["workloads"] if w.get("owner") == owner)

    @property
    def control_plane_pid(self) -> int:
        return int(self.state["control_plane"]["pid"])

    def refresh(self) -> dict[str, Any]:
        self.state = json.loads((self.state_dir / "state.json").read_text())
        return self.state


@contextlib.contextmanager
def mesh_up(manifests: Sequence[Path], state_dir: Path, timeout: float = 600, extra: Sequence[str] = ()) -> Iterator[Mesh]:
    started = time.monotonic()
    args = [*WAYPOST, "up", *(a for p in manifests for a in ("-f", str(p))), "--detach", "--state-dir", str(state_dir), *extra]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"waypost up failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        up_seconds = time.monotonic() - started
        state = json.loads((state_dir / "state.json").read_text())
        yield Mesh(state_dir, state, up_seconds)
    finally:
        subprocess.run([*WAYPOST, "down", "--state-dir", str(state_dir)], capture_output=True, timeout=120)


def admin_get(address: str, path: str, timeout: float = 30) -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as r:
        return r.read()


def config_features(admin: str) -> dict[str, bool]:
    """What the running Envoy's listeners do per request: RBAC, metrics (stats logger), text access log.

    Walks the listeners of /config_dump (not the node's list of compiled-in extensions, which names them all).
    """
    dump = json.loads(admin_get(admin, "/config_dump?resource=dynamic_listeners"))
    types: set[str] = set()
    names: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for entry in value.get("access_log", []) if isinstance(value.get("access_log"), list) else []:
                types.add(entry.get("typed_config", {}).get("@type", ""))
            if isinstance(value.get("name"), str):
                names.add(value["name"])
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(dump)
    return {
        "rbac": any(n in names for n in ("envoy.filters.http.rbac", "envoy.filters.network.rbac")),
        "metrics (stats access logger)": any(t.endswith("access_loggers.stats.v3.Config") for t in types),
        "access log (file/stdout)": any(t.endswith(("FileAccessLog", "StdoutAccessLog", "StderrAccessLog")) for t in types),
    }


# -- reporting -----------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")), 0)
    envoy_version = "?"
    with contextlib.suppress(Exception):
        from waypost.local.binary import envoy_path

        envoy_version = subprocess.run([envoy_path(), "--version"], capture_output=True, text=True).stdout.strip().split("version: ")[-1]
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "envoy": envoy_version,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """columns: (key, header, format); a missing value prints as '-'."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        line = []
        for key, _, fmt in columns:
            v = r.get(key)
            line.append("-" if v is None or (isinstance(v, float) and v != v) else format(v, fmt) if fmt else str(v))
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    out = []
    for n, line in enumerate(cells):
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def target(name: str, measured: float | None, limit: float, unit: str, higher_is_better: bool = False, note: str = "") -> dict[str, Any]:
    if measured is None:
        ok = False
    else:
        ok = measured >= limit if higher_is_better else measured <= limit
    return {"target": name, "measured": measured, "limit": limit, "unit": unit, "op": ">=" if higher_is_better else "<=", "pass": ok, "note": note}


def print_targets(targets: Sequence[dict[str, Any]]) -> None:
    for t in targets:
        measured = "n/a" if t["measured"] is None else f"{t['measured']:.3g}"
        note = f"  ({t['note']})" if t["note"] else ""
        print(f"  [{'PASS' if t['pass'] else 'FAIL'}] {t['target']}: {measured} {t['unit']} (target {t['op']} {t['limit']:g}){note}")


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), **data}, indent=2) + "\n")
    return path


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.fmean(values) if values else float("nan")


def workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"waypost-{prefix}-"))
