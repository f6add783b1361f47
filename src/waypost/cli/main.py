"""`waypost` command line: a thin shell over api, mesh and local. Rendering lives here only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from waypost.local.state import StateDir, pid_alive, resolve_state_dir

from . import render

app = typer.Typer(add_completion=False, no_args_is_help=True, help="waypost: an L7 waypoint for ambient meshes, on loopback.")

StateOpt = typer.Option(None, "--state-dir", help="State directory of the mesh (default ./.waypost, or $WAYPOST_STATE_DIR).")
DryRunOpt = typer.Option(False, "--dry-run", help="Validate and compute the change, but change nothing.")
AckTimeoutOpt = typer.Option(120, "--timeout", help="Seconds to wait for every affected proxy to ACK.")


def _state(state_dir: Optional[str]) -> StateDir:
    return StateDir(resolve_state_dir(state_dir))


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def up(
    filename: list[str] = typer.Option(..., "-f", "--filename", help="Manifest file or directory (repeatable)."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Run in the background; exit once everything is ready."),
    state_dir: Optional[str] = StateOpt,
    concurrency: int = typer.Option(1, "--concurrency", help="Worker threads per Envoy."),
    watch: bool = typer.Option(True, "--watch/--no-watch", help="Apply edits of the manifests to the running mesh."),
    mesh_config: Optional[str] = typer.Option(
        None, "--mesh-config", help="Istio MeshConfig YAML (extensionProviders, rootNamespace...); the ConfigMap istio/istio-system overlays it."
    ),
) -> None:
    """Start a local ambient mesh from the manifests; edits to them are applied while it runs."""
    # Imported here, not at the top: it is slow to import, and `apply` should start fast.
    from waypost.api import load_paths
    from waypost.api.meshconfig import load_mesh_config_file
    from waypost.local.blocks import privileged_ports_problem

    state = _state(state_dir)
    running = state.supervisor_pid() or state.keeper_pid()
    if running:
        _fail(f"a mesh is already running from {state.root} (pid {running}); run 'waypost down' first")
    mesh, problems = load_mesh_config_file(mesh_config) if mesh_config else (None, [])
    if problems:
        for d in problems:
            typer.echo(d.render(), err=True)
        _fail(f"invalid mesh config {mesh_config}; nothing was started")
    result = load_paths(filename)
    for d in result.warnings:
        typer.echo(d.render(), err=True)
    if result.errors:
        for d in result.errors:
            typer.echo(d.render(), err=True)
        _fail(f"{len(result.errors)} invalid resource(s); nothing was started")
    problem = privileged_ports_problem(result.resources)
    if problem:
        _fail(problem)
    paths = [str(Path(f).absolute()) for f in filename]
    state.ensure()
    state.state_file.unlink(missing_ok=True)
    # `up` starts from its manifests alone: what an earlier mesh here was `apply`-ed does not come back.
    state.applied_file.unlink(missing_ok=True)
    argv = _supervisor_args(state, paths, concurrency, watch, str(Path(mesh_config).absolute()) if mesh_config else None)
    if detach:
        _up_detached(state, argv)
        return
    # In the foreground this process is the keeper: it restarts the control plane if it crashes.
    from waypost.local.keeper import Keeper

    spinner = _Progress()
    shown = {"ready": False, "next": 0.0}

    def tick() -> None:
        if shown["ready"] or time.monotonic() < shown["next"]:
            return
        shown["next"] = time.monotonic() + 0.25
        current = state.read_state() or {}
        if current.get("phase") == "starting":
            spinner.update(current)
        elif current.get("phase") == "ready":
            spinner.stop()
            _print_ready(current, foreground=True)
            shown["ready"] = True

    keeper = Keeper(state, [sys.executable, "-m", "waypost.local.supervisor", *argv])
    signal.signal(signal.SIGTERM, keeper.request_stop)
    signal.signal(signal.SIGINT, keeper.request_stop)
    code = keeper.run(on_tick=tick)
    spinner.stop()
    final = state.read_state() or {}
    if code != 0:
        for line in final.get("errors", []):
            typer.echo(line, err=True)
        if not final.get("errors"):
            typer.echo(f"error: the control plane exited with {code}; see {state.logs / 'supervisor.log'}", err=True)
    raise typer.Exit(0 if code == 0 else 1)


class _Progress:
    """A spinner with the start-up progress on a terminal's stderr; nothing when stderr is not a terminal."""

    def __init__(self) -> None:
        self._status = None
        self._enabled = sys.stderr.isatty() and not os.environ.get("WAYPOST_PLAIN")

    def update(self, state: dict[str, Any]) -> None:
        if not self._enabled:
            return
        text = render.progress(state)
        if self._status is None:
            from rich.console import Console

            self._status = Console(stderr=True).status(text)
            self._status.start()
        else:
            self._status.update(text)

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def _print_ready(state: dict[str, Any], foreground: bool) -> None:
    typer.echo(render.services_table(state))
    if foreground:
        typer.echo("\nmesh is ready; press Ctrl-C to stop it")


