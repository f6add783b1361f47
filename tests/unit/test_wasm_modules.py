"""The proxy-wasm modules of wasm/ (WebAssembly text assembled by wasm/build.py), run by the real Envoy.

Each e2e test starts its own Envoy (static bootstrap, listener and admin on ephemeral ports, own tmp dir,
--disable-hot-restart: parallel-safe) in front of a tiny Python upstream that echoes the request headers,
and sends real HTTP requests through the `envoy.filters.http.wasm` filter(s) under test (V8 runtime: the
only Wasm runtime compiled into this Envoy build). The other tests check that the committed artifacts are
what wasm/build.py makes of the sources, and run the shared runtime under a fake host in wasmtime.
"""

from __future__ import annotations

import hashlib
import importlib.util
import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from waypost.local.binary import envoy_path

REPO = Path(__file__).resolve().parents[2]
WASM = REPO / "wasm"
OUT = WASM / "out"

# ---------------------------------------------------------------------------------------------------------
# Fixtures: an upstream that echoes request headers, and Envoy processes.


class _Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.startswith("/modules/"):  # serves wasm/out/ for remote code fetches
            file = OUT / self.path.removeprefix("/modules/")
            body = file.read_bytes() if file.is_file() else b""
            self.send_response(200 if body else 404)
        else:
            body = json.dumps({"headers": [[k.lower(), v] for k, v in self.headers.items()]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def module_path(name: str) -> str:
    path = OUT / f"{name}.wasm"
    assert path.is_file(), f"{path} is missing: run .venv/bin/python wasm/build.py"
    return str(path)


def wasm_filter(module: str, config: dict | str | None = None, *, name: str | None = None, fail_open: bool | None = None,
                failure_policy: str | None = None, vm_id: str = "", vm_configuration: str | None = None,
                code: dict | None = None) -> dict:
    """An `envoy.filters.http.wasm` http_filters entry loading wasm/out/<module>.wasm with the V8 runtime.

    `config` is the plugin configuration, passed as Istio passes a WasmPlugin's pluginConfig: a
    google.protobuf.StringValue holding the JSON text.
    """
    vm: dict = {"vm_id": vm_id, "runtime": "envoy.wasm.runtime.v8", "code": code or {"local": {"filename": module_path(module)}}}
    if vm_configuration is not None:
        vm["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": vm_configuration}
    plugin: dict = {"name": name or module, "root_id": "", "vm_config": vm}
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(config)
        plugin["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": text}
    if fail_open is not None:
        plugin["fail_open"] = fail_open
    if failure_policy is not None:
        plugin["failure_policy"] = failure_policy
    return {"name": "envoy.filters.http.wasm",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": plugin}}


def bootstrap(upstream_port: int, http_filters: list[dict], access_log: Path) -> dict:
    router = {"name": "envoy.filters.http.router",
              "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "wasm_test",
        "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": str(access_log),
            "log_format": {"text_format_source": {"inline_string": "%RESPONSE_CODE% %RESPONSE_CODE_DETAILS%\n"}}}}],
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]},
        "http_filters": [*http_filters, router],
    }

    def cluster(name: str) -> dict:
        return {"name": name, "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": "127.0.0.1", "port_value": upstream_port}}}}]}]}}

    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{"name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                           "typed_config": hcm}]}]}],
            "clusters": [cluster("upstream"), cluster("modules")],
        },
    }


