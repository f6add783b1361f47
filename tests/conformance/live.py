"""A running conformance mesh as the harness sees it, and sending a case's request through it.

`Mesh` starts and stops one local mesh (`waypost up --detach` / `down`). `MeshView` answers the questions
a case asks of it from state.json: the first pod matching a selector (the client, `{POD_IP:…}`), a
Service's VIP, and whether an echo pod logged a request. `prepare` resolves a case's request
(README §3 "Sending a request"); `send` sends it from the client pod's IP over HTTP/1.1 or gRPC.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tests.conftest import waypost
from tests.conformance.grpc_client import grpc_call
from tests.conformance.http_client import http_request
from tests.conformance.judge import Exchange, placeholders, substitute
from tests.conformance.manifests import parse_selector

# After a response to a `reaches_backend: false` case, how long the echo log may take to show the request
# if a pod did receive it (the echo host flushes its log once per event-loop turn).
LOG_SETTLE = 0.05


class HarnessError(Exception):
    """The harness could not prepare a request (a corpus/overlay mismatch, not a mesh failure)."""


# -- the mesh -------------------------------------------------------------------------------------------

class Mesh:
    """One local mesh started with `waypost up --detach`; `down` is safe to call whatever happened."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def up(self, files: list[Path]) -> str | None:
        """None when the mesh is ready, else the error `up` reported."""
        args = [a for f in files for a in ("-f", str(f))]
        proc = waypost("up", *args, "--detach", "--state-dir", str(self.state_dir))
        if proc.returncode == 0:
            return None
        return (proc.stderr.strip() or proc.stdout.strip() or f"waypost up exited {proc.returncode}")

    def down(self) -> None:
        waypost("down", "--state-dir", str(self.state_dir))

    def state(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "state.json").read_text())

    @property
    def workload_log(self) -> Path:
        return self.state_dir / "logs" / "workloads.log"


@dataclass
class MeshView:
    """What a running mesh looks like to the harness: state.json plus the pods' labels."""

    state: dict[str, Any]
    labels: dict[tuple[str, str], dict[str, str]]
    workload_log: Path

    def first_pod(self, namespace: str, selector: str) -> dict[str, Any]:
        wanted = parse_selector(selector)
        pods = sorted(
            (w for w in self.state["workloads"]
             if w["kind"] == "Pod" and w["namespace"] == namespace
             and all(self.labels.get((namespace, w["owner"] or w["pod"]), {}).get(k) == v for k, v in wanted.items())),
            key=lambda w: w["pod"],
        )
        if not pods:
            raise HarnessError(f"no pod matches {selector!r} in namespace {namespace}")
        return pods[0]

    def service_address(self, namespace: str, name: str, port: int) -> str:
        for service in self.state["services"]:
            if service["namespace"] == namespace and service["name"] == name:
                if not any(p["port"] == port for p in service["ports"]):
                    raise HarnessError(f"service {namespace}/{name} has no port {port}")
                return service["vip"]
        raise HarnessError(f"no service {namespace}/{name} in the mesh")

    def log_offset(self) -> int:
        try:
            return self.workload_log.stat().st_size
        except OSError:
            return 0

    def echoed_since(self, offset: int, target: str) -> list[str]:
        """Echo log lines written after `offset` that show a pod received `target`."""
        try:
            with open(self.workload_log, "rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        needle = f"] Echoing back request made to {target} to client ("
        return [line for line in text.splitlines() if needle in line]


# -- requests -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prepared:
    """A case's request with every name resolved: who sends, where to, what."""

    protocol: str
    source_ip: str
    address: str
    port: int
    host_header: str
    method: str
    target: str
    headers: list[tuple[str, str]]
    grpc_method: str
    watch_log: bool          # reaches_backend: false → look for the request in the echo log


def client_of(case: dict[str, Any], test: dict[str, Any], corpus: dict[str, Any]) -> dict[str, Any]:
    key = case.get("client") or test.get("client") or corpus["defaults"]["client"]
    return corpus["clients"][key]


def prepare(case: dict[str, Any], test: dict[str, Any], corpus: dict[str, Any], view: MeshView) -> Prepared:
    request = {**corpus["defaults"]["request"], **case["request"]}
    client = client_of(case, test, corpus)
    source = view.first_pod(client["namespace"], client["selector"])
    ips = {sel: view.first_pod(client["namespace"], sel)["address"] for sel in placeholders(request["host"])}
    host = substitute(request["host"], ips)
    dest = request["destination"]
    port = int(dest["port"])
    if dest["kind"] == "service":
        address = view.service_address(dest["namespace"], dest["name"], port)
    elif dest["kind"] == "pod":
        address = view.first_pod(dest["namespace"], dest["selector"])["address"]
    else:
        raise HarnessError(f"unknown destination kind {dest['kind']!r}")
    case_headers = [(k, str(v)) for k, v in (request.get("headers") or {}).items()]
    host_header = next((v for k, v in case_headers if k.lower() == "host"), host)
    headers = [("Host", host_header)] + [(k, v) for k, v in case_headers if k.lower() != "host"]
    return Prepared(
        protocol=request["protocol"],
        source_ip=source["address"],
        address=address,
        port=port,
        host_header=host_header,
        method=request.get("method", "GET"),
        target=request.get("target") or request.get("path", "/"),
        headers=headers,
        grpc_method=request.get("grpc_method", ""),
        watch_log=case.get("expect", {}).get("reaches_backend") is False,
    )


def send(prepared: Prepared, view: MeshView, timeout: float) -> Exchange:
    offset = view.log_offset() if prepared.watch_log else 0
    if prepared.protocol == "grpc":
        metadata = [(k, v) for k, v in prepared.headers if k.lower() != "host"]
        exchange = grpc_call(prepared.source_ip, prepared.address, prepared.port, authority=prepared.host_header,
                             metadata=metadata, timeout=timeout, method=prepared.grpc_method)
    else:
        exchange = http_request(prepared.source_ip, prepared.address, prepared.port, method=prepared.method,
                                target=prepared.target, headers=prepared.headers, timeout=timeout)
    if prepared.watch_log:
        time.sleep(LOG_SETTLE)
        exchange = replace(exchange, backend_log=tuple(view.echoed_since(offset, prepared.target)))
    return exchange
