"""Istio's standard traffic metrics from Envoy's own stats access logger (no Istio stats filter needed).

Names and labels follow istio-ambient-semantics.md §7 (istio/proxy `testdata/metric/*`). Envoy renders
them as `envoy_istio_<name>`; each proxy's metrics endpoint (the pilot-agent's job on :15020 in Istio,
`waypost.local.metrics` here) strips the `envoy_` prefix so dashboards see `istio_requests_total`.

Where the labels come from:
- source workload labels: headers the client's ztunnel adds to the HBONE CONNECT (it knows the source
  pod), copied into filter state by `connect_terminate` — the waypoint accepts HBONE only from mesh
  certificates, so workloads cannot forge them;
- source principal: the mTLS peer identity (filter state `io.istio.peer_principal`);
- destination workload labels: metadata of the endpoint Envoy chose (`istio` namespace);
- destination service: the chain's service, written literally into the chain's logger.

When no endpoint was chosen (a request denied, unrouted or answered by the waypoint itself), Istio's
waypoint writes `unknown` for every label of the destination workload (istio/proxy
`source/extensions/filters/http/istio_stats/istio_stats.cc`, `Reporter::ServerGateway`: each one is
`endpoint_peer ? … : unknown`). Envoy's `%UPSTREAM_METADATA%` prints `-` there; the :15020 endpoint
(`waypost.local.metrics`, pilot-agent's role) renders it as `unknown`. Doing it in Envoy (a `%CEL(…)%` per
label, or two loggers picked by a CEL filter) cost 8–30% of the waypoint's throughput (measured with
bench/metrics_cost.py).

gRPC message counts (`istio_request_messages_total`, `istio_response_messages_total`) come from Envoy's
grpc_stats filter, which counts the frames of each stream and keeps the counts in filter state. Its object
has no field access (`%FILTER_STATE(envoy.filters.http.grpc_stats:FIELD:request_message_count)%` prints
`-`) and serializes as the text `"<request>,<response>"`, which neither a stats logger value nor Envoy's
default CEL (no string functions) can split. A small Lua filter reads that text at the end of a gRPC
response and writes both counts as numbers into dynamic metadata, which the stats logger reads.
"""

from __future__ import annotations

import functools

from typing import Any

from waypost.mesh.model import Endpoint, MeshSnapshot, Service, Workload
from waypost.mesh.telemetry import ChainTelemetry

from .common import PEER_PRINCIPAL_KEY

T_STATS_LOGGER = "type.googleapis.com/envoy.extensions.access_loggers.stats.v3.Config"
T_STDOUT_LOGGER = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
T_CEL_LOG_FILTER = "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
T_GRPC_STATS = "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"
T_LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
STAT_PREFIX = "istio"
CLUSTER_NAME = "Kubernetes"
UNKNOWN = "unknown"

GRPC_STATS_FILTER = "envoy.filters.http.grpc_stats"
GRPC_MESSAGES_FILTER = "waypost.grpc_messages"  # the Lua filter (a name of our own: there may be others)
GRPC_MESSAGES_METADATA = "io.waypost.grpc"  # dynamic metadata namespace of the counts


# Runs on the response path after grpc_stats (it sits before it in the chain): waits for the end of a gRPC
# response (`trailers()` lets the body stream through), then turns grpc_stats' "<req>,<resp>" into numbers.
# A stream grpc_stats counted nothing on (a request denied before its body) gets no counts, as in Istio.
GRPC_MESSAGES_LUA = f"""\
function envoy_on_response(handle)
  local content_type = handle:headers():get("content-type")
  if content_type == nil or string.sub(content_type, 1, 16) ~= "application/grpc" then
    return
  end
  handle:trailers()
  local counts = handle:streamInfo():filterState():get("{GRPC_STATS_FILTER}")
  if counts == nil then
    return
  end
  local request, response = string.match(counts, "^(%d+),(%d+)$")
  if request == nil then
    return
  end
  local metadata = handle:streamInfo():dynamicMetadata()
  metadata:set("{GRPC_MESSAGES_METADATA}", "request_messages", tonumber(request))
  metadata:set("{GRPC_MESSAGES_METADATA}", "response_messages", tonumber(response))
end
"""

