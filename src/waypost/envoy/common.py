"""Building blocks shared by the ztunnel and waypoint translations: TLS over SDS, HBONE, internal listeners.

Every function returns plain Envoy v3 dicts (the JSON form of the protos); nothing here does I/O.
"""

from __future__ import annotations

import functools

from typing import Any

from waypost.mesh.model import TRUST_DOMAIN

ROOT_CA_SECRET = "ROOTCA"  # Istio's name for the trust bundle secret
HBONE_PORT = 15008
PEER_PRINCIPAL_KEY = "io.istio.peer_principal"
SOURCE_HEADER = "x-hbone-source"  # carries the client's ip:port on the CONNECT (the inner stream cannot)

ADS = {"ads": {}, "resource_api_version": "V3"}

T_TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
T_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
T_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
T_SET_FILTER_STATE = "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config"
T_ORIGINAL_DST = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
T_TLS_INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
T_HTTP_INSPECTOR = "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
T_DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
T_UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
T_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
T_INTERNAL_UPSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport"
T_RAW_BUFFER = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def socket_address(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


@functools.cache
def sds(name: str) -> dict[str, Any]:
    return {"name": name, "sds_config": ADS}


@functools.cache
def _validation(san_exact: str | None) -> dict[str, Any]:
    matcher = {"exact": san_exact} if san_exact else {"prefix": f"spiffe://{TRUST_DOMAIN}/"}
    return {
        "combined_validation_context": {
            "default_validation_context": {"match_typed_subject_alt_names": [{"san_type": "URI", "matcher": matcher}]},
            "validation_context_sds_secret_config": sds(ROOT_CA_SECRET),
        }
    }


# Parts every HBONE TLS context has: shared (configs are never changed in place).
_ALPN_H2 = ["h2"]
_TLS13 = {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"}
RAW_BUFFER = {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {"@type": T_RAW_BUFFER}}
_FLUSH_ON_CONNECTED = {"flush_access_log_on_connected": True}
_CONNECT_UPGRADE = [{"upgrade_type": "CONNECT"}]
_ALLOW_CONNECT = {"allow_connect": True}


@functools.cache
def downstream_mtls(identity: str) -> dict[str, Any]:
    """HBONE server side: TLS 1.3, ALPN h2, a client certificate from our trust domain is required."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": T_DOWNSTREAM_TLS,
            "require_client_certificate": True,
            "common_tls_context": {
                "alpn_protocols": _ALPN_H2,
                "tls_params": _TLS13,
                "tls_certificate_sds_secret_configs": [sds(identity)],
                **_validation(None),
            },
        },
    }


@functools.cache
def upstream_mtls(identity: str, peer: str | None) -> dict[str, Any]:
    """HBONE client side with `identity`'s certificate, verifying the peer's SPIFFE id (or the trust domain)."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": T_UPSTREAM_TLS,
            "common_tls_context": {
                "alpn_protocols": _ALPN_H2,
                "tls_params": _TLS13,
                "tls_certificate_sds_secret_configs": [sds(identity)],
                **_validation(peer),
            },
        },
    }


@functools.cache
def http2_options() -> dict[str, Any]:
    return {HTTP_OPTIONS_KEY: {"@type": T_HTTP_OPTIONS, "explicit_http_config": {"http2_protocol_options": {}}}}


@functools.cache
def downstream_protocol_options() -> dict[str, Any]:
    return {
        HTTP_OPTIONS_KEY: {
            "@type": T_HTTP_OPTIONS,
            "use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}},
        }
    }


