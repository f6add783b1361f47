"""The xDS resource types waypost serves, and how the ADS protocol treats each one.

Type URLs are the `type.googleapis.com/<proto message>` names Envoy puts in `DiscoveryRequest.type_url`
(https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#resource-types).
"""

from __future__ import annotations

from types import MappingProxyType

TYPE_CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
TYPE_ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
TYPE_LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
TYPE_ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
TYPE_SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# Make before break: a cluster (and its endpoints) must exist before a listener or route names it, and a
# listener before its routes and secrets are asked for (xDS protocol docs, "Eventual consistency
# considerations"; go-control-plane's `sotw.WithOrderedADS()` option). Envoy handles ADS responses in
# order, so sending in this order is enough; a secret arriving after its listener only keeps it warming.
PUSH_ORDER: tuple[str, ...] = (TYPE_CLUSTER, TYPE_ENDPOINT, TYPE_LISTENER, TYPE_ROUTE, TYPE_SECRET)

# In State-of-the-World, Envoy subscribes to every cluster and listener (wildcard) and to routes, endpoints
# and secrets by name ("xDS REST and gRPC protocol", "How the client specifies what resources to return").
WILDCARD_TYPES: frozenset[str] = frozenset({TYPE_CLUSTER, TYPE_LISTENER})

# The field that carries a resource's name; Envoy keys SotW resources by it.
NAME_FIELD: MappingProxyType[str, str] = MappingProxyType(
    {
        TYPE_CLUSTER: "name",
        TYPE_ENDPOINT: "cluster_name",
        TYPE_LISTENER: "name",
        TYPE_ROUTE: "name",
        TYPE_SECRET: "name",
    }
)


def short_name(type_url: str) -> str:
    """`Listener` for the listener type URL: for log lines and error messages."""
    return type_url.rsplit(".", 1)[-1]