# Headers the source ztunnel puts on the CONNECT, and the filter-state keys the waypoint keeps them in.
SOURCE_LABELS = ("workload", "workload_namespace", "app", "version", "canonical_service", "canonical_revision")


def source_header(label: str) -> str:
    return f"x-waypost-source-{label.replace('_', '-')}"


def source_key(label: str) -> str:
    return f"io.waypost.source_{label}"


def workload_labels(workload: Workload) -> dict[str, str]:
    """Istio's workload labels: workload = Deployment (or pod) name; canonical service/revision defaults."""
    labels = workload.label_map
    app = labels.get("app", labels.get("app.kubernetes.io/name", "unknown"))
    version = labels.get("version", labels.get("app.kubernetes.io/version", "unknown"))
    canonical_service = labels.get("service.istio.io/canonical-name", labels.get("app.kubernetes.io/name", labels.get("app", workload.owner or workload.name)))
    canonical_revision = labels.get("service.istio.io/canonical-revision", labels.get("app.kubernetes.io/version", labels.get("version", "latest")))
    return {
        "workload": workload.owner or workload.name,
        "workload_namespace": workload.namespace,
        "app": app,
        "version": version,
        "canonical_service": canonical_service,
        "canonical_revision": canonical_revision,
    }


def source_headers(workload: Workload) -> list[dict[str, Any]]:
    return [{"header": {"key": source_header(k), "value": v}} for k, v in workload_labels(workload).items()]


def source_filter_state() -> list[dict[str, Any]]:
    return [
        {
            "object_key": source_key(label),
            "factory_key": "envoy.string",
            "format_string": {"text_format_source": {"inline_string": f"%REQ({source_header(label)})%"}},
            "shared_with_upstream": "ONCE",
            "skip_if_empty": True,
        }
        for label in SOURCE_LABELS
    ]


def source_labels_state(labels: dict[str, str]) -> dict[str, Any]:
    """Network filter keeping the source labels for the connection's upstream (an originate listener)."""
    return {
        "name": "envoy.filters.network.set_filter_state",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config",
            "on_new_connection": [
                {
                    "object_key": source_key(k),
                    "factory_key": "envoy.string",
                    "format_string": {"text_format_source": {"inline_string": v}},
                    "shared_with_upstream": "ONCE",
                }
                for k, v in sorted(labels.items())
            ],
        },
    }


def source_headers_from_state() -> list[dict[str, Any]]:
    return [{"header": {"key": source_header(k), "value": f"%FILTER_STATE({source_key(k)}:PLAIN)%"}} for k in SOURCE_LABELS]


def endpoint_metadata(snapshot: MeshSnapshot, endpoint: Endpoint) -> dict[str, str]:
    workload = snapshot.workload(endpoint.workload)
    if workload is None:
        return {}
    labels = workload_labels(workload)
    return {**labels, "principal": workload.identity, "cluster": CLUSTER_NAME}


def _fs(key: str) -> str:
    return f"%FILTER_STATE({key}:PLAIN)%"


@functools.lru_cache(maxsize=1 << 16)
def _tag(name: str, value: str) -> dict[str, str]:
    """A tag whose value repeats across chains (a format string, a namespace, a workload's label): one
    shared dict for all chains of all proxies (a bounded cache, so names of long-gone workloads age out). Two thousand chains each carried their own copies of the same
    twenty-odd tags (issue 8: control-plane memory); configs are never changed in place
    (tests/unit/test_shared_config_parts.py)."""
    return {"name": name, "value_format": value}


def _source_tags() -> list[dict[str, str]]:
    return list(_SOURCE_TAGS())