def hbone_cluster(name: str, address: str, identity: str, peer: str) -> dict[str, Any]:
    """One HBONE next hop (a waypoint or a node ztunnel): all CONNECT streams share h2 connections."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {"cluster_name": name, "endpoints": single_endpoint(address, HBONE_PORT)},
        "typed_extension_protocol_options": http2_options(),
        "transport_socket": upstream_mtls(identity, peer),
    }


def hbone_pod_cluster(name: str, identity: str, peer: str) -> dict[str, Any]:
    """HBONE to whichever pod IP was dialled, on its port 15008: one cluster per (client, pod identity).

    The capture listener binds the pod IPs themselves, so the dialled address is the connection's local
    address; `dial_pod_hbone()` puts `<that IP>:15008` in the filter state ORIGINAL_DST reads. All pods of
    one identity share the cluster (and its TLS context) instead of one cluster per pod.
    """
    return {
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "5s",
        "cleanup_interval": "60s",
        "typed_extension_protocol_options": http2_options(),
        "transport_socket": upstream_mtls(identity, peer),
    }


@functools.cache
def dial_pod_hbone() -> dict[str, Any]:
    """Network filter: the upstream of an ORIGINAL_DST cluster is the dialled pod IP, port 15008."""
    return {
        "name": "envoy.filters.network.set_filter_state",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config",
            "on_new_connection": [
                {
                    "object_key": "envoy.network.transport_socket.original_dst_address",
                    "format_string": {"text_format_source": {"inline_string": f"%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%:{HBONE_PORT}"}},
                }
            ],
        },
    }


def tunnel_tcp_proxy(stat_prefix: str, cluster: str, hostname: str, extra_headers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """tcp_proxy that wraps the connection in an HTTP/2 CONNECT to `hostname` (HBONE)."""
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": T_TCP_PROXY,
            "stat_prefix": stat_prefix,
            "cluster": cluster,
            "tunneling_config": _tunneling(hostname, _pairs(extra_headers or [])),
        },
    }


def _pairs(headers: list[dict[str, Any]]) -> tuple[tuple[str, str], ...]:
    return tuple((h["header"]["key"], h["header"]["value"]) for h in headers)


@functools.cache
def _tunneling(hostname: str, extra: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    headers = [{"header": {"key": key, "value": value}} for key, value in ((SOURCE_HEADER, "%DOWNSTREAM_REMOTE_ADDRESS%"), *extra)]
    return {"hostname": hostname, "headers_to_add": headers}


def tcp_proxy(stat_prefix: str, cluster: str, access_log: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"@type": T_TCP_PROXY, "stat_prefix": stat_prefix, "cluster": cluster}
    if access_log:
        config["access_log"] = access_log
        config["access_log_options"] = _FLUSH_ON_CONNECTED  # "opened" counts at connect
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": config}


@functools.lru_cache(maxsize=1024)
def internal_cluster(name: str, listener: str) -> dict[str, Any]:
    """A cluster whose single endpoint is an internal listener of the same Envoy (shared: the same object for
    the same arguments, so an unchanged proxy config keeps it by identity)."""
    return {
        "name": name,
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": internal_address(listener)}}]}
            ],
        },
        "transport_socket": internal_upstream(),
    }


@functools.cache
def internal_upstream() -> dict[str, Any]:
    # passthrough_metadata hands the chosen endpoint's `tunnel` metadata (HBONE target and CONNECT authority)
    # to the internal listener's connection, where the originate listener reads it.
    return {
        "name": "envoy.transport_sockets.internal_upstream",
        "typed_config": {
            "@type": T_INTERNAL_UPSTREAM,
            "passthrough_metadata": [{"kind": {"host": {}}, "name": "tunnel"}],
            "transport_socket": RAW_BUFFER,
        },
    }


@functools.cache
def internal_address(listener: str) -> dict[str, Any]:
    return {"envoy_internal_address": {"server_listener_name": listener}}


@functools.cache
def _internal_endpoint(listener: str) -> dict[str, Any]:
    return {"address": internal_address(listener)}


def tunnel_endpoint(listener: str, destination: str, address: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """An endpoint reached through an originate internal listener; metadata says where to tunnel (and,
    under `istio`, which workload it is, for the destination labels of the metrics). A waypoint names each
    endpoint in up to three clusters (HTTP, TCP, route backend): they share one object."""
    return _tunnel_endpoint(listener, destination, address, tuple(labels.items()) if labels else ())


@functools.lru_cache(maxsize=1 << 16)
def _tunnel_endpoint(listener: str, destination: str, address: str, labels: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"tunnel": {"destination": destination, "address": address}}
    if labels:
        metadata["istio"] = dict(labels)
    return {
        "endpoint": _internal_endpoint(listener),
        "metadata": {"filter_metadata": metadata},
    }


def resolution(endpoints) -> str:
    """The cluster type for these endpoints: STATIC, or the DNS type (STRICT_DNS / LOGICAL_DNS) of a
    ServiceEntry whose endpoints are names the proxy resolves."""
    for e in endpoints:
        if e.resolve:
            return e.resolve
    return "STATIC"


def direct_endpoint(address: str, port: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """An endpoint the proxy connects to itself, by IP or by a name it resolves (plain TCP, no tunnel)."""
    out: dict[str, Any] = {"endpoint": {"address": socket_address(address, port)}}
    if labels:
        out["metadata"] = {"filter_metadata": {"istio": dict(labels)}}
    return out


def originate_listener(name: str, cluster: str, tunnel: bool, headers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Internal listener that forwards to the endpoint named in `tunnel` metadata, via HBONE or plain TCP."""
    if tunnel:
        tunneling: dict[str, Any] = {"hostname": "%DYNAMIC_METADATA(tunnel:destination)%"}
        if headers:
            tunneling["headers_to_add"] = headers
        proxy = {
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": T_TCP_PROXY,
                "stat_prefix": name,
                "cluster": cluster,
                "tunneling_config": tunneling,
            },
        }
    else:
        proxy = tcp_proxy(name, cluster)
    return {"name": name, "internal_listener": {}, "filter_chains": [{"filters": [proxy]}]}