@dataclass
class Envoy:
    proc: subprocess.Popen
    dir: Path
    port: int = 0
    admin: str = ""

    def request(self, path: str = "/", headers: dict[str, str] | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, [(k.lower(), v) for k, v in response.getheaders()], response.read()
        finally:
            conn.close()

    def admin_get(self, path: str) -> tuple[int, bytes]:
        host, port = self.admin.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=2)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stats(self, prefix: str) -> dict[str, int]:
        stats = json.loads(self.admin_get(f"/stats?format=json&filter=^{prefix}")[1])["stats"]
        return {s["name"]: s["value"] for s in stats if "value" in s}

    def log(self) -> str:
        path = self.dir / "envoy.log"
        return path.read_text() if path.exists() else ""

    def access_log(self) -> list[str]:
        """`<status> <response code details>` per request; complete once Envoy has stopped."""
        path = self.dir / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_envoy(tmp: Path, upstream_port: int, http_filters: list[dict], *, timeout: float = 10.0) -> Envoy:
    """Starts Envoy and waits until it is LIVE with its listener bound (`--disable-hot-restart`: no shared
    memory, so concurrent Envoys need no distinct --base-id; admin and listener on ephemeral ports)."""
    tmp.mkdir(parents=True, exist_ok=True)
    boot = tmp / "bootstrap.json"
    boot.write_text(json.dumps(bootstrap(upstream_port, http_filters, tmp / "access.log"), indent=1))
    admin_file = tmp / "admin.txt"
    argv = [envoy_path(), "-c", str(boot), "--disable-hot-restart", "--concurrency", "1", "--log-level", "warning",
            "--component-log-level", "wasm:info", "--log-path", str(tmp / "envoy.log"), "--admin-address-path",
            str(admin_file), "--drain-time-s", "0", "--file-flush-interval-msec", "100"]
    envoy = Envoy(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT), tmp)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if envoy.proc.poll() is not None:
            raise EnvoyExited(envoy)
        if not envoy.admin and admin_file.is_file():
            envoy.admin = admin_file.read_text().strip()
        if envoy.admin:
            try:
                if envoy.admin_get("/ready")[0] == 200:  # LIVE: initialization (e.g. remote code fetches) is over
                    for status in json.loads(envoy.admin_get("/listeners?format=json")[1])["listener_statuses"]:
                        envoy.port = int(status["local_address"]["socket_address"]["port_value"])
                    if envoy.port:
                        return envoy
            except (OSError, ValueError, KeyError):
                pass
        time.sleep(0.05)
    envoy.stop()
    raise AssertionError(f"envoy not ready in {timeout}s:\n{envoy.log()}")


class EnvoyExited(Exception):
    def __init__(self, envoy: Envoy) -> None:
        super().__init__(f"envoy exited {envoy.proc.returncode}")
        self.envoy = envoy


@pytest.fixture
def envoy(tmp_path: Path, upstream: int) -> Iterator:
    """`envoy(*http_filters)` starts an Envoy whose listener runs these filters then the router to `upstream`."""
    started: list[Envoy] = []

    def start(*http_filters: dict, **kwargs) -> Envoy:
        try:
            proxy = start_envoy(tmp_path / f"envoy{len(started)}", upstream, list(http_filters), **kwargs)
        except EnvoyExited as exited:
            started.append(exited.envoy)
            raise
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def header_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    """All values of header `name`, whether sent as several lines or comma-joined, in order."""
    return [v.strip() for k, value in headers if k == name for v in value.split(",")]


def echoed(body: bytes, name: str) -> list[str]:
    """Values of request header `name` as the upstream received them."""
    return header_values([(k, v) for k, v in json.loads(body)["headers"]], name)


def remote_code(upstream_port: int, module: str, sha256: str) -> dict:
    """vm_config.code fetching wasm/out/<module>.wasm over HTTP from the echo upstream (cluster `modules`)."""
    return {"remote": {"http_uri": {"uri": f"http://127.0.0.1:{upstream_port}/modules/{module}.wasm", "cluster": "modules",
                                    "timeout": "2s"},
                       "sha256": sha256, "retry_policy": {"num_retries": 1}}}


def sha256_of(module: str) -> str:
    return hashlib.sha256(Path(module_path(module)).read_bytes()).hexdigest()


def wasmtime_or_skip():
    """The `wasmtime` package (the assembler); missing it skips here and fails under CI."""
    try:
        import wasmtime
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("the wasmtime package (wasm/build.py's assembler) must be installed under CI")
        pytest.skip("the wasmtime package is not installed")
    return wasmtime


# ---------------------------------------------------------------------------------------------------------
# The artifacts: committed, and exactly what wasm/build.py makes of the sources.


def test_sha256sums_list_the_committed_artifacts() -> None:
    lines = (OUT / "SHA256SUMS").read_text().splitlines()
    listed = dict(reversed(line.split("  ", 1)) for line in lines)
    assert sorted(listed) == ["add_header.wasm", "deny_without_header.wasm", "trap.wasm"]
    for name, digest in listed.items():
        assert hashlib.sha256((OUT / name).read_bytes()).hexdigest() == digest, name