@functools.cache
def _SOURCE_TAGS() -> tuple[dict[str, str], ...]:  # noqa: N802 - a constant, built on first use
    tags = [
        ("source_workload", _fs(source_key("workload"))),
        ("source_canonical_service", _fs(source_key("canonical_service"))),
        ("source_canonical_revision", _fs(source_key("canonical_revision"))),
        ("source_workload_namespace", _fs(source_key("workload_namespace"))),
        ("source_principal", _fs(PEER_PRINCIPAL_KEY)),
        ("source_app", _fs(source_key("app"))),
        ("source_version", _fs(source_key("version"))),
        ("source_cluster", CLUSTER_NAME),
    ]
    return tuple(_tag(k, v) for k, v in tags)


def _upstream(key: str) -> str:
    return f"%UPSTREAM_METADATA(istio:{key})%"


def _destination_tags(service: Service | None, endpoint_known: bool = True) -> list[dict[str, str]]:
    """The destination labels; without a chosen mesh endpoint, its workload labels are `unknown`."""

    def workload(key: str) -> str:
        return _upstream(key) if endpoint_known else UNKNOWN

    # (name, value, constant): the endpoint's labels are format strings, the same on every chain.
    tags = [
        ("destination_workload", workload("workload"), True),
        ("destination_workload_namespace", workload("workload_namespace"), True),
        ("destination_principal", workload("principal"), True),
        ("destination_app", workload("app"), True),
        ("destination_version", workload("version"), True),
        ("destination_service", service.fqdn if service else UNKNOWN, service is None),
        ("destination_canonical_service", workload("canonical_service"), True),
        ("destination_canonical_revision", workload("canonical_revision"), True),
        ("destination_service_name", service.name if service else UNKNOWN, service is None),
        ("destination_service_namespace", service.namespace if service else UNKNOWN, True),  # few namespaces: shared
        # The endpoint's cluster, like its other labels (istio_stats.cc: `endpoint_peer ? … : unknown`).
        ("destination_cluster", workload("cluster"), True),
    ]
    return [_tag(k, v) if constant else {"name": k, "value_format": v} for k, v, constant in tags]


def _grpc_messages_counted() -> dict[str, Any]:
    """Access-log filter: the Lua filter wrote the stream's message counts (a gRPC stream grpc_stats saw)."""
    return {
        "metadata_filter": {
            "matcher": {"filter": GRPC_MESSAGES_METADATA, "path": [{"key": "request_messages"}], "value": {"present_match": True}},
            "match_if_key_not_found": False,
        }
    }


def _http_tags(reporter: str, service: Service | None, protocol: str, endpoint_known: bool) -> list[dict[str, str]]:
    return (
        [_tag("reporter", reporter)]
        + _source_tags()
        + _destination_tags(service, endpoint_known)
        + [
            _tag("request_protocol", protocol),
            _tag("response_code", "%RESPONSE_CODE%"),
            # Istio leaves grpc_response_status empty for HTTP; Envoy refuses an empty tag format, and in
            # PromQL an absent label equals an empty one, so HTTP series simply omit it.
            *([_tag("grpc_response_status", "%GRPC_STATUS_NUMBER%")] if protocol == "grpc" else []),
            _tag("response_flags", "%RESPONSE_FLAGS%"),
            _tag("connection_security_policy", "mutual_tls"),
        ]
    )


