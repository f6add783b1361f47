"""Sending a request as a workload of a running local mesh: its address, hence its identity.

The client binds the workload's pod IP as its source address, so the node ztunnel recognises it exactly
as it recognises the pod's own traffic, and dials the destination the URL names. Host names resolve the
way Kubernetes DNS does from the client's namespace.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx


class RequestError(ValueError):
    pass


@dataclass(frozen=True)
class Response:
    status: int
    http_version: str
    headers: list[tuple[str, str]]
    body: str

    def as_json(self) -> dict[str, Any]:
        grouped: dict[str, list[str]] = {}
        for name, value in self.headers:
            grouped.setdefault(name.lower(), []).append(value)
        return {"status": self.status, "headers": grouped, "body": self.body}


def find_workload(state: dict[str, Any], ref: str) -> dict[str, Any]:
    """`NS/NAME` where NAME is a pod (or WorkloadEntry) name or a Deployment name (its first pod)."""
    if "/" not in ref:
        raise RequestError(f"--from must be NAMESPACE/NAME, got {ref!r}")
    ns, name = ref.split("/", 1)
    workloads = [w for w in state.get("workloads", []) if w["namespace"] == ns]
    for w in workloads:
        if w["pod"] == name:
            return w
    owned = sorted((w for w in workloads if w.get("owner") == name), key=lambda w: w["pod"])
    if owned:
        return owned[0]
    known = ", ".join(sorted({w.get("owner") or w["pod"] for w in workloads})) or "none"
    raise RequestError(f"no workload {ref!r} in the mesh (workloads in {ns}: {known})")


def resolve_host(state: dict[str, Any], host: str, client_namespace: str) -> str:
    """Kubernetes DNS from the client's namespace: svc, svc.ns, svc.ns.svc, svc.ns.svc.cluster.local; or an IP."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    name = host.rstrip(".")
    suffix = ".svc.cluster.local"
    if name.endswith(suffix):
        name = name[: -len(suffix)]
    elif name.endswith(".svc"):
        name = name[: -len(".svc")]
    parts = name.split(".")
    if len(parts) == 1:
        svc, ns = parts[0], client_namespace
    elif len(parts) == 2:
        svc, ns = parts
    else:
        raise RequestError(f"cannot resolve host {host!r}: not a service name of this mesh")
    for s in state.get("services", []):
        if s["namespace"] == ns and s["name"] == svc:
            return s["vip"]
    raise RequestError(f"cannot resolve host {host!r}: no service {ns}/{svc}")


def send(
    state: dict[str, Any],
    source: str,
    url: str,
    *,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    body: str | None = None,
    http2: bool = False,
    timeout: float = 30.0,
) -> Response:
    workload = find_workload(state, source)
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http":
        raise RequestError(f"only http:// URLs are supported (got {parts.scheme}://)")
    if not parts.hostname:
        raise RequestError(f"URL {url!r} has no host")
    address = resolve_host(state, parts.hostname, workload["namespace"])
    port = parts.port or 80
    target = urlunsplit(("http", f"{address}:{port}", parts.path or "/", parts.query, ""))
    request_headers = list(headers or [])
    if not any(k.lower() == "host" for k, _ in request_headers):
        request_headers.append(("Host", parts.netloc))
    transport = httpx.HTTPTransport(local_address=workload["address"], http1=not http2, http2=http2, retries=0)
    with httpx.Client(transport=transport, timeout=timeout, follow_redirects=False) as client:
        try:
            r = client.request(method, target, headers=request_headers, content=body)
        except httpx.HTTPError as exc:
            raise RequestError(f"request failed: {type(exc).__name__}: {exc}") from None
        return Response(r.status_code, r.http_version, list(r.headers.multi_items()), r.text)