def test_build_reproduces_the_committed_artifacts() -> None:
    wasmtime_or_skip()
    check = subprocess.run([sys.executable, str(WASM / "build.py"), "--check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert check.stdout == (OUT / "SHA256SUMS").read_text()
    spec = importlib.util.spec_from_file_location("waypost_wasm_build", WASM / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert build.assemble("trap") == build.assemble("trap")  # deterministic within a run too


# ---------------------------------------------------------------------------------------------------------
# The shared runtime under a fake host (no Envoy): many plugins in one VM, many streams, context deletion.


def test_runtime_maps_streams_to_their_plugin_under_churn() -> None:
    """Two plugins in one VM, ~22k streams created and deleted in random order while some stay open (the
    stream -> plugin table wraps, probes and shifts entries back on deletion): each live stream still adds
    its own plugin's header."""
    import random

    wasmtime = wasmtime_or_skip()
    store = wasmtime.Store()
    module = wasmtime.Module(store.engine, Path(module_path("add_header")).read_bytes())
    memory: list = []
    configs: dict[int, bytes] = {}
    current: list[int] = [0]
    added: list[tuple[int, bytes, bytes]] = []

    def read(ptr: int, size: int) -> bytes:
        return bytes(memory[0].read(store, ptr, ptr + size))

    def write_u32(ptr: int, value: int) -> None:
        memory[0].write(store, value.to_bytes(4, "little"), ptr)

    def get_buffer_bytes(buffer, start, size, ret_ptr, ret_size):
        data = configs[current[0]][start:start + size]
        ptr = instance.exports(store)["proxy_on_memory_allocate"](store, len(data))
        memory[0].write(store, data, ptr)
        write_u32(ret_ptr, ptr)
        write_u32(ret_size, len(data))
        return 0

    def add_header(map_id, kp, kn, vp, vn):
        added.append((map_id, read(kp, kn), read(vp, vn)))
        return 0

    i32 = wasmtime.ValType.i32()

    def func(fn, params):
        return wasmtime.Func(store, wasmtime.FuncType([i32] * params, [i32]), fn)

    imports = {
        "proxy_log": func(lambda level, p, n: 0, 3),
        "proxy_get_buffer_bytes": func(get_buffer_bytes, 5),
        "proxy_get_header_map_value": func(lambda *a: 1, 5),
        "proxy_add_header_map_value": func(add_header, 5),
        "proxy_send_local_response": func(lambda *a: 0, 8),
    }
    instance = wasmtime.Instance(store, module, [imports[i.name] for i in module.imports])
    exports = instance.exports(store)
    memory.append(exports["memory"])
    assert exports["proxy_on_vm_start"](store, 0, 0) == 1
    for root, value in ((1, b"one"), (2, b"two")):
        configs[root] = b'{"request_header": "X-Root", "value": "%s"}' % value
        exports["proxy_on_context_create"](store, root, 0)
        current[0] = root
        assert exports["proxy_on_configure"](store, root, len(configs[root])) == 1

    rng = random.Random(6)
    live: dict[int, int] = {}

    churn: list[int] = []

    def create(ctx: int) -> None:
        live[ctx] = rng.choice((1, 2))
        exports["proxy_on_context_create"](store, ctx, live[ctx])

    def delete(ctx: int) -> None:
        exports["proxy_on_delete"](store, ctx)
        del live[ctx]

    sticky = range(3, 300)  # long-lived streams: later ids land on their home slots and must probe past them
    for ctx in sticky:
        create(ctx)
    next_id = sticky.stop
    for _ in range(40_000):
        if churn and (len(churn) > 3000 or rng.random() < 0.45):
            i = rng.randrange(len(churn))
            churn[i], churn[-1] = churn[-1], churn[i]
            delete(churn.pop())
        else:
            create(next_id)
            churn.append(next_id)
            next_id += 1
    assert next_id > 16384 + sticky.stop  # ids went round the table (16384 slots) past the sticky ones
    for ctx in sticky[::2]:
        delete(ctx)
    for ctx, root in live.items():
        added.clear()
        assert exports["proxy_on_request_headers"](store, ctx, 0, 1) == 0
        assert added == [(0, b"x-root", b"one" if root == 1 else b"two")], ctx
    added.clear()
    exports["proxy_on_request_headers"](store, next_id + 1, 0, 1)  # an unknown stream: nothing added
    assert added == []


# ---------------------------------------------------------------------------------------------------------
# The modules in the real Envoy.


@pytest.mark.e2e
def test_add_header_adds_the_configured_response_and_request_headers(envoy) -> None:
    proxy = envoy(wasm_filter("add_header", {"header": "X-Wasm", "value": "hello", "request_header": "x-wasm-trace",
                                             "request_value": "seen"}))
    status, headers, body = proxy.request("/")
    assert status == 200
    assert header_values(headers, "x-wasm") == ["hello"]
    assert echoed(body, "x-wasm-trace") == ["seen"]
    assert echoed(body, "x-wasm") == []


@pytest.mark.e2e
def test_deny_without_header_answers_403_unless_the_header_is_there(envoy) -> None:
    proxy = envoy(wasm_filter("deny_without_header", {}, name="default"),
                  wasm_filter("deny_without_header", {"header": "X-Token"}, name="token"))
    status, _, body = proxy.request("/")
    assert (status, body) == (403, b"denied by wasm")
    status, _, body = proxy.request("/", {"x-wasm-allow": "1"})  # passes the first plugin, not the second
    assert (status, body) == (403, b"denied by wasm")
    status, _, body = proxy.request("/", {"x-wasm-allow": "1", "x-token": "t"})
    assert status == 200 and echoed(body, "x-token") == ["t"]
    proxy.stop()
    assert proxy.access_log() == ["403 wasm_denied", "403 wasm_denied", "200 via_upstream"]


@pytest.mark.e2e
def test_plugins_run_in_filter_order(envoy) -> None:
    """Three add_header plugins (one VM: same code) append to x-wasm-trace in the order of the filter chain;
    on the way back Envoy runs the filters in reverse, which shows in the response header's values."""

    def plugin(value: str) -> dict:
        return wasm_filter("add_header", {"request_header": "x-wasm-trace", "header": "x-wasm-order", "value": value},
                           name=f"trace-{value}")

    proxy = envoy(plugin("zeta"), plugin("alpha"), plugin("mid"))
    status, headers, body = proxy.request("/")
    assert status == 200
    assert echoed(body, "x-wasm-trace") == ["zeta", "alpha", "mid"]
    assert header_values(headers, "x-wasm-order") == ["mid", "alpha", "zeta"]
    assert proxy.stats("wasm.envoy.wasm.runtime.v8.active")["wasm.envoy.wasm.runtime.v8.active"] >= 1


@pytest.mark.e2e
def test_a_trap_fails_requests_closed_by_default(envoy) -> None:
    proxy = envoy(wasm_filter("trap", {}))  # failure_policy unset = FAIL_CLOSED
    assert [proxy.request("/")[0] for _ in range(3)] == [503, 503, 503]
    assert proxy.request("/")[2] == b""
    proxy.stop()
    assert "proxy_on_request_headers failed: Uncaught RuntimeError: unreachable" in proxy.log()
    assert proxy.access_log()[0] == "503 wasm_fail_stream"


@pytest.mark.e2e
def test_a_trap_in_response_headers_fails_the_response_closed(envoy) -> None:
    proxy = envoy(wasm_filter("trap", {"trap_on": "response_headers"}, failure_policy="FAIL_CLOSED"))
    assert proxy.request("/")[0] == 503
    proxy.stop()
    assert "proxy_on_response_headers failed: Uncaught RuntimeError: unreachable" in proxy.log()


@pytest.mark.e2e
def test_the_trap_module_loads_and_passes_when_told_not_to_trap(envoy) -> None:
    proxy = envoy(wasm_filter("trap", {"trap_on": "none"}))
    assert [proxy.request("/")[0] for _ in range(2)] == [200, 200]


@pytest.mark.e2e
def test_a_trap_with_legacy_fail_open_lets_every_request_through(envoy) -> None:
    """`fail_open: true` (deprecated): even the request during which the VM trapped goes on; the plugins
    after it keep running."""
    proxy = envoy(wasm_filter("trap", {}, fail_open=True),
                  wasm_filter("add_header", {"header": "x-after", "value": "yes"}))
    for _ in range(3):
        status, headers, _ = proxy.request("/")
        assert (status, header_values(headers, "x-after")) == (200, ["yes"])
    proxy.stop()  # flushes Envoy's log before it is read
    assert "proxy_on_request_headers failed" in proxy.log()


@pytest.mark.e2e
def test_a_trap_with_failure_policy_fail_open_fails_that_request_then_skips_the_plugin(envoy) -> None:
    """`failure_policy: FAIL_OPEN`: the request in flight when the VM trapped gets 503 (proxy-wasm fails
    the stream); later requests skip the dead plugin, and the plugins after it still run."""
    proxy = envoy(wasm_filter("trap", {}, failure_policy="FAIL_OPEN"),
                  wasm_filter("add_header", {"header": "x-after", "value": "yes"}))
    assert proxy.request("/")[0] == 503
    for _ in range(2):
        status, headers, _ = proxy.request("/")
        assert (status, header_values(headers, "x-after")) == (200, ["yes"])


@pytest.mark.e2e
def test_a_trap_with_fail_reload_fails_closed_while_reloads_back_off(envoy) -> None:
    proxy = envoy(wasm_filter("trap", {}, failure_policy="FAIL_RELOAD"))
    assert [proxy.request("/")[0] for _ in range(3)] == [503, 503, 503]
    assert proxy.stats("wasm.trap.vm_reload_backoff")["wasm.trap.vm_reload_backoff"] >= 1


@pytest.mark.e2e
@pytest.mark.parametrize(("module", "config", "extra", "logged"), [
    ("trap", {"trap_on": "configure"}, {}, "proxy_on_configure failed: Uncaught RuntimeError: unreachable"),
    ("trap", {}, {"vm_configuration": "trap"}, "proxy_on_vm_start failed: Uncaught RuntimeError: unreachable"),
    ("add_header", {"value": "no header named"}, {}, 'add_header: config needs "header"'),
    ("deny_without_header", {"header": ""}, {}, 'deny_without_header: "header" must be a non-empty'),
    ("trap", {"trap_on": "configure"}, {"failure_policy": "FAIL_OPEN"}, "Failed to configure base Wasm plugin"),
], ids=["trap-configure", "trap-vm-start", "add-header-bad-config", "deny-bad-config", "fail-open-too"])
def test_a_plugin_that_fails_to_load_is_refused_whatever_the_failure_policy(envoy, module, config, extra, logged) -> None:
    """A trap in proxy_on_vm_start / proxy_on_configure, or proxy_on_configure returning false, makes the
    filter config itself invalid: in a static bootstrap Envoy exits 1 (over xDS the update is rejected)."""
    with pytest.raises(EnvoyExited) as exited:
        envoy(wasm_filter(module, config, **extra))
    proxy = exited.value.envoy
    assert proxy.proc.returncode == 1
    assert logged in proxy.log()
    assert f"Unable to create Wasm plugin {module}" in proxy.log()


@pytest.mark.e2e
def test_remote_code_is_checked_against_its_sha256(envoy, upstream) -> None:
    good = envoy(wasm_filter("add_header", {"header": "x-wasm", "value": "remote"},
                             code=remote_code(upstream, "add_header", sha256_of("add_header"))))
    status, headers, _ = good.request("/")
    assert (status, header_values(headers, "x-wasm")) == (200, ["remote"])

    wrong = "0" * 64
    closed = envoy(wasm_filter("add_header", {"header": "x-wasm", "value": "remote"},
                               code=remote_code(upstream, "add_header", wrong)))
    assert closed.request("/")[0] == 503
    assert closed.stats("wasm.remote_load_fetch_failures")["wasm.remote_load_fetch_failures"] == 1
    closed.stop()  # flushes Envoy's log before it is read
    assert "Plugin add_header failed to load" in closed.log()

    opened = envoy(wasm_filter("add_header", {"header": "x-wasm", "value": "remote"},
                               code=remote_code(upstream, "add_header", wrong), failure_policy="FAIL_OPEN"))
    status, headers, _ = opened.request("/")
    assert (status, header_values(headers, "x-wasm")) == (200, [])