def http_access_log(
    reporter: str, service: Service | None, protocol: str, chain: ChainTelemetry | None = None, mesh: Any = None
) -> list[dict[str, Any]]:
    """The HTTP metrics, plus the access log.

    Per destination variant (endpoint chosen or not): one stats logger for istio_requests_total and the
    request duration/size histograms and, on gRPC chains, one for the gRPC message counters, which only
    logs streams whose counts the Lua filter wrote (so plain HTTP requests get no message series). HTTP
    chains have none: their series say request_protocol="http" (the protocol is the chain's), and the two
    loggers would cost every HTTP request a filter evaluation each.

    `chain` is what the Telemetry API says for this chain (metric overrides, access logging); `mesh` the
    MeshConfig (access-log providers and the legacy accessLogFile/Encoding/Format).
    """
    chain = chain or ChainTelemetry()
    loggers = []
    # One logger: without a chosen mesh endpoint the workload labels print Envoy's "-", which the :15020
    # endpoint renders as Istio's "unknown" (local.metrics). A CEL-filtered pair of loggers did that in
    # Envoy, at ~8% of the waypoint's throughput (bench/metrics_cost.py).
    for known in (True,) if chain.metrics else ():
        tags = _http_tags(reporter, service, protocol, known)
        suffix = ""
        counters = _stats(chain, [("REQUEST_COUNT", {"stat": {"name": "requests_total", "tags": tags}, "value_fixed": 1})])
        histograms = _stats(chain, [
            ("REQUEST_DURATION", {"stat": {"name": "request_duration_milliseconds", "tags": tags}, "unit": "Milliseconds", "value_format": "%DURATION%"}),
            ("REQUEST_SIZE", {"stat": {"name": "request_bytes", "tags": tags}, "unit": "Bytes", "value_format": "%BYTES_RECEIVED%"}),
            ("RESPONSE_SIZE", {"stat": {"name": "response_bytes", "tags": tags}, "unit": "Bytes", "value_format": "%BYTES_SENT%"}),
        ])
        if counters or histograms:
            loggers.append(
                {
                    "name": f"istio.stats{suffix}",
                    "typed_config": {
                        "@type": T_STATS_LOGGER,
                        "stat_prefix": STAT_PREFIX,
                        **({"counters": counters} if counters else {}),
                        **({"histograms": histograms} if histograms else {}),
                    },
                }
            )
        if protocol != "grpc":
            continue
        messages = _stats(chain, [
            (metric, {"stat": {"name": f"{direction}_messages_total", "tags": tags}, "value_format": f"%DYNAMIC_METADATA({GRPC_MESSAGES_METADATA}:{direction}_messages)%"})
            for metric, direction in (("GRPC_REQUEST_MESSAGES", "request"), ("GRPC_RESPONSE_MESSAGES", "response"))
        ])
        if messages:
            loggers.append(
                {
                    "name": f"istio.stats.grpc_messages{suffix}",
                    # The metadata check first: and_filter stops at the first false, so HTTP requests skip the CEL.
                    "filter": _grpc_messages_counted(),
                    "typed_config": {"@type": T_STATS_LOGGER, "stat_prefix": STAT_PREFIX, "counters": messages},
                }
            )
    return loggers + access_logs(chain, mesh)


