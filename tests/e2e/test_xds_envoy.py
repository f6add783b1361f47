"""A real Envoy 1.40 configured only through XdsServer (ADS, State-of-the-World).

Parallel-safe: every test gets its own XdsServer (ephemeral port), its own Envoy (admin on an ephemeral
port, unique --base-id) and a loopback address derived from the pid and a counter; listener ports are
probed free on that address at test time.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from waypost.ca import CertificateAuthority
from waypost.local.binary import envoy_path
from waypost.xds import TYPE_CLUSTER, TYPE_ENDPOINT, TYPE_LISTENER, TYPE_ROUTE, TYPE_SECRET, Snapshot, XdsServer

pytestmark = pytest.mark.e2e

_tests = itertools.count()
ADS = {"ads": {}, "resource_api_version": "V3"}
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def unique_loopback_ip() -> str:
    """127.a.b.c from the pid (b.c) and a per-process counter (a): distinct across xdist workers and tests."""
    pid, n = os.getpid(), next(_tests)
    a = 20 + ((pid >> 16) * 16 + n % 16) % 220
    return f"127.{a}.{(pid >> 8) & 0xFF}.{pid & 0xFF}"


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.005):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def http_listener(name: str, ip: str, port: int, route_name: str, *, tls_secret: str | None = None) -> dict:
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": name,
        "rds": {"route_config_name": route_name, "config_source": ADS},
        "http_filters": [ROUTER],
    }
    chain: dict = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
    if tls_secret is not None:
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": {"tls_certificate_sds_secret_configs": [{"name": tls_secret, "sds_config": ADS}]},
            },
        }
    return {"name": name, "address": {"socket_address": {"address": ip, "port_value": port}}, "filter_chains": [chain]}


def direct_route(name: str, body: str) -> dict:
    return {
        "name": name,
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": body}}}],
            }
        ],
    }


@dataclass
class EnvoyUnderTest:
    server: XdsServer
    node_id: str
    ip: str
    config: Path
    workdir: Path
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    def launch(self) -> None:
        """Start (or, after kill(), restart) Envoy from the same bootstrap, i.e. with the same node id."""
        n = next(_tests)
        self.log_path = self.workdir / f"envoy-{n}.log"
        base_id = (os.getpid() % 100_000) * 100 + n % 100
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [envoy_path(), "-c", str(self.config), "--disable-hot-restart", "--concurrency", "1",
                 "--log-level", "warn", "--base-id", str(base_id),
                 "--admin-address-path", str(self.workdir / f"admin-{n}.txt")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def kill(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def sync(self, snapshot: Snapshot, timeout: float = 10.0) -> None:
        self.server.set_snapshot(self.node_id, snapshot)
        if not self.server.wait_in_sync([self.node_id], timeout):
            pytest.fail(f"not in sync: {self.server.node_status(self.node_id)}\n{self.log_tail()}")


def get(ip: str, port: int, *, context: ssl.SSLContext | None = None) -> str | None:
    """Body of GET / or None if nothing answers yet."""
    conn = (
        http.client.HTTPSConnection(ip, port, timeout=2, context=context)
        if context
        else http.client.HTTPConnection(ip, port, timeout=2)
    )
    try:
        conn.request("GET", "/")
        return conn.getresponse().read().decode()
    except OSError:
        return None
    finally:
        conn.close()


@pytest.fixture
def envoy(tmp_path: Path) -> Iterator[EnvoyUnderTest]:
    ip = unique_loopback_ip()
    server = XdsServer(ip, 0)
    xds_port = server.start()
    env = EnvoyUnderTest(server, f"waypost-e2e-{os.getpid()}-{tmp_path.name}", ip, tmp_path / "bootstrap.json", tmp_path)
    try:
        env.config.write_text(json.dumps(_bootstrap(env.node_id, ip, xds_port), indent=1))
        env.launch()
        yield env
    finally:
        env.kill()
        server.stop(0)


def _bootstrap(node_id: str, ip: str, xds_port: int) -> dict:
    """Minimal ADS bootstrap (spec/envoy-dataplane.md §4); the admin port is ephemeral."""
    return {
        "node": {"id": node_id, "cluster": "waypost-e2e"},
        "admin": {"address": {"socket_address": {"address": ip, "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
            "cds_config": ADS,
            "lds_config": ADS,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": ip, "port_value": xds_port}}}}]}
                        ],
                    },
                }
            ]
        },
    }


def test_listener_and_rds_route_are_served_and_the_node_becomes_in_sync(envoy):
    port = free_port(envoy.ip)
    envoy.sync(Snapshot({TYPE_LISTENER: {"http": http_listener("http", envoy.ip, port, "routes")},
                         TYPE_ROUTE: {"routes": direct_route("routes", "one")}}))
    assert wait_until(lambda: get(envoy.ip, port) == "one", 5), envoy.log_tail()
    status = envoy.server.node_status(envoy.node_id)
    assert status.connected and status.in_sync and not status.nacked
    assert set(status.acked) >= {TYPE_CLUSTER, TYPE_LISTENER, TYPE_ROUTE}


def test_route_change_is_served_within_a_second_and_changes_only_the_rds_version(envoy):
    port = free_port(envoy.ip)
    listeners = {"http": http_listener("http", envoy.ip, port, "routes")}
    envoy.sync(Snapshot({TYPE_LISTENER: listeners, TYPE_ROUTE: {"routes": direct_route("routes", "one")}}))
    assert wait_until(lambda: get(envoy.ip, port) == "one", 5), envoy.log_tail()
    before = envoy.server.node_status(envoy.node_id).acked

    start = time.monotonic()
    envoy.server.set_snapshot(envoy.node_id, Snapshot({TYPE_LISTENER: listeners, TYPE_ROUTE: {"routes": direct_route("routes", "two")}}))
    assert wait_until(lambda: get(envoy.ip, port) == "two", 1.0, interval=0.001), envoy.log_tail()
    assert time.monotonic() - start < 1.0

    assert envoy.server.wait_in_sync([envoy.node_id], 5)
    after = envoy.server.node_status(envoy.node_id).acked
    assert after[TYPE_ROUTE] != before[TYPE_ROUTE]
    assert {t: v for t, v in after.items() if t != TYPE_ROUTE} == {t: v for t, v in before.items() if t != TYPE_ROUTE}


def test_changing_only_an_eds_cluster_lets_it_warm_without_waiting_for_a_timeout(envoy):
    # Envoy's own second listener plays the backend, so no other process is needed.
    front, back = free_port(envoy.ip), free_port(envoy.ip)
    endpoints = {"backend": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": envoy.ip, "port_value": back}}}}]}]}}
    listeners = {"front": http_listener("front", envoy.ip, front, "front"),
                 "back": http_listener("back", envoy.ip, back, "back")}
    routes = {"front": {"name": "front", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                  {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]},
              "back": direct_route("back", "from-backend")}

    def snapshot(connect_timeout: str) -> Snapshot:
        cluster = {"name": "backend", "type": "EDS", "connect_timeout": connect_timeout,
                   "eds_cluster_config": {"eds_config": ADS}}
        return Snapshot({TYPE_CLUSTER: {"backend": cluster}, TYPE_ENDPOINT: endpoints,
                         TYPE_LISTENER: listeners, TYPE_ROUTE: routes})

    envoy.sync(snapshot("1s"))
    assert wait_until(lambda: get(envoy.ip, front) == "from-backend", 5), envoy.log_tail()
    # Only the cluster changes; its endpoints do not. Envoy ACKs CDS only once the new cluster has warmed,
    # which needs an EDS answer although EDS did not change.
    envoy.sync(snapshot("2s"), timeout=3)
    assert get(envoy.ip, front) == "from-backend"


def test_rejected_listener_is_reported_and_the_old_listener_keeps_serving(envoy):
    port = free_port(envoy.ip)
    routes = {"routes": direct_route("routes", "one")}
    envoy.sync(Snapshot({TYPE_LISTENER: {"http": http_listener("http", envoy.ip, port, "routes")}, TYPE_ROUTE: routes}))
    good_version = envoy.server.node_status(envoy.node_id).acked[TYPE_LISTENER]

    bad = Snapshot({TYPE_LISTENER: {"http": http_listener("http", "not-an-ip", port, "routes")}, TYPE_ROUTE: routes})
    envoy.server.set_snapshot(envoy.node_id, bad)
    status = wait_until(
        lambda: (s := envoy.server.node_status(envoy.node_id)).nacked.get(TYPE_LISTENER) and s, 5
    )
    assert status, envoy.log_tail()
    rejected_version, message = status.nacked[TYPE_LISTENER]
    assert rejected_version == bad.version(TYPE_LISTENER)
    assert "malformed IP address" in message
    assert status.acked[TYPE_LISTENER] == good_version and not status.in_sync
    assert get(envoy.ip, port) == "one"


def test_tls_listener_gets_its_ca_issued_certificate_over_sds(envoy):
    ca = CertificateAuthority.generate()
    identity = "spiffe://cluster.local/ns/default/sa/waypoint"
    issued = ca.issue(identity)
    port = free_port(envoy.ip)
    secret = {
        "name": "waypoint-cert",
        "tls_certificate": {
            "certificate_chain": {"inline_string": issued.cert_chain_pem},
            "private_key": {"inline_string": issued.private_key_pem},
        },
    }
    envoy.sync(Snapshot({
        TYPE_LISTENER: {"https": http_listener("https", envoy.ip, port, "routes", tls_secret="waypoint-cert")},
        TYPE_ROUTE: {"routes": direct_route("routes", "secure")},
        TYPE_SECRET: {"waypoint-cert": secret},
    }))
    assert TYPE_SECRET in envoy.server.node_status(envoy.node_id).acked

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the cert names a SPIFFE id, not a host
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.load_verify_locations(cadata=ca.root_cert_pem)
    assert wait_until(lambda: get(envoy.ip, port, context=context) == "secure", 5), envoy.log_tail()

    with socket.create_connection((envoy.ip, port), timeout=2) as raw, context.wrap_socket(raw) as tls:
        assert ("URI", identity) in tls.getpeercert()["subjectAltName"]

    untrusting = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    untrusting.check_hostname = False
    untrusting.load_verify_locations(cadata=CertificateAuthority.generate().root_cert_pem)
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection((envoy.ip, port), timeout=2) as raw, untrusting.wrap_socket(raw):
            pass


def test_restarted_envoy_with_the_same_node_id_is_resynced(envoy):
    port = free_port(envoy.ip)
    snapshot = Snapshot({TYPE_LISTENER: {"http": http_listener("http", envoy.ip, port, "routes")},
                         TYPE_ROUTE: {"routes": direct_route("routes", "one")}})
    envoy.sync(snapshot)
    envoy.kill()
    assert wait_until(lambda: not envoy.server.node_status(envoy.node_id).connected, 5)
    assert get(envoy.ip, port) is None

    envoy.launch()
    assert envoy.server.wait_in_sync([envoy.node_id], 10), envoy.log_tail()
    assert wait_until(lambda: get(envoy.ip, port) == "one", 5), envoy.log_tail()


def test_stop_returns_promptly_while_envoy_is_connected(envoy):
    port = free_port(envoy.ip)
    envoy.sync(Snapshot({TYPE_LISTENER: {"http": http_listener("http", envoy.ip, port, "routes")},
                         TYPE_ROUTE: {"routes": direct_route("routes", "one")}}))
    assert envoy.server.node_status(envoy.node_id).connected

    start = time.monotonic()
    envoy.server.stop(0.5)
    assert time.monotonic() - start < 2.0
    assert wait_until(lambda: not envoy.server.node_status(envoy.node_id).connected, 2)
    leftovers = [t for t in threading.enumerate() if t.name.startswith("waypost-xds") and (t.join(2) or t.is_alive())]
    assert leftovers == []
    assert get(envoy.ip, port) == "one"  # Envoy keeps its last config when the control plane goes away
