"""`waypost x authz check`: what the mesh would do with one request, and why, without sending it.

The prediction comes from `envoy.evaluate`, which interprets the Envoy config the proxies run:
- of a running mesh, each proxy's own admin config dump (what it has ACKed and runs now);
- offline (`-f PATH`), the translation of the manifests (`api` → `mesh.build` → `envoy.translate`), the
  very dicts the xDS server would send.
`--send` then sends the request with `waypost request`'s code and says whether the real outcome agrees.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from waypost.envoy.evaluate import Evaluation, Evaluator, Hop, Outcome, Proxy, Request


class CheckError(ValueError):
    pass


@dataclass(frozen=True)
class Mesh:
    """What a check needs: the mesh view (state.json's shape) and every proxy's config."""

    view: dict[str, Any]
    proxies: tuple[Proxy, ...]
    source: str  # where the configs came from, for the reader


def live_mesh(state: dict[str, Any]) -> Mesh:
    """The running mesh: proxies' config dumps (exactly what each Envoy runs)."""
    from .proxy_config import clusters, config_dump, listeners, routes

    proxies = []
    for p in state.get("proxies", []):
        try:
            dump = config_dump(p["admin"])
        except OSError as exc:
            raise CheckError(f"cannot read {p['name']}'s config dump at {p['admin']}: {exc}") from None
        proxies.append(Proxy.of(p["name"], listeners(dump), clusters(dump), routes(dump)))
    if not proxies:
        raise CheckError("the mesh runs no proxies")
    return Mesh(state, tuple(proxies), "the proxies' config dumps")


def offline_mesh(paths: Sequence[str]) -> Mesh:
    """The manifests' translation, as the control plane would serve it (addresses of block 1)."""
    from waypost.api import load_paths
    from waypost.envoy import translate
    from waypost.local.documents import mesh_view
    from waypost.mesh import AddressPlan, build

    result = load_paths(list(paths))
    if result.errors:
        raise CheckError("invalid manifests:\n" + "\n".join(d.render() for d in result.errors))
    snapshot = build(result.resources, AddressPlan(1))
    configs = translate(snapshot)
    proxies = tuple(Proxy.of(pid, c.listeners, c.clusters, c.routes) for pid, c in configs.items())
    return Mesh(mesh_view(snapshot), proxies, "the translation of " + ", ".join(paths))


def parse_headers(values: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for h in values:
        if ":" not in h:
            raise CheckError(f"header {h!r} must be 'Name: value'")
        name, value = h.split(":", 1)
        out.append((name.strip(), value.strip()))
    return out


def build_request(view: dict[str, Any], source: str, url: str, method: str, headers: list[tuple[str, str]]) -> tuple[Request, dict[str, Any]]:
    """The request `waypost request` would send: same workload lookup and host resolution."""
    from waypost.local.client import RequestError, resolve_url

    try:
        workload, address, parts = resolve_url(view, source, url)
    except RequestError as exc:
        raise CheckError(str(exc)) from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = Request(workload["address"], address, parts.port or 80, method.upper(), path, parts.netloc, tuple(headers))
    return request, workload


def check(mesh: Mesh, request: Request, now: float | None = None) -> Evaluation:
    applications = {w["app_address"]: f"{w['namespace']}/{w['pod']}" for w in mesh.view.get("workloads", [])}
    return Evaluator(mesh.proxies, applications, time.time() if now is None else now).evaluate(request)


# --- rendering -------------------------------------------------------------------------------------
def _merged(hops: Sequence[Hop]) -> list[tuple[str, str, list[Hop]]]:
    """Consecutive hops of one proxy in one role (an HBONE termination and its inner listener) as one step."""
    out: list[tuple[str, str, list[Hop]]] = []
    for hop in hops:
        if out and out[-1][0] == hop.proxy and out[-1][1] == hop.role:
            out[-1][2].append(hop)
        else:
            out.append((hop.proxy, hop.role, [hop]))
    return out


def _verdict(o: Outcome) -> str:
    if o.verdict == "allowed":
        return f"ALLOWED ({o.reason})" if o.status is None else f"ALLOWED: {o.status} ({o.reason})"
    if o.verdict == "denied":
        what = f"{o.status}" if o.status is not None else "connection reset"
        return f"DENIED: {what} ({o.reason})"
    return f"UNKNOWN: {o.reason}"


def render_text(evaluation: Evaluation, workload: dict[str, Any], url: str) -> str:
    r = evaluation.request
    lines = [
        f"request:  {r.method} {url} from {workload['namespace']}/{workload['pod']} ({r.source_ip}) to {r.destination_ip}:{r.destination_port}",
    ]
    for index, path in enumerate(evaluation.paths):
        if len(evaluation.paths) > 1:
            lines.append("")
            lines.append(f"path {index + 1} of {len(evaluation.paths)}" + (f" ({', '.join(path.choices)})" if path.choices else "") + ":")
        steps = _merged(path.hops)
        route = [f"{workload['namespace']}/{workload['pod']}"] + [f"{role} {proxy.split('~', 1)[-1].replace('~', '/')}" for proxy, role, _ in steps]
        if path.outcome.delivered_to:
            route.append(path.outcome.reason.removeprefix("delivered to ").split(" at ")[0])
        lines.append("path:     " + " -> ".join(route))
        for n, (proxy, role, hops) in enumerate(steps, 1):
            peer = next((h.peer for h in reversed(hops) if h.peer), None)
            source = next((h.source_ip for h in reversed(hops) if h.source_ip), None)
            chain = next((h.chain for h in reversed(hops) if h.chain != "-"), "-")
            seen = f"peer {peer}" if peer else "no peer identity"
            lines.append(f"  {n}. {role} ({proxy}) chain {chain}: {seen}, source {source or '-'}")
            checks = [c for h in hops for c in h.checks]
            if not checks:
                lines.append("       no policy")
            for c in checks:
                lines.append(f"       {c.kind:<6} {_check_summary(c)}")
                for name in c.considered:
                    mark = "  <- matched" if name == c.matched else ""
                    lines.append(f"                {name}{mark}")
            for h in hops:
                if h.note:
                    lines.append(f"       ({h.note})")
        lines.append("verdict:  " + _verdict(path.outcome))
    if len(evaluation.paths) > 1:
        lines.append("")
        lines.append("overall:  " + _verdict(evaluation.outcome))
    return "\n".join(lines)


def _check_summary(c: Any) -> str:
    if c.kind == "JWT":
        return f"{c.filter}: {c.detail}"
    if c.kind == "CUSTOM":
        return f"{c.filter}: {c.detail}"
    if c.kind == "SHADOW":
        return f"{c.filter}: shadow rules, " + (f"{c.matched} matches" if c.matched else "no match") + " (never changes the outcome)"
    if c.kind == "AUDIT":
        return f"{c.filter}: " + (f"{c.matched} matches: logged" if c.matched else "no match") + " (never changes the outcome)"
    if c.kind == "ALLOW":
        return f"{c.filter}: " + (f"{c.matched} allows" if c.matched else "no policy matches: denied")
    if c.kind == "DENY":
        return f"{c.filter}: " + (f"{c.matched} denies" if c.matched else "no policy matches: continues")
    return f"{c.filter}: {c.effect}"


def as_json(evaluation: Evaluation) -> dict[str, Any]:
    return {"request": asdict(evaluation.request), "outcome": asdict(evaluation.outcome), "paths": [asdict(p) for p in evaluation.paths]}


# --- sending, and comparing -----------------------------------------------------------------------
@dataclass(frozen=True)
class Real:
    status: int | None  # None: the connection was reset or refused
    body: str
    error: str = ""


def send(state: dict[str, Any], source: str, url: str, method: str, headers: list[tuple[str, str]], timeout: float = 10.0) -> Real:
    from waypost.local.client import RequestError
    from waypost.local.client import send as send_request

    try:
        r = send_request(state, source, url, method=method.upper(), headers=headers, timeout=timeout)
    except RequestError as exc:
        return Real(None, "", str(exc))
    return Real(r.status, r.body)


def _mesh_denial(real: Real) -> bool:
    """A response the proxies produced rather than the application (RBAC, JWT, upstream failure)."""
    if real.status is None:
        return True
    if real.status == 403 and real.body.startswith("RBAC: access denied"):
        return True
    if real.status == 401 and real.body.startswith("Jwt"):
        return True
    return real.status == 503 and ("upstream connect error" in real.body or "no healthy upstream" in real.body)


def matches(predicted: Outcome, real: Real) -> bool | None:
    """Whether the real outcome is the predicted one; None when the prediction could not be made."""
    if predicted.verdict == "unknown":
        return None
    if predicted.verdict == "allowed" and predicted.status is None:
        return not _mesh_denial(real)
    return real.status == predicted.status


def describe_real(real: Real) -> str:
    if real.status is None:
        return f"connection reset ({real.error})"
    return f"{real.status}" + (f" {real.body.strip()[:60]!r}" if _mesh_denial(real) else " from the application")


def run(mesh: Mesh, source: str, url: str, method: str, header_values: Sequence[str], now: float | None = None) -> tuple[Evaluation, dict[str, Any], list[tuple[str, str]]]:
    headers = parse_headers(header_values)
    request, workload = build_request(mesh.view, source, url, method, headers)
    return check(mesh, request, now), workload, headers


def dumps(payload: Any) -> str:
    return json.dumps(payload, indent=2, sort_keys=True)