def _stats(chain: ChainTelemetry, stats: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The stats the Telemetry API leaves enabled, with their tag overrides applied."""
    out = []
    for metric, stat in stats:
        override = chain.override(metric)
        if override.disabled:
            continue
        if override.tags:
            stat = {**stat, "stat": {**stat["stat"], "tags": _override_tags(stat["stat"]["tags"], override.tags)}}
        out.append(stat)
    return out


def _override_tags(tags: list[dict[str, str]], overrides: tuple[tuple[str, bool, str], ...]) -> list[dict[str, str]]:
    """Telemetry tagOverrides: REMOVE drops a label, UPSERT sets it to a CEL expression's value."""
    out = {t["name"]: t for t in tags}
    for name, remove, value in overrides:
        if remove:
            out.pop(name, None)
        else:
            out[name] = {"name": name, "value_format": _cel_format(value)}
    return list(out.values())


def _cel_format(expression: str) -> str:
    """A CEL expression as a format string; a plain string literal needs no evaluation per request."""
    text = expression.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" and text[0] not in text[1:-1] and "\\" not in text and "%" not in text:
        return text[1:-1]
    return f"%CEL({text})%"


def tcp_access_log(
    reporter: str, service: Service | None, destination: dict[str, str] | None = None, chain: ChainTelemetry | None = None, mesh: Any = None
) -> list[dict[str, Any]]:
    """istio_tcp_* counters from tcp_proxy's access log: opened when connected, the rest at the end.

    The destination ztunnel knows its pod (`destination`: literal labels); a waypoint's labels come from
    the chosen endpoint, with the `unknown` variant for connections that got none (as for HTTP).
    """
    variants: list[tuple[str, list[dict[str, str]], dict[str, Any] | None]] = []
    if destination is not None:
        literal = [_tag(t["name"], destination.get(t["name"], t["value_format"])) for t in _destination_tags(service)]
        variants.append(("", literal, None))
    else:
        variants.append(("", _destination_tags(service, True), None))  # "-" → "unknown" at :15020, as for HTTP

    def logger(name: str, log_type: str, counters: list[dict[str, Any]], endpoint: dict[str, Any] | None) -> dict[str, Any]:
        by_type = _log_type_filter(log_type)
        return {
            "name": name,
            "filter": {"and_filter": {"filters": [by_type, endpoint]}} if endpoint else by_type,
            "typed_config": {"@type": T_STATS_LOGGER, "stat_prefix": STAT_PREFIX, "counters": counters},
        }

    chain = chain or ChainTelemetry()
    loggers = []
    for suffix, dest_tags, endpoint in variants if chain.metrics else ():
        tags = [_tag("reporter", reporter)] + _source_tags() + dest_tags + [
            _tag("request_protocol", "tcp"),
            _tag("response_flags", "%RESPONSE_FLAGS%"),
            _tag("connection_security_policy", "mutual_tls"),
        ]
        opened = _stats(chain, [("TCP_OPENED_CONNECTIONS", {"stat": {"name": "tcp_connections_opened_total", "tags": tags}, "value_fixed": 1})])
        if opened:
            loggers.append(logger(f"istio.tcp.open{suffix}", "TcpUpstreamConnected", opened, endpoint))
        closed = _stats(chain, [
            ("TCP_CLOSED_CONNECTIONS", {"stat": {"name": "tcp_connections_closed_total", "tags": tags}, "value_fixed": 1}),
            ("TCP_SENT_BYTES", {"stat": {"name": "tcp_sent_bytes_total", "tags": tags}, "value_format": "%BYTES_SENT%"}),
            ("TCP_RECEIVED_BYTES", {"stat": {"name": "tcp_received_bytes_total", "tags": tags}, "value_format": "%BYTES_RECEIVED%"}),
        ])
        if closed:
            loggers.append(logger(f"istio.tcp.close{suffix}", "TcpConnectionEnd", closed, endpoint))
    end_of_connection = _log_type_filter("TcpConnectionEnd")
    if chain.logging is None and (mesh is None or mesh.access_log_encoding != "JSON"):
        path = DEFAULT_ACCESS_LOG_FILE if mesh is None or mesh.access_log_file is None else mesh.access_log_file
        return loggers + ([_default_text_logger_at_end(path, mesh.access_log_format if mesh is not None else None)] if path else [])
    return loggers + [
        {**log, "filter": {"and_filter": {"filters": [end_of_connection, log["filter"]]}} if "filter" in log else end_of_connection}
        for log in access_logs(chain, mesh)
    ]


@functools.cache
def _default_text_logger_at_end(path: str, text: str | None) -> dict[str, Any]:
    """MeshConfig's access log on a TCP chain, logging once a connection ends: one shared logger."""
    return {**_default_text_logger(path, text), "filter": _log_type_filter("TcpConnectionEnd")}


@functools.cache
def _log_type_filter(log_type: str) -> dict[str, Any]:
    return {"log_type_filter": {"types": [log_type]}}


def destination_literals(workload: Workload, service: Service | None = None) -> dict[str, str]:
    labels = workload_labels(workload)
    return {
        "destination_workload": labels["workload"],
        "destination_workload_namespace": labels["workload_namespace"],
        "destination_principal": workload.identity,
        "destination_app": labels["app"],
        "destination_version": labels["version"],
        "destination_canonical_service": labels["canonical_service"],
        "destination_canonical_revision": labels["canonical_revision"],
        "destination_cluster": CLUSTER_NAME,
    }


# Istio's default access-log text format (MeshConfig accessLogFormat default), for HTTP and TCP
# (istio/istio pilot/pkg/model/telemetry_logging.go, EnvoyTextLogFormat).
ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% '
    '%RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% '
    '%BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% '
    "%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)


# Istio's default JSON access log (MeshConfig accessLogEncoding JSON): the same operators as the text
# format under Istio's key names (telemetry_logging.go, EnvoyJSONLogFormatIstio). The
# deny reason is in `response_code_details`, as in the text format.
ACCESS_LOG_JSON_FORMAT = {
    "start_time": "%START_TIME%",
    "route_name": "%ROUTE_NAME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
}
STDOUT_LOGGER = "envoy.access_loggers.stdout"


def text_access_log() -> list[dict[str, Any]]:
    """Access log lines on the proxy's stdout (the local runner keeps them in the proxy's log file).

    RBAC denials carry `rbac_access_denied_matched_policy[ns[NS]-policy[NAME]-rule[N]]` in the response
    code details: the deciding policy and rule (`waypost logs` spells it out).
    """
    return [
        {
            "name": STDOUT_LOGGER,
            "typed_config": {"@type": T_STDOUT_LOGGER, "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}}},
        }
    ]


DEFAULT_ACCESS_LOG_FILE = "/dev/stdout"  # waypost's default, as Istio's demo profile: access logs on
ENVOY_PROVIDER = "envoy"  # Istio's built-in provider: envoyFileAccessLog to /dev/stdout, default format


def access_logs(chain: ChainTelemetry, mesh: Any) -> list[dict[str, Any]]:
    """The access loggers of a chain: the Telemetry API's providers, else MeshConfig's legacy settings.

    Without any Telemetry access logging, Istio falls back to MeshConfig `accessLogFile` (waypost's default
    `/dev/stdout`, as Istio's demo profile; `""` turns logs off), `accessLogEncoding` (TEXT or JSON) and
    `accessLogFormat`. With Telemetry, each enabled provider that is an `envoyFileAccessLog` (or Istio's
    built-in `envoy`) gets a logger, with the entry's CEL `filter`.
    """
    if chain.logging is None:
        path = DEFAULT_ACCESS_LOG_FILE if mesh is None or mesh.access_log_file is None else mesh.access_log_file
        if not path:
            return []
        json = mesh is not None and mesh.access_log_encoding == "JSON"
        if not json:
            return [_default_text_logger(path, mesh.access_log_format if mesh is not None else None)]
        return [_file_logger(path, json_format=_json_labels(mesh.access_log_format))]
    out = []
    for entry in chain.logging:
        if entry.disabled:
            continue
        provider = mesh.provider(entry.name) if mesh is not None else None
        if provider is None and entry.name == ENVOY_PROVIDER:
            logger = _file_logger(DEFAULT_ACCESS_LOG_FILE)
        elif provider is not None and provider.envoy_file_access_log is not None:
            fal = provider.envoy_file_access_log
            fmt = fal.log_format or {}
            logger = _file_logger(fal.path or DEFAULT_ACCESS_LOG_FILE, json_format=fmt.get("labels") if "labels" in fmt else None, text=fmt.get("text"))
        else:
            continue  # not an access-log provider waypost can run (the Telemetry's status says so)
        if entry.filter:
            logger["filter"] = {"extension_filter": {"name": "envoy.access_loggers.extension_filters.cel", "typed_config": {"@type": T_CEL_LOG_FILTER, "expression": entry.filter}}}
        logger["name"] = f"{STDOUT_LOGGER}.{entry.name}" if entry.name != ENVOY_PROVIDER else STDOUT_LOGGER
        out.append(logger)
    return out


def _json_labels(custom: str | None) -> dict[str, Any]:
    # MeshConfig accessLogFormat with JSON encoding is a JSON object of labels (Istio parses it the same way).
    if custom:
        import json as _json

        try:
            parsed = _json.loads(custom)
            if isinstance(parsed, dict):
                return parsed
        except ValueError:
            pass
    return dict(ACCESS_LOG_JSON_FORMAT)


def _file_logger(path: str, json_format: dict[str, Any] | None = None, text: str | None = None) -> dict[str, Any]:
    """A file/stdout access logger. Callers may set its `name` and `filter`; the `typed_config` is shared by
    every logger with the same path and text format (one per chain made most of a large config's copies)."""
    if json_format is None:
        return {"name": STDOUT_LOGGER, "typed_config": _text_logger_config(path, text)}
    return _file_logger_config(path, json_format, text)


@functools.cache
def _default_text_logger(path: str, text: str | None) -> dict[str, Any]:
    """MeshConfig's access log, the same on every chain of every proxy: one shared logger."""
    return _file_logger(path, text=text)


@functools.cache
def _text_logger_config(path: str, text: str | None) -> dict[str, Any]:
    return _file_logger_config(path, None, text)["typed_config"]


def _file_logger_config(path: str, json_format: dict[str, Any] | None, text: str | None) -> dict[str, Any]:
    if json_format is not None:
        log_format: dict[str, Any] = {"json_format": json_format, "json_format_options": {"sort_properties": False}}
    else:
        fmt = text or ACCESS_LOG_FORMAT
        log_format = {"text_format_source": {"inline_string": fmt if fmt.endswith("\n") else fmt + "\n"}}
    if path == DEFAULT_ACCESS_LOG_FILE:
        return {"name": STDOUT_LOGGER, "typed_config": {"@type": T_STDOUT_LOGGER, "log_format": log_format}}
    return {
        "name": STDOUT_LOGGER,
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": path, "log_format": log_format},
    }


def json_access_log() -> list[dict[str, Any]]:
    """As `text_access_log`, one JSON object a line (Envoy ends each with a newline itself).

    The options are Istio's (`JsonFormatOptions{SortProperties: false}`), but the format travels as a
    protobuf Struct, a map, so no order survives: Envoy 1.40 prints the keys alphabetically. It renders
    numbers (response_code, bytes, duration) as JSON numbers and an absent value as null.
    """
    return [
        {
            "name": STDOUT_LOGGER,
            "typed_config": {
                "@type": T_STDOUT_LOGGER,
                "log_format": {"json_format": dict(ACCESS_LOG_JSON_FORMAT), "json_format_options": {"sort_properties": False}},
            },
        }
    ]


def http_filters() -> list[dict[str, Any]]:
    """HTTP filters the waypoint's telemetry needs, placed just before the router (Istio's stats position).

    grpc_stats counts each gRPC stream's messages into filter state (`emit_filter_state`); with
    `stats_for_all_methods` off it keeps no per-method stats, whose names a client would choose. The Lua
    filter comes first so that, on the response path, it runs after grpc_stats has counted.
    """
    return [
        {"name": GRPC_MESSAGES_FILTER, "typed_config": {"@type": T_LUA, "default_source_code": {"inline_string": GRPC_MESSAGES_LUA}}},
        {"name": GRPC_STATS_FILTER, "typed_config": {"@type": T_GRPC_STATS, "emit_filter_state": True, "stats_for_all_methods": False}},
    ]


TELEMETRY_HTTP_FILTERS = frozenset({GRPC_MESSAGES_FILTER, GRPC_STATS_FILTER})


def without_metrics(resource: Any) -> Any:
    """A copy of an Envoy resource (listener, …) with every metrics piece of this module taken out: the
    stats access loggers and the telemetry HTTP filters. Text/JSON access logs stay. For measuring what
    the metrics cost (bench/metrics_cost.py); the product never serves this."""
    if isinstance(resource, list):
        return [without_metrics(v) for v in resource]
    if not isinstance(resource, dict):
        return resource
    out = {}
    for key, value in resource.items():
        if key == "access_log" and isinstance(value, list):
            value = [entry for entry in value if entry.get("typed_config", {}).get("@type") != T_STATS_LOGGER]
        elif key == "http_filters" and isinstance(value, list):
            value = [f for f in value if f.get("name") not in TELEMETRY_HTTP_FILTERS]
        out[key] = without_metrics(value)
    return out
