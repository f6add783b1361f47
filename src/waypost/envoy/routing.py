"""HTTPRoute entries → Envoy RouteConfiguration for one service port in its waypoint.

Without an attached route, the waypoint's default route applies (istio-ambient-semantics.md §3.5): all
requests to the service's own endpoints, balanced per request, no timeout, Istio's default retry policy.
Once a route attaches, only its rules apply and unmatched requests get Envoy's 404.
"""

from __future__ import annotations

from typing import Any

from waypost.mesh.model import HTTPRouteEntry, MeshSnapshot, Service, ServicePort

# Istio's default retry policy for mesh HTTP routes (pilot/pkg/networking/core/route/retry/retry.go).
DEFAULT_RETRY = {
    "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
    "num_retries": 2,
    "retriable_status_codes": [503],
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
        }
    ],
    "host_selection_retry_max_attempts": "5",
}


def _match(entry: HTTPRouteEntry) -> dict[str, Any]:
    if entry.path_type == "Exact":
        return {"path": entry.path}
    if entry.path == "/":
        return {"prefix": "/"}
    # Gateway API prefixes match whole path segments: /v2 matches /v2 and /v2/x but not /v2example.
    return {"path_separated_prefix": entry.path}


def _action(entry: HTTPRouteEntry) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """(route fields, existing backend (fqdn, port) pairs that need clusters)."""
    live = [b for b in entry.backends if b.weight > 0]
    if not live:
        # No backendRefs, or all weights 0: the request cannot be forwarded (Gateway API: 500).
        return {"direct_response": {"status": 500}}, []
    needed = [(b.service, b.port) for b in live if b.exists]

    def cluster(b) -> str:
        # A missing backend keeps its share and gets 500 through a cluster name that does not exist.
        return f"outbound|{b.port}||{b.service}" if b.exists else f"missing|{b.port}||{b.service}"

    action: dict[str, Any] = {
        "timeout": "0s",
        "retry_policy": DEFAULT_RETRY,
        "cluster_not_found_response_code": "INTERNAL_SERVER_ERROR",
    }
    if len(live) == 1:
        action["cluster"] = cluster(live[0])
    else:
        action["weighted_clusters"] = {"clusters": [{"name": cluster(b), "weight": b.weight} for b in live]}
    return {"route": action}, needed


def route_configuration(
    snapshot: MeshSnapshot, service: Service, port: ServicePort, name: str
) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    attached = snapshot.routes_for(service.key, port.port)
    if attached is None or not attached.entries:
        return default_route_config(name, f"inbound-vip|{port.port}|http|{service.fqdn}"), []
    routes = []
    needed: list[tuple[str, int]] = []
    for entry in attached.entries:
        fields, backends = _action(entry)
        needed.extend(backends)
        routes.append({"name": entry.route_name, "match": _match(entry), **fields})
    config = {
        "name": name,
        "validate_clusters": False,
        "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}],
    }
    return config, sorted(set(needed))


def default_route_config(name: str, cluster: str) -> dict[str, Any]:
    return {
        "name": name,
        "validate_clusters": False,
        "virtual_hosts": [
            {
                "name": name,
                "domains": ["*"],
                "routes": [
                    {
                        "name": "default",
                        "match": {"prefix": "/"},
                        "route": {"cluster": cluster, "timeout": "0s", "retry_policy": DEFAULT_RETRY},
                    }
                ],
            }
        ],
    }
