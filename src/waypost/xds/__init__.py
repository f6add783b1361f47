"""Serving Envoy config over ADS (State-of-the-World). This package never computes config."""

from waypost.xds.codec import EncodeError, encode_resource
from waypost.xds.server import NodeStatus, XdsServer
from waypost.xds.snapshot import Snapshot
from waypost.xds.types import TYPE_CLUSTER, TYPE_ENDPOINT, TYPE_LISTENER, TYPE_ROUTE, TYPE_SECRET

__all__ = [
    "TYPE_CLUSTER",
    "TYPE_ENDPOINT",
    "TYPE_LISTENER",
    "TYPE_ROUTE",
    "TYPE_SECRET",
    "EncodeError",
    "NodeStatus",
    "Snapshot",
    "XdsServer",
    "encode_resource",
]
