"""Plain-text tables for the CLI (kubectl-style: upper-case headers, columns padded, no borders)."""

from __future__ import annotations

from typing import Any


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


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
        f"control plane: pid {cp.get('pid')}, xDS {cp.get('xds')}",
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
