"""envoy/telemetry.py: the pieces' shapes, that the control plane can encode them, and that a real Envoy
accepts the JSON access log and writes Istio's keys (one static Envoy, a few hundred milliseconds)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request

from waypost.envoy import telemetry
from waypost.envoy.common import T_HCM, T_ROUTER
from waypost.local.binary import envoy_path
from waypost.xds.codec import encode_resource
from waypost.xds.types import TYPE_LISTENER

# Istio's EnvoyJSONLogFormatIstio keys (istio/istio pilot/pkg/model/telemetry_logging.go).
ISTIO_JSON_KEYS = {
    "start_time", "route_name", "method", "path", "protocol", "response_code", "response_flags", "response_code_details",
    "connection_termination_details", "bytes_received", "bytes_sent", "duration", "upstream_service_time", "x_forwarded_for",
    "user_agent", "request_id", "authority", "upstream_host", "upstream_cluster", "upstream_local_address",
    "downstream_local_address", "downstream_remote_address", "requested_server_name", "upstream_transport_failure_reason",
}


def hcm(access_log: list, routes: list | None = None) -> dict:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": T_HCM,
            "stat_prefix": "t",
            "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes or []}]},
            "access_log": access_log,
            "http_filters": telemetry.http_filters() + [{"name": "envoy.filters.http.router", "typed_config": {"@type": T_ROUTER}}],
        },
    }


def test_json_access_log_has_the_text_formats_operators_under_istios_keys():
    (logger,) = telemetry.json_access_log()
    fmt = logger["typed_config"]["log_format"]
    assert set(fmt["json_format"]) == ISTIO_JSON_KEYS
    assert fmt["json_format_options"] == {"sort_properties": False}
    # The same operators as the text format, nothing more and nothing less.
    assert sorted(fmt["json_format"].values()) == sorted(set(re.findall(r"%[A-Z_]+(?:\([^)]*\))?%", telemetry.ACCESS_LOG_FORMAT)))
    assert logger["name"] == telemetry.text_access_log()[0]["name"]


def test_grpc_stats_and_its_reader_come_in_order():
    lua, grpc_stats = telemetry.http_filters()
    assert (lua["name"], grpc_stats["name"]) == (telemetry.GRPC_MESSAGES_FILTER, "envoy.filters.http.grpc_stats")
    assert "envoy_on_request" not in telemetry.GRPC_MESSAGES_LUA  # it only reads, on the response path
    assert grpc_stats["typed_config"]["emit_filter_state"] is True
    assert grpc_stats["typed_config"]["stats_for_all_methods"] is False  # no per-method stats named by clients


def test_one_stats_logger_and_unknown_destination_labels_at_the_scrape_endpoint():
    http = [entry["name"] for entry in telemetry.http_access_log("waypoint", None, "http")]
    assert http == ["istio.stats", telemetry.STDOUT_LOGGER]  # no message counters, no per-request CEL
    loggers = [entry for entry in telemetry.http_access_log("waypoint", None, "grpc") if entry["typed_config"]["@type"] == telemetry.T_STATS_LOGGER]
    assert [entry["name"] for entry in loggers] == ["istio.stats", "istio.stats.grpc_messages"]
    for entry in loggers:
        tags = {t["name"]: t["value_format"] for stat in entry["typed_config"].get("counters", []) for t in stat["stat"]["tags"]}
        assert tags["destination_workload"] == "%UPSTREAM_METADATA(istio:workload)%"
        assert tags["destination_cluster"] == "%UPSTREAM_METADATA(istio:cluster)%"
        assert "grpc_response_status" in tags
    messages = next(e for e in loggers if e["name"] == "istio.stats.grpc_messages")
    assert [c["stat"]["name"] for c in messages["typed_config"]["counters"]] == ["request_messages_total", "response_messages_total"]
    # What Envoy prints for a request that reached no endpoint, as the :15020 endpoint serves it.
    from waypost.local.metrics import istio_names

    raw = 'envoy_istio_requests_total{destination_workload="",destination_cluster="-",response_flags="-",destination_service="s"} 1'
    assert istio_names(raw) == 'istio_requests_total{destination_workload="unknown",destination_cluster="unknown",response_flags="-",destination_service="s"} 1'


def test_the_control_plane_encodes_the_telemetry_config():
    listener = {
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
        "filter_chains": [
            {"filters": [hcm(telemetry.http_access_log("waypoint", None, "grpc") + telemetry.json_access_log())]},
            {"filter_chain_match": {"destination_port": 2}, "filters": [
                {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": "t", "cluster": "c", "access_log": telemetry.tcp_access_log("waypoint", None)}},
            ]},
        ],
    }
    encode_resource(TYPE_LISTENER, listener)


def test_without_metrics_keeps_only_the_access_logs():
    listener = {"filter_chains": [{"filters": [hcm(telemetry.http_access_log("waypoint", None, "http"))]}]}
    stripped = telemetry.without_metrics(listener)
    config = stripped["filter_chains"][0]["filters"][0]["typed_config"]
    assert [entry["name"] for entry in config["access_log"]] == [telemetry.STDOUT_LOGGER]
    assert [f["name"] for f in config["http_filters"]] == ["envoy.filters.http.router"]
    assert len(listener["filter_chains"][0]["filters"][0]["typed_config"]["access_log"]) == 2  # the input is untouched


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_real_envoy_writes_one_json_object_per_request(tmp_path):
    admin, port = free_port(), free_port()
    routes = [{"match": {"prefix": "/"}, "direct_response": {"status": 403, "body": {"inline_string": "no"}}}]
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}, "filter_chains": [{"filters": [hcm(telemetry.json_access_log(), routes)]}]}]
        },
    }
    (tmp_path / "envoy.json").write_text(json.dumps(config))
    out = (tmp_path / "stdout").open("wb")
    proc = subprocess.Popen(
        [envoy_path(), "-c", str(tmp_path / "envoy.json"), "--disable-hot-restart", "--concurrency", "1", "-l", "error"],
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/some/path?q=1", headers={"User-Agent": "ua-test", "X-Request-Id": "rid-1"})
                urllib.request.urlopen(request, timeout=2)
            except urllib.error.HTTPError as error:
                assert error.code == 403
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stdout").read_text()
                time.sleep(0.1)
        while not (lines := [line for line in (tmp_path / "stdout").read_text().splitlines() if line.startswith("{")]):
            assert time.monotonic() < deadline, (tmp_path / "stdout").read_text()
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(10)
        out.close()
    entry = json.loads(lines[0])
    assert set(entry) == ISTIO_JSON_KEYS
    assert (entry["method"], entry["path"], entry["protocol"]) == ("GET", "/some/path?q=1", "HTTP/1.1")
    assert (entry["response_code"], entry["bytes_sent"], entry["user_agent"], entry["request_id"]) == (403, 2, "ua-test", "rid-1")
    assert entry["response_code_details"] == "direct_response"
    assert entry["upstream_host"] is None and entry["downstream_local_address"] == f"127.0.0.1:{port}"
