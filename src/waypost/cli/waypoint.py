"""`waypost waypoint generate|apply|delete|list|status`: istioctl's waypoint commands for the local mesh."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
import yaml

from .render import table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Manage waypoints (like istioctl waypoint).")


def gateway(name: str, namespace: str, traffic_for: str | None) -> dict[str, Any]:
    """The Gateway `istioctl waypoint generate` writes: class istio-waypoint, one HBONE listener on 15008."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if traffic_for:
        metadata["labels"] = {"istio.io/waypoint-for": traffic_for}
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": metadata,
        "spec": {"gatewayClassName": "istio-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
    }


def _docs(state_root: Path) -> list[dict[str, Any]]:
    try:
        return json.loads((state_root / "resources.json").read_text())
    except (OSError, ValueError):
        return []


def waypoints(docs: list[dict[str, Any]], namespace: str | None) -> list[dict[str, Any]]:
    out = [
        d for d in docs
        if d["kind"] == "Gateway" and d["spec"].get("gatewayClassName") == "istio-waypoint"
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]
    return sorted(out, key=lambda d: (d["metadata"]["namespace"], d["metadata"]["name"]))


def enrolled_namespace(docs: list[dict[str, Any]], namespace: str, waypoint: str) -> dict[str, Any]:
    """The Namespace with `istio.io/use-waypoint` set, keeping its other labels (what --enroll-namespace labels)."""
    current = next((d for d in docs if d["kind"] == "Namespace" and d["metadata"]["name"] == namespace), None)
    labels = dict((current or {}).get("metadata", {}).get("labels", {}))
    labels["istio.io/use-waypoint"] = waypoint
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}}


def list_table(docs: list[dict[str, Any]], all_namespaces: bool) -> str:
    rows = []
    for d in docs:
        programmed = next((c["status"] for c in d.get("status", {}).get("conditions", []) if c["type"] == "Programmed"), "Unknown")
        traffic = d["metadata"].get("labels", {}).get("istio.io/waypoint-for", "service")
        row = [d["metadata"]["name"], "default", programmed, traffic]
        rows.append([d["metadata"]["namespace"], *row] if all_namespaces else row)
    headers = ["NAME", "REVISION", "PROGRAMMED", "TRAFFIC TYPE"]
    return table(["NAMESPACE", *headers] if all_namespaces else headers, rows) if rows else "No waypoints found."


def status_table(docs: list[dict[str, Any]]) -> str:
    rows = []
    for d in docs:
        for c in d.get("status", {}).get("conditions", []):
            rows.append([d["metadata"]["namespace"], d["metadata"]["name"], c["status"], c["type"], c["reason"], c["message"]])
    return table(["NAMESPACE", "NAME", "STATUS", "TYPE", "REASON", "MESSAGE"], rows) if rows else "No waypoints found."


def register(parent: typer.Typer, state_opt, resolve_state, change, running) -> None:
    """Adds the group to the main CLI (the shared helpers live in cli.main)."""

    @app.command()
    def generate(
        name: str = typer.Option("waypoint", "--name"),
        namespace: str = typer.Option("default", "-n", "--namespace"),
        traffic_for: Optional[str] = typer.Option(None, "--for", help="service, workload, all or none"),
    ) -> None:
        """Print the waypoint Gateway for a namespace."""
        typer.echo(yaml.safe_dump(gateway(name, namespace, traffic_for), sort_keys=False).rstrip())

    @app.command("apply")
    def apply_waypoint(
        name: str = typer.Option("waypoint", "--name"),
        namespace: str = typer.Option("default", "-n", "--namespace"),
        traffic_for: Optional[str] = typer.Option(None, "--for"),
        enroll_namespace: bool = typer.Option(False, "--enroll-namespace", help="Label the namespace to use this waypoint."),
        state_dir: Optional[str] = state_opt,
    ) -> None:
        """Deploy a waypoint in the running mesh (and optionally make its namespace use it)."""
        state = resolve_state(state_dir)
        running(state)
        manifests = [gateway(name, namespace, traffic_for)]
        if enroll_namespace:
            manifests.append(enrolled_namespace(_docs(state.root), namespace, name))
        file = state.root / f"waypoint-{namespace}-{name}.yaml"
        file.write_text(yaml.safe_dump_all(manifests, sort_keys=False))
        change(state, {"op": "apply", "paths": [str(file)], "dry_run": False}, 120, False)

    @app.command("delete")
    def delete_waypoint(
        name: str = typer.Option("waypoint", "--name"),
        namespace: str = typer.Option("default", "-n", "--namespace"),
        state_dir: Optional[str] = state_opt,
    ) -> None:
        """Remove a waypoint from the running mesh."""
        state = resolve_state(state_dir)
        running(state)
        file = state.root / f"waypoint-{namespace}-{name}.delete.yaml"
        file.write_text(yaml.safe_dump(gateway(name, namespace, None), sort_keys=False))
        change(state, {"op": "delete", "paths": [str(file)], "ignore_not_found": False, "dry_run": False}, 120, False)

    @app.command("list")
    def list_waypoints(
        namespace: str = typer.Option("default", "-n", "--namespace"),
        all_namespaces: bool = typer.Option(False, "-A", "--all-namespaces"),
        state_dir: Optional[str] = state_opt,
    ) -> None:
        """List the waypoints of a namespace (or all)."""
        state = resolve_state(state_dir)
        typer.echo(list_table(waypoints(_docs(state.root), None if all_namespaces else namespace), all_namespaces))

    @app.command()
    def status(
        name: Optional[str] = typer.Option(None, "--name"),
        namespace: str = typer.Option("default", "-n", "--namespace"),
        state_dir: Optional[str] = state_opt,
    ) -> None:
        """Show the waypoints' status conditions."""
        state = resolve_state(state_dir)
        docs = [d for d in waypoints(_docs(state.root), namespace) if name is None or d["metadata"]["name"] == name]
        typer.echo(status_table(docs))

    parent.add_typer(app, name="waypoint")
