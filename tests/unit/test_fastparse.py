"""The fast dict → protobuf path (`waypost.xds.fastparse`) builds exactly what `json_format.ParseDict`
builds, and hands everything it does not cover back to ParseDict (issue 8: encoding was most of a push)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from google.protobuf import json_format

from waypost.api import load_paths
from waypost.envoy import bootstrap, translate
from waypost.mesh import AddressPlan, build
from waypost.xds import TYPE_CLUSTER, TYPE_LISTENER, TYPE_ROUTE, fastparse
from waypost.xds.codec import EncodeError, encode_named, message_class

REPO = Path(__file__).resolve().parents[2]
T_BOOTSTRAP = "type.googleapis.com/envoy.config.bootstrap.v3.Bootstrap"


def _inputs() -> list[Path]:
    """Every example, and every analyze fixture that loads cleanly: many kinds of generated config."""
    paths = sorted(p for p in (REPO / "examples").iterdir() if p.is_dir())
    fixtures = REPO / "tests" / "analyze" / "fixtures"
    if fixtures.is_dir():
        paths += sorted(fixtures.iterdir())
    return [p for p in paths if not load_paths([p]).errors]


def _resources():
    out = []
    for path in _inputs():
        snapshot = build(load_paths([path]).resources, AddressPlan(60))
        for pid, config in translate(snapshot).items():
            out.append((T_BOOTSTRAP, pid, bootstrap(pid, config.kind, (config.address, 15000), ("127.0.0.1", 15010))))
            for type_url, items in ((TYPE_LISTENER, config.listeners), (TYPE_CLUSTER, config.clusters), (TYPE_ROUTE, config.routes)):
                out += [(type_url, f"{path.name}:{pid}:{r['name']}", r) for r in items]
    return out


def _slow(type_url: str, resource: dict):
    msg = message_class(type_url)()
    json_format.ParseDict(copy.deepcopy(resource), msg)
    return msg


def test_every_generated_resource_is_parsed_as_parsedict_parses_it():
    resources = _resources()
    assert len(resources) > 100
    for type_url, name, resource in resources:
        fast = fastparse.parse(resource, message_class(type_url)())  # no fallback: generated config is covered
        assert fast.SerializeToString(deterministic=True) == _slow(type_url, resource).SerializeToString(deterministic=True), name


T_CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
CLUSTER = {
    "name": "c",
    "type": "STATIC",  # enum by name
    "connect_timeout": "1.5s",  # Duration
    "per_connection_buffer_limit_bytes": 32768,  # UInt32Value from a bare number
    "max_requests_per_connection": "7",  # a wrapper's integer as a string
    "outlier_detection": {},  # an empty message, still present
    "dns_lookup_family": "V4_ONLY",
    "metadata": {"filter_metadata": {"istio": {"a": "b", "n": 1.5, "l": [True, None, {"x": 1}]}}},  # Struct
    "load_assignment": {
        "cluster_name": "c",
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 80}}}}]}],
    },
    "typed_extension_protocol_options": {  # map of Any
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    },
    "transport_socket": {
        "name": "envoy.transport_sockets.upstream_proxy_protocol",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport",
            "config": {"version": "V2", "added_tlvs": [{"type": 224, "value": "c2NhbGU="}]},  # bytes, base64
            "transport_socket": {"name": "raw", "typed_config": {}},  # an empty Any
        },
    },
    "lbPolicy": "ROUND_ROBIN",  # camelCase key
    "common_lb_config": {"healthy_panic_threshold": {"value": 50.0}},  # double
}


def test_hand_written_cluster_covers_the_json_mapping_as_parsedict_does():
    fast = fastparse.parse(CLUSTER, message_class(T_CLUSTER)())
    assert fast.SerializeToString(deterministic=True) == _slow(T_CLUSTER, CLUSTER).SerializeToString(deterministic=True)
    assert fast.HasField("outlier_detection") and fast.per_connection_buffer_limit_bytes.value == 32768


@pytest.mark.parametrize(
    "change",
    [
        {"no_such_field": 1},  # unknown field
        {"connect_timeout": None},  # null
        {"type": 1},  # enum by number
        {"type": "NOT_A_TYPE"},  # unknown enum name
        {"per_connection_buffer_limit_bytes": True},  # bool for an integer
        {"per_connection_buffer_limit_bytes": -1},  # out of range for uint32
        {"lb_policy": "RANDOM", "lbPolicy": "RANDOM"},  # one field named twice
        {"type": "STATIC", "cluster_type": {"name": "x"}},  # two members of one oneof
        {"connect_timeout": "soon"},  # not a Duration
        {"load_assignment": []},  # not an object
        {"common_lb_config": {"healthy_panic_threshold": {"value": float("nan")}}},
    ],
)
def test_what_the_fast_path_does_not_take_goes_to_parsedict_with_its_error(change):
    resource = {**CLUSTER, **change}
    with pytest.raises(fastparse.Unsupported):
        fastparse.parse(resource, message_class(T_CLUSTER)())
    # Through the codec: ParseDict's verdict, its message included when it rejects.
    try:
        slow = _slow(T_CLUSTER, resource)
    except json_format.ParseError as exc:
        with pytest.raises(EncodeError) as err:
            encode_named(T_CLUSTER, "c", resource)
        assert str(exc) in str(err.value)
    else:
        packed = encode_named(T_CLUSTER, "c", resource)
        assert packed.value == slow.SerializeToString(deterministic=True)


def test_the_encoded_any_is_the_same_either_way():
    fast = encode_named(T_CLUSTER, "c", CLUSTER)
    slow = _slow(T_CLUSTER, CLUSTER)
    assert fast.type_url == T_CLUSTER and fast.value == slow.SerializeToString(deterministic=True)
