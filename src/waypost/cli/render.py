"""Tables for the CLI, kubectl-style: upper-case headers, columns padded, no borders.

On a terminal they are drawn by rich (bold headers, a rule under them); anywhere else (pipes, files,
tests) they are plain padded text, stable for scripts and golden files. `WAYPOST_PLAIN=1` forces plain.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def rich_output() -> bool:
    return sys.stdout.isatty() and not os.environ.get("WAYPOST_PLAIN") and os.environ.get("TERM") != "dumb"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    if rich_output():
        return _rich_table(cells)
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _rich_table(cells: list[list[str]]) -> str:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for header in cells[0]:
        grid.add_column(header, no_wrap=True)
    for row in cells[1:]:
        grid.add_row(*row)
    console = Console(width=max(80, sum(max(len(r[i]) for r in cells) + 3 for i in range(len(cells[0])))))
    with console.capture() as captured:
        console.print(grid)
    return captured.get().rstrip("\n")


def progress(state: dict[str, Any]) -> str:
    """One line on how far a starting mesh got, from its state.json."""
    proxies = state.get("proxies") or []
    ready = sum(1 for p in proxies if p.get("ready"))
    if not proxies:
        return "starting the control plane"
    waiting = [p["name"] for p in proxies if not p.get("ready")]
    line = f"starting the mesh: {ready}/{len(proxies)} proxies configured"
    return line + (f", waiting for {', '.join(waiting[:2])}{'…' if len(waiting) > 2 else ''}" if waiting else ", starting workloads")


def services_table(state: dict[str, Any]) -> str:
    rows = []
    for s in state.get("services", []):
        ports = ",".join(f"{p['port']}/{p['protocol']}" for p in s["ports"])
        rows.append([s["namespace"], s["name"], s["vip"], ports, s.get("waypoint") or "<none>"])
    return table(["NAMESPACE", "NAME", "VIP", "PORTS", "WAYPOINT"], rows)


def status(state: dict[str, Any]) -> str:
    cp = state.get("control_plane") or {}
    out = [
        f"mesh:          {state.get('state_dir')} ({state.get('phase')}{'' if state.get('running') else ', not running'})",
        f"control plane: pid {cp.get('pid')}, xDS {cp.get('xds')}"
        + (f", restarted {state['control_plane_restarts']} time(s) after a crash" if state.get("control_plane_restarts") else ""),
        "",
        table(
            ["PROXY", "KIND", "ADDRESS", "PID", "ADMIN", "METRICS", "VERSION", "READY"],
            [[p["name"], p["kind"], p["address"], p["pid"], p["admin"], p.get("metrics", ""), p.get("version"), p.get("ready")] for p in state.get("proxies", [])],
        ),
        f"merged metrics: {state.get('metrics')}",
        "",
        services_table(state),
        "",
        table(
            ["NAMESPACE", "POD", "ADDRESS", "IDENTITY", "WAYPOINT"],
            [[w["namespace"], w["pod"], w["address"], w["identity"], w.get("waypoint") or "<none>"] for w in state.get("workloads", [])],
        ),
    ]
    return "\n".join(out)


def response(r: Any) -> str:
    version = {"HTTP/1.1": "HTTP/1.1", "HTTP/2": "HTTP/2"}.get(r.http_version, r.http_version)
    lines = [f"{version} {r.status}"]
    lines += [f"{k}: {v}" for k, v in r.headers]
    return "\n".join(lines) + "\n\n" + r.body


def grpc_response(r: Any) -> str:
    lines = [f"grpc-status: {r.grpc_status}" + (f" ({r.grpc_message})" if r.grpc_message else "")]
    lines += [f"{k}: {v}" for k, v in r.headers + r.trailers]
    return "\n".join(lines) + "\n\n" + r.message
