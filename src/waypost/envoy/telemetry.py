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
"""

from __future__ import annotations

from typing import Any

from waypost.mesh.model import Endpoint, MeshSnapshot, Service, Workload

from .common import PEER_PRINCIPAL_KEY

T_STATS_LOGGER = "type.googleapis.com/envoy.extensions.access_loggers.stats.v3.Config"
STAT_PREFIX = "istio"
CLUSTER_NAME = "Kubernetes"

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
    return {**labels, "principal": workload.identity}


def _fs(key: str) -> str:
    return f"%FILTER_STATE({key}:PLAIN)%"


def _source_tags() -> list[dict[str, str]]:
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
    return [{"name": k, "value_format": v} for k, v in tags]


def _upstream(key: str) -> str:
    return f"%UPSTREAM_METADATA(istio:{key})%"


def _destination_tags(service: Service | None) -> list[dict[str, str]]:
    tags = [
        ("destination_workload", _upstream("workload")),
        ("destination_workload_namespace", _upstream("workload_namespace")),
        ("destination_principal", _upstream("principal")),
        ("destination_app", _upstream("app")),
        ("destination_version", _upstream("version")),
        ("destination_service", service.fqdn if service else "unknown"),
        ("destination_canonical_service", _upstream("canonical_service")),
        ("destination_canonical_revision", _upstream("canonical_revision")),
        ("destination_service_name", service.name if service else "unknown"),
        ("destination_service_namespace", service.namespace if service else "unknown"),
        ("destination_cluster", CLUSTER_NAME),
    ]
    return [{"name": k, "value_format": v} for k, v in tags]


def http_access_log(reporter: str, service: Service | None, protocol: str) -> list[dict[str, Any]]:
    """istio_requests_total and the request duration/size histograms (one stats logger), plus the text log."""
    tags = (
        [{"name": "reporter", "value_format": reporter}]
        + _source_tags()
        + _destination_tags(service)
        + [
            {"name": "request_protocol", "value_format": protocol},
            {"name": "response_code", "value_format": "%RESPONSE_CODE%"},
            # Istio leaves grpc_response_status empty for HTTP; Envoy refuses an empty tag format, and in
            # PromQL an absent label equals an empty one, so HTTP series simply omit it.
            *([{"name": "grpc_response_status", "value_format": "%GRPC_STATUS_NUMBER%"}] if protocol == "grpc" else []),
            {"name": "response_flags", "value_format": "%RESPONSE_FLAGS%"},
            {"name": "connection_security_policy", "value_format": "mutual_tls"},
        ]
    )
    return [
        {
            "name": "istio.stats",
            "typed_config": {
                "@type": T_STATS_LOGGER,
                "stat_prefix": STAT_PREFIX,
                "counters": [{"stat": {"name": "requests_total", "tags": tags}, "value_fixed": 1}],
                "histograms": [
                    {"stat": {"name": "request_duration_milliseconds", "tags": tags}, "unit": "Milliseconds", "value_format": "%DURATION%"},
                    {"stat": {"name": "request_bytes", "tags": tags}, "unit": "Bytes", "value_format": "%BYTES_RECEIVED%"},
                    {"stat": {"name": "response_bytes", "tags": tags}, "unit": "Bytes", "value_format": "%BYTES_SENT%"},
                ],
            },
        }
    ] + text_access_log()


def tcp_access_log(reporter: str, service: Service | None, destination: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """istio_tcp_* counters from tcp_proxy's access log: opened when connected, the rest at the end."""
    dest_tags = _destination_tags(service)
    if destination is not None:  # the destination ztunnel knows its pod: literal labels
        dest_tags = [{"name": t["name"], "value_format": destination.get(t["name"], t["value_format"])} for t in dest_tags]
    tags = [{"name": "reporter", "value_format": reporter}] + _source_tags() + dest_tags + [
        {"name": "request_protocol", "value_format": "tcp"},
        {"name": "response_flags", "value_format": "%RESPONSE_FLAGS%"},
        {"name": "connection_security_policy", "value_format": "mutual_tls"},
    ]

    def logger(name: str, log_type: str, counters: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "name": name,
            "filter": {"log_type_filter": {"types": [log_type]}},
            "typed_config": {"@type": T_STATS_LOGGER, "stat_prefix": STAT_PREFIX, "counters": counters},
        }

    return [
        logger("istio.tcp.open", "TcpUpstreamConnected", [{"stat": {"name": "tcp_connections_opened_total", "tags": tags}, "value_fixed": 1}]),
        logger(
            "istio.tcp.close",
            "TcpConnectionEnd",
            [
                {"stat": {"name": "tcp_connections_closed_total", "tags": tags}, "value_fixed": 1},
                {"stat": {"name": "tcp_sent_bytes_total", "tags": tags}, "value_format": "%BYTES_SENT%"},
                {"stat": {"name": "tcp_received_bytes_total", "tags": tags}, "value_format": "%BYTES_RECEIVED%"},
            ],
        ),
        {**text_access_log()[0], "filter": {"log_type_filter": {"types": ["TcpConnectionEnd"]}}},
    ]


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
    }


# Istio's default access-log text format (MeshConfig accessLogFormat default), for HTTP and TCP.
ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% '
    '%RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% '
    '%BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% '
    "%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)


def text_access_log() -> list[dict[str, Any]]:
    """Access log lines on the proxy's stdout (the local runner keeps them in the proxy's log file).

    RBAC denials carry `rbac_access_denied_matched_policy[ns[NS]-policy[NAME]-rule[N]]` in the response
    code details: the deciding policy and rule (`waypost logs` spells it out).
    """
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
            },
        }
    ]


def http_filters() -> list[dict[str, Any]]:
    """HTTP filters the waypoint's telemetry needs, placed just before the router (Istio's stats position)."""
    return []