def _supervisor_args(state: StateDir, paths: list[str], concurrency: int, watch: bool, mesh_config: str | None) -> list[str]:
    argv = ["--state-dir", str(state.root), "--concurrency", str(concurrency)]
    if not watch:
        argv.append("--no-watch")
    if mesh_config:
        argv += ["--mesh-config", mesh_config]
    for p in paths:
        argv += ["-f", p]
    return argv


def _up_detached(state: StateDir, supervisor_args: list[str]) -> None:
    # The keeper runs the supervisor (and restarts it if it crashes); see waypost/local/keeper.py.
    argv = [sys.executable, "-m", "waypost.local.keeper", "--state-dir", str(state.root), "--", *supervisor_args]
    with open(state.logs / "keeper.log", "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    spinner = _Progress()
    while time.monotonic() < deadline:
        current = state.read_state()
        if current and current.get("phase") == "starting":
            spinner.update(current)
        if current and current.get("phase") != "starting":
            spinner.stop()
        if current and current.get("phase") == "ready":
            _print_ready(current, foreground=False)
            return
        if current and current.get("phase") == "failed":
            for line in current.get("errors", []):
                typer.echo(line, err=True)
            proc.wait(30)
            _fail("the mesh failed to start")
        if proc.poll() is not None:
            spinner.stop()
            _fail(f"the control plane exited with {proc.returncode}; see {state.logs / 'supervisor.log'}")
        time.sleep(0.1)
    spinner.stop()
    proc.terminate()
    _fail("the mesh did not become ready within 120s")


@app.command()
def down(state_dir: Optional[str] = StateOpt) -> None:
    """Stop every process of the mesh."""
    from waypost.local.keeper import stop_leftovers

    state = _state(state_dir)
    current = state.read_state() or {}
    keeper, pid = state.keeper_pid(), state.supervisor_pid()
    # The keeper first (it would restart a stopped supervisor); it passes the stop on to the supervisor.
    for target in (keeper, pid):
        if not target or not pid_alive(target):
            continue
        os.kill(target, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while pid_alive(target) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(target):
            os.kill(target, signal.SIGKILL)
    # Anything the supervisor could not stop (it was killed, say) is stopped here.
    stop_leftovers(state)
    if not pid and not keeper and not current:
        typer.echo(f"no mesh in {state.root}")
        return
    typer.echo(f"stopped the mesh in {state.root}")


@app.command()
def status(
    state_dir: Optional[str] = StateOpt,
    output: str = typer.Option("table", "-o", "--output", help="table or json"),
) -> None:
    """Show the control plane, proxies, services and workloads of the running mesh."""
    state = _state(state_dir)
    current = state.read_state()
    if current is None:
        _fail(f"no mesh in {state.root}")
    assert current is not None
    current["running"] = state.supervisor_pid() is not None
    if output == "json":
        typer.echo(json.dumps(current, indent=2, sort_keys=True))
    else:
        typer.echo(render.status(current))
        problem = current.get("last_error")
        if problem:
            typer.echo(f"\nlast change of the watched manifests was rejected ({problem.get('time')}):", err=True)
            for line in problem.get("errors", []):
                typer.echo(f"  {line}", err=True)


@app.command()
def request(
    url: str = typer.Argument(..., help="http://HOST[:PORT]/PATH or grpc://HOST:PORT/pkg.Service/Method (the path is optional); HOST is a service name, VIP or pod IP."),
    source: str = typer.Option(..., "--from", help="NAMESPACE/NAME of the sending workload (Deployment or Pod)."),
    method: str = typer.Option("GET", "-X", "--request"),
    header: list[str] = typer.Option([], "-H", "--header", help="'Name: value' (repeatable)."),
    data: Optional[str] = typer.Option(None, "-d", "--data"),
    http2: bool = typer.Option(False, "--http2", help="HTTP/2 with prior knowledge (h2c)."),
    output: str = typer.Option("text", "-o", "--output", help="text or json"),
    state_dir: Optional[str] = StateOpt,
) -> None:
    """Send one HTTP request from a workload, through the mesh like the pod's own traffic."""
    from waypost.local.client import RequestError, send, send_grpc

    state = _state(state_dir)
    current = state.read_state()
    if current is None or current.get("phase") != "ready" or state.supervisor_pid() is None:
        _fail(f"no running mesh in {state.root}")
    assert current is not None
    headers = []
    for h in header:
        if ":" not in h:
            _fail(f"header {h!r} must be 'Name: value'")
        name, value = h.split(":", 1)
        headers.append((name.strip(), value.strip()))
    try:
        if url.startswith("grpc://"):
            # grpc://HOST[:PORT][/package.Service/Method]: one unary call, metadata from -H, message from -d.
            target, _, path = url[len("grpc://") :].partition("/")
            grpc_response = send_grpc(current, source, target, f"/{path}" if path else "/proto.EchoTestService/Echo", metadata=headers, message=data or "")
            typer.echo(json.dumps(grpc_response.as_json()) if output == "json" else render.grpc_response(grpc_response))
            return
        response = send(current, source, url, method=method.upper(), headers=headers, body=data, http2=http2)
    except RequestError as exc:
        _fail(str(exc))
        return
    if output == "json":
        typer.echo(json.dumps(response.as_json()))
    else:
        typer.echo(render.response(response))


def _mesh_documents(state_dir: Optional[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The mesh's state.json and the resources it runs (resources.json), or a clear error."""
    state = _state(state_dir)
    current = state.read_state()
    if current is None:
        _fail(f"no mesh in {state.root}")
    assert current is not None
    try:
        docs = json.loads(state.resources_file.read_text())
    except (OSError, ValueError):
        docs = []
    return current, docs


@app.command()
def get(
    kind: str = typer.Argument(..., help="Resource kind: service, gateway, httproute, grpcroute, pod, ..."),
    name: Optional[str] = typer.Argument(None),
    namespace: Optional[str] = typer.Option(None, "-n", "--namespace"),
    all_namespaces: bool = typer.Option(False, "-A", "--all-namespaces"),
    output: str = typer.Option("", "-o", "--output", help="wide, yaml or json"),
    state_dir: Optional[str] = StateOpt,
) -> None:
    """Show resources of the running mesh with their computed status (like kubectl get)."""
    from . import get as getter

    current, docs = _mesh_documents(state_dir)
    try:
        resolved = getter.kind_of(kind)
        ns = None if all_namespaces else (namespace or "default")
        selected = getter.select(docs + getter.pod_documents(current), resolved, name, ns)
    except getter.GetError as exc:
        _fail(str(exc))
        return
    typer.echo(getter.render(resolved, selected, output, current, all_namespaces, single=name is not None))


def _running(state: StateDir) -> None:
    current = state.read_state()
    if current is None or current.get("phase") != "ready" or state.supervisor_pid() is None:
        _fail(f"no running mesh in {state.root}")


def _change(state: StateDir, request: dict[str, Any], timeout: float, dry_run: bool) -> None:
    """Sends a change to the supervisor and renders its answer as kubectl does; exits 1 unless it was applied."""
    from waypost.local.control import ControlError, call, diagnostic_from_json

    try:
        response = call(state.control_socket, request, timeout)
    except ControlError as exc:
        _fail(str(exc))
        return
    diagnostics = [diagnostic_from_json(d) for d in response.get("diagnostics", [])]
    for d in diagnostics:
        typer.echo(d.render(), err=True)
    suffix = " (server dry run)" if dry_run else ""
    for result in response.get("results", []):
        typer.echo(f"{result['resource']} {result['action']}{suffix}")
    for line in response.get("errors", []):
        typer.echo(line, err=True)
    errors = [d for d in diagnostics if d.severity.value == "Error"]
    if errors:
        _fail(f"{len(errors)} invalid resource(s); nothing was changed")
    if not response.get("ok"):
        raise typer.Exit(1)


@app.command()
def apply(
    filename: list[str] = typer.Option(..., "-f", "--filename", help="Manifest file or directory (repeatable)."),
    dry_run: bool = DryRunOpt,
    timeout: float = AckTimeoutOpt,
    state_dir: Optional[str] = StateOpt,
) -> None:
    """Create or replace resources in the running mesh; returns once every affected proxy serves them."""
    state = _state(state_dir)
    _running(state)
    paths = [str(Path(f).absolute()) for f in filename]
    _change(state, {"op": "apply", "paths": paths, "dry_run": dry_run}, timeout, dry_run)


@app.command()
def delete(
    filename: list[str] = typer.Option(..., "-f", "--filename", help="Manifest file or directory naming the resources (repeatable)."),
    ignore_not_found: bool = typer.Option(False, "--ignore-not-found", help="A resource that does not exist is not an error."),
    dry_run: bool = DryRunOpt,
    timeout: float = AckTimeoutOpt,
    state_dir: Optional[str] = StateOpt,
) -> None:
    """Delete the resources named in the manifests from the running mesh (deleting a Namespace deletes its contents)."""
    state = _state(state_dir)
    _running(state)
    paths = [str(Path(f).absolute()) for f in filename]
    _change(state, {"op": "delete", "paths": paths, "ignore_not_found": ignore_not_found, "dry_run": dry_run}, timeout, dry_run)


@app.command()
def describe(
    kind: str = typer.Argument(..., help="Resource kind: service, gateway, httproute, pod, deployment, namespace, ..."),
    name: str = typer.Argument(...),
    namespace: Optional[str] = typer.Option(None, "-n", "--namespace"),
    state_dir: Optional[str] = StateOpt,
) -> None:
    """Show one resource: its conditions, what it attaches to, and what is attached to it."""
    from . import describe as describer
    from . import get as getter

    current, docs = _mesh_documents(state_dir)
    try:
        resolved = getter.kind_of(kind)
        doc = describer.find(docs, current, resolved, name, namespace or "default", getter.KINDS[resolved][1])
    except getter.GetError as exc:
        _fail(str(exc))
        return
    typer.echo(describer.describe(doc, docs, current))


@app.command()
def analyze(
    filename: list[str] = typer.Option(..., "-f", "--filename", help="Manifest file or directory (repeatable)."),
    output: str = typer.Option("log", "-o", "--output", help="log, json or yaml"),
    failure_threshold: str = typer.Option("Error", "--failure-threshold", help="Info, Warning or Error: exit 79 on findings at or above it."),
    mesh_config: Optional[str] = typer.Option(None, "--mesh-config", help="Istio MeshConfig YAML, as `up --mesh-config` takes it."),
) -> None:
    """Analyze manifests offline for problems and ambient traps (istioctl analyze style)."""
    import yaml

    from waypost.api import load_paths
    from waypost.api.meshconfig import load_mesh_config_file
    from waypost.mesh import AddressPlan, build
    from waypost.mesh.analysis import LEVELS, from_diagnostics
    from waypost.mesh.analysis import analyze as run_analysis

    if failure_threshold not in LEVELS:
        _fail(f"--failure-threshold must be one of {', '.join(LEVELS)}")
    result = load_paths(filename)
    mesh, problems = load_mesh_config_file(mesh_config) if mesh_config else (None, [])
    result.diagnostics.extend(problems)
    snapshot = build(result.resources, AddressPlan(1), mesh_config=mesh)  # addresses do not matter offline
    findings = from_diagnostics(result.diagnostics) + run_analysis(result.resources, snapshot)
    if output == "json":
        typer.echo(json.dumps([f.as_dict() for f in findings], indent=2))
    elif output == "yaml":
        typer.echo(yaml.safe_dump([f.as_dict() for f in findings], sort_keys=False).rstrip())
    elif findings:
        for f in findings:
            typer.echo(f.render())
    else:
        typer.echo(f"\u2714 No validation issues found when analyzing {len(result.resources)} resources.")
    if any(LEVELS.index(f.level) >= LEVELS.index(failure_threshold) for f in findings):
        raise typer.Exit(79)


@app.command("proxy-config")
def proxy_config(
    kind: str = typer.Argument(..., help="listener, route, cluster, secret or all"),
    proxy: str = typer.Argument(..., help="Proxy name as `waypost status` lists it (or its last part, e.g. the waypoint's name)."),
    output: str = typer.Option("short", "-o", "--output", help="short, json or yaml"),
    state_dir: Optional[str] = StateOpt,
) -> None:
    """Show the configuration an Envoy is running, from its admin config dump (like istioctl proxy-config)."""
    from . import proxy_config as pc

    if kind not in pc.KINDS:
        _fail(f"kind must be one of {', '.join(pc.KINDS)}")
    admin = _proxy_admin(_state(state_dir), proxy)
    try:
        typer.echo(pc.render(kind, admin, output))
    except OSError as exc:
        _fail(f"cannot read {proxy}'s config dump: {exc}")


def _proxy_admin(state: StateDir, proxy: str) -> str:
    current = state.read_state() or {}
    proxies = current.get("proxies", [])
    matches = [p for p in proxies if proxy in (p["name"], p["name"].replace("~", "."), p["name"].split("~")[-1])]
    if len(matches) != 1:
        names = ", ".join(p["name"] for p in proxies) or "none"
        _fail(f"{'ambiguous' if matches else 'no'} proxy {proxy!r} (proxies: {names})")
    return matches[0]["admin"]


@app.command()
def metrics(state_dir: Optional[str] = StateOpt) -> None:
    """Print the mesh's merged Prometheus metrics (Istio names; each sample labelled with its proxy)."""
    from waypost.local.metrics import fetch, merge

    state = _state(state_dir)
    current = state.read_state()
    if current is None or state.supervisor_pid() is None:
        _fail(f"no running mesh in {state.root}")
    assert current is not None
    try:
        typer.echo(merge((p["name"], fetch(p["admin"])) for p in current.get("proxies", [])), nl=False)
    except OSError as exc:
        _fail(f"cannot scrape a proxy: {exc}")


@app.command()
def logs(
    proxy: str = typer.Argument(..., help="Proxy name as `waypost status` lists it (e.g. waypoint~ns~name, ztunnel~node-0)."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines."),
    state_dir: Optional[str] = StateOpt,
) -> None:
    """Print a proxy's access log; denied requests end with the AuthorizationPolicy and rule that decided."""
    from waypost.local.logs import is_access_log, readable

    state = _state(state_dir)
    current = state.read_state() or {}
    names = [p["name"] for p in current.get("proxies", [])]
    matches = [n for n in names if n == proxy or n.replace("~", ".") == proxy or n.endswith(f"~{proxy}")]
    if not matches:
        _fail(f"no proxy {proxy!r} (proxies: {', '.join(names) or 'none'})")
    path = state.logs / f"{matches[0].replace('~', '.')}.log"
    position = 0
    while True:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                f.seek(position)
                for line in f:
                    if is_access_log(line):
                        typer.echo(readable(line.rstrip("\n")))
                position = f.tell()
        except FileNotFoundError:
            pass
        if not follow:
            return
        time.sleep(0.5)


@app.command("ztunnel-config")
def ztunnel_config(
    kind: str = typer.Argument(..., help="workload, service or policy"),
    namespace: Optional[str] = typer.Option(None, "-n", "--namespace", help="Only this namespace."),
    output: str = typer.Option("short", "-o", "--output", help="short, json or yaml"),
    state_dir: Optional[str] = StateOpt,
) -> None:
    """Show the workloads, services and policies as the ztunnels see them (like istioctl ztunnel-config)."""
    from . import ztunnel_config as zc

    current, docs = _mesh_documents(state_dir)
    try:
        typer.echo(zc.render(kind, zc.snapshot_from_documents(current, docs), output, namespace))
    except zc.ViewError as exc:
        _fail(str(exc))


experimental = typer.Typer(add_completion=False, no_args_is_help=True, help="Experimental commands.")
authz = typer.Typer(add_completion=False, no_args_is_help=True, help="Authorization tools.")
experimental.add_typer(authz, name="authz")
app.add_typer(experimental, name="x")


@authz.command("check")
def authz_check(
    url: str = typer.Argument(..., help="http://HOST[:PORT]/PATH; HOST is a service name, FQDN, VIP or pod IP."),
    source: str = typer.Option(..., "--from", help="NAMESPACE/NAME of the sending workload (Deployment or Pod)."),
    method: str = typer.Option("GET", "-X", "--request"),
    header: list[str] = typer.Option([], "-H", "--header", help="'Name: value' (repeatable), e.g. 'Authorization: Bearer TOKEN'."),
    send: bool = typer.Option(False, "--send", help="Then send it for real and say whether the outcome matches."),
    filename: list[str] = typer.Option([], "-f", "--filename", help="Check against these manifests offline instead of the running mesh."),
    output: str = typer.Option("text", "-o", "--output", help="text or json"),
    state_dir: Optional[str] = StateOpt,
) -> None:
    """Predict, without sending, what the mesh does with a request: its path, the policies each proxy
    evaluates, the one that decides, and the status the client sees. Computed from the Envoy config the
    proxies run."""
    from waypost.envoy.evaluate import Unsupported

    from . import authz_check as ac

    if output not in ("text", "json"):
        _fail("--output must be text or json")
    if filename and send:
        _fail("--send needs the running mesh; it cannot be combined with -f")
    current = None
    try:
        if filename:
            mesh = ac.offline_mesh(filename)
        else:
            state = _state(state_dir)
            current = state.read_state()
            if current is None or current.get("phase") != "ready" or state.supervisor_pid() is None:
                _fail(f"no running mesh in {state.root} (use -f PATH to check manifests offline)")
            assert current is not None
            mesh = ac.live_mesh(current)
        evaluation, workload, headers = ac.run(mesh, source, url, method, header)
    except (ac.CheckError, Unsupported) as exc:
        _fail(str(exc))
        return
    payload = ac.as_json(evaluation) if output == "json" else None
    text = ac.render_text(evaluation, workload, url) if output == "text" else ""
    code = 0
    if send:
        assert current is not None
        real = ac.send(current, source, url, method, headers)
        agreed = ac.matches(evaluation.outcome, real)
        if payload is not None:
            payload["sent"] = {"status": real.status, "error": real.error, "matches": agreed}
        else:
            verdict = {True: "matches the prediction", False: "DOES NOT match the prediction", None: "(no prediction to compare)"}[agreed]
            text += f"\nsent:     {ac.describe_real(real)}: {verdict}"
        code = 0 if agreed is not False else 3
    typer.echo(ac.dumps(payload) if payload is not None else text)
    raise typer.Exit(code)


from . import waypoint as _waypoint  # noqa: E402 - registered after the helpers it uses

_waypoint.register(app, StateOpt, _state, _change, _running)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