@functools.lru_cache(maxsize=1024)
def originate_cluster(name: str, identity: str | None) -> dict[str, Any]:
    """ORIGINAL_DST cluster that connects to `tunnel.address` of the endpoint chosen upstream (shared, as
    `internal_cluster`)."""
    cluster: dict[str, Any] = {
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "5s",
        "original_dst_lb_config": {"use_http_header": False, "metadata_key": {"key": "tunnel", "path": [{"key": "address"}]}},
        "cleanup_interval": "60s",
    }
    if identity is not None:
        cluster["typed_extension_protocol_options"] = http2_options()
        cluster["transport_socket"] = upstream_mtls(identity, None)
    return cluster


def source_filter_state() -> list[dict[str, Any]]:
    from .telemetry import source_filter_state as states

    return states()


@functools.cache
def _connect_terminate_http_filters() -> list[dict[str, Any]]:
    """The inner listener cannot see the TLS peer, so the peer identity, the original destination (CONNECT
    authority) and the original source travel as filter state shared with the upstream (spec
    envoy-dataplane.md §2 "No mTLS peer inside the internal listener")."""
    def state(key: str, fmt: str, **extra: Any) -> dict[str, Any]:
        return {
            "object_key": key,
            "format_string": {"text_format_source": {"inline_string": fmt}},
            "shared_with_upstream": "ONCE",
            **extra,
        }

    return [
        {
            "name": "envoy.filters.http.set_filter_state",
            "typed_config": {
                "@type": T_SET_FILTER_STATE,
                "on_request_headers": [
                    state("envoy.filters.listener.original_dst.local_ip", "%REQ(:AUTHORITY)%"),
                    state("envoy.filters.listener.original_dst.remote_ip", f"%REQ({SOURCE_HEADER})%", skip_if_empty=True),
                    state(PEER_PRINCIPAL_KEY, "%DOWNSTREAM_PEER_URI_SAN%", factory_key="envoy.string"),
                    *source_filter_state(),
                ],
            },
        },
        {"name": "envoy.filters.http.router", "typed_config": {"@type": T_ROUTER}},
    ]


@functools.cache
def _connect_routes(cluster: str) -> list[dict[str, Any]]:
    """The CONNECT route to `cluster`: the same for every HBONE listener and identity chain (shared)."""
    return [{"match": {"connect_matcher": {}}, "route": {"cluster": cluster, "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}}]


@functools.cache
def single_endpoint(address: str, port: int) -> list[dict[str, Any]]:
    """`load_assignment.endpoints` with one socket address: shared by every cluster that names it (one
    HBONE cluster per client identity names the same waypoint or ztunnel)."""
    return [{"lb_endpoints": [{"endpoint": {"address": socket_address(address, port)}}]}]


def connect_terminate_filters(stat_prefix: str, domains: list[str], cluster: str) -> list[dict[str, Any]]:
    """HCM that accepts HBONE CONNECTs for `domains` and hands each stream to an internal listener
    (`_connect_terminate_http_filters`)."""
    virtual_hosts = []
    if domains:
        virtual_hosts.append(
            {
                "name": "connect",
                "domains": domains,
                "routes": _connect_routes(cluster),
            }
        )
    return [
        {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": T_HCM,
                "stat_prefix": stat_prefix,
                "codec_type": "HTTP2",
                "http2_protocol_options": _ALLOW_CONNECT,
                "upgrade_configs": _CONNECT_UPGRADE,
                "route_config": {"name": stat_prefix, "virtual_hosts": virtual_hosts},
                "http_filters": _connect_terminate_http_filters(),
            },
        }
    ]


def listener_with_addresses(name: str, addresses: list[tuple[str, int]], **rest: Any) -> dict[str, Any]:
    """One listener bound to many ip:port pairs (the first is `address`, the rest `additional_addresses`)."""
    ordered = sorted(set(addresses), key=lambda a: (tuple(int(x) for x in a[0].split(".")), a[1]))
    listener: dict[str, Any] = {"name": name, "address": socket_address(*ordered[0])}
    if len(ordered) > 1:
        listener["additional_addresses"] = [{"address": socket_address(*a)} for a in ordered[1:]]
    listener.update(rest)
    return listener


def host_prefix(address: str) -> dict[str, Any]:
    return {"address_prefix": address, "prefix_len": 32}


def deny_chain(stat_prefix: str) -> dict[str, Any]:
    """A filter chain that closes every connection (network RBAC ALLOW with no policies denies all)."""
    return {
        "name": stat_prefix,
        "filters": [
            {
                "name": "envoy.filters.network.rbac",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
                    "stat_prefix": stat_prefix,
                    "rules": {"action": "ALLOW"},
                },
            },
            # RBAC is not terminal; nothing passes it, but Envoy wants a terminal filter after it.
            tcp_proxy(stat_prefix, "BlackHoleCluster"),
        ],
    }
