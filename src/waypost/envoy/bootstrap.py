"""The minimal bootstrap each Envoy starts from: its node id, admin address, and the ADS server.

Everything else (listeners, clusters, routes, certificates) arrives over ADS.
"""

from __future__ import annotations

from typing import Any

from .common import http2_options, socket_address

XDS_CLUSTER = "xds-grpc"  # Istio's name for the control-plane cluster


# Which of Envoy's own stats a proxy keeps, as Istio's bootstrap does (its default `proxyStatsMatcher`:
# tools/packaging/common/envoy_bootstrap.json, inclusion prefixes reporter=, cluster_manager,
# listener_manager, server, cluster.xds-grpc, wasm, component, and the RBAC/shadow suffixes), plus `istio.`,
# where the stats access loggers put the Istio metrics. Without it a waypoint of 1000 Services keeps some
# 300,000 per-cluster and per-listener stats: memory, and a main thread that spends tens of milliseconds on
# every flush (xDS updates wait behind it).
STATS_CONFIG: dict[str, Any] = {
    "stats_matcher": {
        "inclusion_list": {
            "patterns": [{"prefix": p} for p in ("istio.", "reporter=", "cluster_manager", "listener_manager", "server", "cluster.xds-grpc", "wasm", "component")]
            + [{"suffix": s} for s in ("rbac.allowed", "rbac.denied", "shadow_allowed", "shadow_denied", "downstream_cx_active")]
        }
    }
}


# Since Envoy 1.38 a tunnelling tcp_proxy turns a reset of its CONNECT stream into a TCP reset of its
# downstream. A destination that answers and closes (HTTP/1.0, `Connection: close`, a banner protocol)
# ends the CONNECT stream with END_STREAM and then RST_STREAM(NO_ERROR) (the terminating HCM resets a stream
# whose response completed first, as RFC 9113 §8.1 allows), so the source's tunnel reset its downstream and
# the answer it still had to write was lost: on the ztunnel's L4 path in every run, through the waypoint's
# TCP chains in some (traced: the `originate` internal listener's tcp_proxy closes with a reset after the
# END_STREAM, then "propagating upstream RST to downstream" discards the unsent bytes;
# tests/e2e/test_server_first_close.py). Off, a tunnel ends its downstream with a close after writing all
# of it. The cost: a connection a destination ztunnel denies after its CONNECT 200 (network RBAC in the
# inbound internal listener) now reaches the client as an EOF instead of a reset; Istio's conformance
# tests accept either as a denial (shared/spec/istio-ambient-semantics.md §5.8).
RUNTIME: dict[str, Any] = {
    "layers": [{"name": "static", "static_layer": {"envoy.reloadable_features.propagate_upstream_rst_through_tunneled_tcp_proxy": False}}]
}


def bootstrap(node_id: str, cluster: str, admin: tuple[str, int], xds: tuple[str, int]) -> dict[str, Any]:
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": node_id, "cluster": cluster},
        "admin": {"address": socket_address(*admin)},
        # Histograms reach /stats/prometheus only when stats are flushed (default every 5 s).
        "stats_flush_interval": "1s",
        "stats_config": STATS_CONFIG,
        "layered_runtime": RUNTIME,
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                # Reconnect within a second of a restarted control plane coming back (Envoy's default backoff
                # grows to 30 s; its xDS mux reads this policy, see Config::Utility::prepareJitteredExponentialBackOffStrategy).
                "grpc_services": [
                    {"envoy_grpc": {"cluster_name": XDS_CLUSTER, "retry_policy": {"retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"}}}}
                ],
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": XDS_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": http2_options(),
                    "load_assignment": {
                        "cluster_name": XDS_CLUSTER,
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(*xds)}}]}],
                    },
                }
            ]
        },
        "bootstrap_extensions": [
            {
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"},
            }
        ],
        # Istio's proxies run with an overload manager capping downstream connections; without one Envoy warns.
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": 100000,
                    },
                }
            ]
        },
    }
