"""The ADS server: snapshot versions, encoding errors, and the SotW protocol seen by a raw gRPC client."""

from __future__ import annotations

import queue
import threading

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from waypost.xds import (
    TYPE_CLUSTER,
    TYPE_ENDPOINT,
    TYPE_LISTENER,
    TYPE_ROUTE,
    TYPE_SECRET,
    EncodeError,
    NodeStatus,
    Snapshot,
    XdsServer,
    encode_resource,
)
from waypost.xds.codec import message_class

ROUTER = {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
QUIET = 0.3  # how long "nothing arrives" is watched for


def listener(name: str, port: int = 10000, route: str = "routes") -> dict:
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "rds": {"route_config_name": route, "config_source": {"ads": {}, "resource_api_version": "V3"}},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": ROUTER}],
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    }


def route(name: str, body: str) -> dict:
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


def cluster(name: str) -> dict:
    return {"name": name, "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}}


def snapshot(body: str = "one", *, routes: dict | None = None, listeners: dict | None = None) -> Snapshot:
    return Snapshot(
        {
            TYPE_CLUSTER: {"backend": cluster("backend")},
            TYPE_LISTENER: listeners if listeners is not None else {"http": listener("http")},
            TYPE_ROUTE: routes if routes is not None else {"routes": route("routes", body), "other": route("other", "x")},
        }
    )


# --- Snapshot and codec -------------------------------------------------------------------------------


def test_snapshot_version_is_a_deterministic_content_hash():
    a = snapshot()
    b = snapshot()
    assert a.version(TYPE_ROUTE) == b.version(TYPE_ROUTE) != ""
    assert len(a.version(TYPE_ROUTE)) == 16


def test_snapshot_version_ignores_key_order_in_resource_dicts():
    forward = {"name": "r", "virtual_hosts": [], "validate_clusters": False}
    backward = dict(reversed(list(forward.items())))
    assert Snapshot({TYPE_ROUTE: {"r": forward}}).version(TYPE_ROUTE) == Snapshot({TYPE_ROUTE: {"r": backward}}).version(
        TYPE_ROUTE
    )


def test_changing_a_route_changes_only_the_route_version():
    before, after = snapshot("one"), snapshot("two")
    assert before.version(TYPE_ROUTE) != after.version(TYPE_ROUTE)
    for other in (TYPE_CLUSTER, TYPE_LISTENER, TYPE_ENDPOINT, TYPE_SECRET):
        assert before.version(other) == after.version(other)


def test_a_type_without_resources_has_the_empty_version():
    assert snapshot().version(TYPE_SECRET) == ""
    assert Snapshot({TYPE_SECRET: {}}).version(TYPE_SECRET) == ""


def test_encode_resource_resolves_nested_typed_config_and_packs_an_any():
    packed = encode_resource(TYPE_LISTENER, listener("http"))
    assert packed.type_url == TYPE_LISTENER
    from envoy.config.listener.v3 import listener_pb2

    decoded = listener_pb2.Listener()
    assert packed.Unpack(decoded) and decoded.name == "http"


def test_encode_resource_accepts_camel_case_field_names():
    camel = {"name": "r", "virtualHosts": [{"name": "v", "domains": ["*"]}]}
    assert encode_resource(TYPE_ROUTE, camel) == encode_resource(TYPE_ROUTE, {"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"]}]})


def test_encode_error_names_the_type_the_resource_and_the_bad_field():
    with pytest.raises(EncodeError) as info:
        encode_resource(TYPE_ROUTE, {"name": "my-routes", "virtual_hostz": []})
    err = info.value
    assert (err.type_url, err.name) == (TYPE_ROUTE, "my-routes")
    assert "virtual_hostz" in err.message
    assert TYPE_ROUTE in str(err) and "my-routes" in str(err) and "virtual_hostz" in str(err)


def test_encode_error_for_an_unknown_typed_config():
    bad = listener("http")
    bad["filter_chains"][0]["filters"][0]["typed_config"]["@type"] = "type.googleapis.com/no.such.Filter"
    with pytest.raises(EncodeError, match="no.such.Filter"):
        encode_resource(TYPE_LISTENER, bad)


def test_set_snapshot_rejects_a_broken_resource_and_keeps_the_old_snapshot():
    server = XdsServer("127.0.0.1")
    server.set_snapshot("n", snapshot())
    broken = snapshot(routes={"routes": {"name": "routes", "virtual_hosts": [{"name": "v", "domains": "*"}]}})
    with pytest.raises(EncodeError) as info:
        server.set_snapshot("n", broken)
    assert info.value.type_url == TYPE_ROUTE and info.value.name == "routes"
    assert server._snapshots["n"].versions[TYPE_ROUTE] == snapshot().version(TYPE_ROUTE)


def test_set_snapshot_rejects_a_resource_whose_name_disagrees_with_its_key():
    server = XdsServer("127.0.0.1")
    with pytest.raises(EncodeError, match="stored under name"):
        server.set_snapshot("n", snapshot(routes={"routes": route("not-routes", "x")}))


# --- the protocol over gRPC ---------------------------------------------------------------------------


class AdsClient:
    """A scripted Envoy: sends requests on demand, collects responses on a background thread."""

    def __init__(self, port: int, node_id: str) -> None:
        self.node_id = node_id
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._requests: queue.Queue = queue.Queue()
        self._responses: queue.Queue = queue.Queue()
        self._first = True
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        self._call = stub.StreamAggregatedResources(iter(self._requests.get, None))
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        try:
            for response in self._call:
                self._responses.put(response)
        except grpc.RpcError:
            pass

    def request(self, type_url: str, names=(), *, version: str = "", nonce: str = "", error: str | None = None) -> None:
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=list(names), version_info=version, response_nonce=nonce
        )
        if self._first:  # set_node_on_first_message_only
            req.node.id = self.node_id
            self._first = False
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._requests.put(req)

    def ack(self, response: discovery_pb2.DiscoveryResponse, names=()) -> None:
        self.request(response.type_url, names, version=response.version_info, nonce=response.nonce)

    def receive(self, timeout: float = 5.0) -> discovery_pb2.DiscoveryResponse:
        return self._responses.get(timeout=timeout)

    def nothing_arrives(self, timeout: float = QUIET) -> bool:
        try:
            unexpected = self._responses.get(timeout=timeout)
        except queue.Empty:
            return True
        pytest.fail(f"unexpected response: {unexpected.type_url} version {unexpected.version_info}")

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()
        self._channel.close()


@pytest.fixture
def server_and_port():
    srv = XdsServer("127.0.0.1", 0)
    port = srv.start()
    yield srv, port
    srv.stop(0)


@pytest.fixture
def server(server_and_port) -> XdsServer:
    return server_and_port[0]


@pytest.fixture
def client_factory(server_and_port):
    clients = []

    def make(node_id: str = "envoy-1") -> AdsClient:
        client = AdsClient(server_and_port[1], node_id)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def until(server: XdsServer, predicate, timeout: float = 5.0) -> bool:
    """Wait until `predicate(status of envoy-1)` holds: the server handles requests asynchronously."""
    with server._cond:
        return server._cond.wait_for(lambda: predicate(server._status("envoy-1")), timeout)


def names_of(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    cls = message_class(response.type_url)
    names = []
    for packed in response.resources:
        msg = cls()
        packed.Unpack(msg)
        names.append(msg.name)
    return names


def test_first_cds_request_gets_every_cluster_at_the_snapshot_version(server, client_factory):
    snap = snapshot()
    server.set_snapshot("envoy-1", snap)
    client = client_factory()
    client.request(TYPE_CLUSTER)
    response = client.receive()
    assert response.type_url == TYPE_CLUSTER
    assert response.version_info == snap.version(TYPE_CLUSTER)
    assert len(response.resources) == 1 and response.resources[0].type_url == TYPE_CLUSTER
    assert response.nonce


def test_wildcard_type_is_answered_even_when_empty(server, client_factory):
    server.set_snapshot("envoy-1", snapshot())
    client = client_factory()
    client.request(TYPE_CLUSTER)
    client.receive()
    client.request(TYPE_SECRET, ["nothing"])  # named type without content: no answer
    client.nothing_arrives()
    server.set_snapshot("envoy-1", Snapshot({TYPE_ROUTE: {"r": route("r", "x")}}))  # no clusters at all
    assert len(client.receive().resources) == 0


def test_snapshot_set_after_connect_is_pushed(server, client_factory):
    client = client_factory()
    client.request(TYPE_CLUSTER)
    client.nothing_arrives()
    server.set_snapshot("envoy-1", snapshot())
    assert client.receive().type_url == TYPE_CLUSTER


def test_ack_is_recorded_and_the_node_becomes_in_sync(server, client_factory):
    snap = snapshot()
    server.set_snapshot("envoy-1", snap)
    client = client_factory()
    statuses: list[NodeStatus] = []
    server.add_listener(statuses.append)
    client.request(TYPE_CLUSTER)
    client.ack(client.receive())
    client.request(TYPE_LISTENER)
    lds = client.receive()
    client.request(TYPE_ROUTE, ["routes"])
    client.ack(lds)
    rds = client.receive()
    assert not server.node_status("envoy-1").in_sync  # RDS sent but not ACKed yet
    client.ack(rds, ["routes"])
    assert server.wait_in_sync(["envoy-1"], timeout=5)
    status = server.node_status("envoy-1")
    assert status.connected
    assert status.acked == {
        TYPE_CLUSTER: snap.version(TYPE_CLUSTER),
        TYPE_LISTENER: snap.version(TYPE_LISTENER),
        TYPE_ROUTE: snap.version(TYPE_ROUTE),
    }
    assert statuses and statuses[-1].in_sync


def test_named_type_gets_only_the_subscribed_resources(server, client_factory):
    server.set_snapshot("envoy-1", snapshot())
    client = client_factory()
    client.request(TYPE_ROUTE, ["routes", "missing"])
    response = client.receive()
    assert names_of(response) == ["routes"]  # the missing name does not block the answer


def test_changing_the_subscription_resends_at_the_same_version(server, client_factory):
    server.set_snapshot("envoy-1", snapshot())
    client = client_factory()
    client.request(TYPE_ROUTE, ["routes"])
    first = client.receive()
    client.ack(first, ["routes", "other"])
    second = client.receive()
    assert second.version_info == first.version_info
    assert sorted(names_of(second)) == ["other", "routes"]
    client.ack(second, ["routes", "other"])
    client.nothing_arrives()


def test_route_change_pushes_only_rds(server, client_factory):
    server.set_snapshot("envoy-1", snapshot("one"))
    client = client_factory()
    for type_url, names in ((TYPE_CLUSTER, ()), (TYPE_LISTENER, ()), (TYPE_ROUTE, ["routes"])):
        client.request(type_url, names)
        client.ack(client.receive(), names)
    assert server.wait_in_sync(["envoy-1"], timeout=5)
    server.set_snapshot("envoy-1", snapshot("two"))
    pushed = client.receive()
    assert pushed.type_url == TYPE_ROUTE and pushed.version_info == snapshot("two").version(TYPE_ROUTE)
    client.nothing_arrives()


def test_resetting_an_unchanged_snapshot_pushes_nothing(server, client_factory):
    server.set_snapshot("envoy-1", snapshot())
    client = client_factory()
    client.request(TYPE_CLUSTER)
    client.ack(client.receive())
    server.set_snapshot("envoy-1", snapshot())  # equal content, new dict objects
    client.nothing_arrives()


def test_push_order_is_clusters_then_listeners_then_routes(server, client_factory):
    server.set_snapshot("envoy-1", snapshot("one"))
    client = client_factory()
    for type_url, names in ((TYPE_CLUSTER, ()), (TYPE_LISTENER, ()), (TYPE_ROUTE, ["routes"])):
        client.request(type_url, names)
        client.ack(client.receive(), names)
    assert server.wait_in_sync(["envoy-1"], timeout=5)
    changed = dict(snapshot("two", listeners={"http": listener("http", port=10001)}).resources)
    changed[TYPE_CLUSTER] = {"backend": cluster("backend"), "extra": cluster("extra")}
    server.set_snapshot("envoy-1", Snapshot(changed))
    cds = client.receive()
    assert cds.type_url == TYPE_CLUSTER
    # Listeners and routes may name the new clusters: they wait until Envoy has ACKed (added) them.
    client.nothing_arrives()
    client.ack(cds)
    assert [client.receive().type_url for _ in range(2)] == [TYPE_LISTENER, TYPE_ROUTE]


def test_after_a_cluster_change_the_next_eds_request_is_answered_even_if_unchanged(server, client_factory):
    eds = {"backend": {"cluster_name": "backend", "endpoints": []}}
    server.set_snapshot("envoy-1", Snapshot({TYPE_CLUSTER: {"backend": cluster("backend")}, TYPE_ENDPOINT: eds}))
    client = client_factory()
    client.request(TYPE_CLUSTER)
    cds = client.receive()
    client.request(TYPE_ENDPOINT, ["backend"])
    client.ack(cds)
    first_eds = client.receive()
    client.ack(first_eds, ["backend"])
    client.nothing_arrives()
    changed = dict(cluster("backend"), connect_timeout="2s")
    server.set_snapshot("envoy-1", Snapshot({TYPE_CLUSTER: {"backend": changed}, TYPE_ENDPOINT: eds}))
    assert client.receive().type_url == TYPE_CLUSTER
    client.ack(first_eds, ["backend"])  # the warming cluster's re-request: same names, same nonce
    again = client.receive()
    assert (again.type_url, again.version_info) == (TYPE_ENDPOINT, first_eds.version_info)
    client.ack(again, ["backend"])
    client.nothing_arrives()


def test_nack_is_recorded_and_the_rejected_version_is_not_resent(server, client_factory):
    good = snapshot()
    server.set_snapshot("envoy-1", good)
    client = client_factory()
    client.request(TYPE_LISTENER)
    first = client.receive()
    client.ack(first)
    assert until(server, lambda s: s.acked.get(TYPE_LISTENER) == first.version_info)
    server.set_snapshot("envoy-1", snapshot(listeners={"http": listener("http", port=10001)}))
    bad = client.receive()
    client.request(TYPE_LISTENER, version=first.version_info, nonce=bad.nonce, error="malformed IP address")
    client.nothing_arrives()
    status = server.node_status("envoy-1")
    assert status.nacked == {TYPE_LISTENER: (bad.version_info, "malformed IP address")}
    assert status.acked[TYPE_LISTENER] == first.version_info
    assert not status.in_sync
    # A later good version that is ACKed clears the NACK.
    server.set_snapshot("envoy-1", snapshot(listeners={"http": listener("http", port=10002)}))
    fixed = client.receive()
    client.ack(fixed)
    assert until(server, lambda s: s.acked.get(TYPE_LISTENER) == fixed.version_info and not s.nacked)


def test_stale_nonce_is_ignored(server, client_factory):
    server.set_snapshot("envoy-1", snapshot())
    client = client_factory()
    client.request(TYPE_LISTENER)
    first = client.receive()
    server.set_snapshot("envoy-1", snapshot(listeners={"http": listener("http", port=10001)}))
    second = client.receive()
    client.ack(first)  # answers a superseded response
    client.nothing_arrives()
    assert TYPE_LISTENER not in server.node_status("envoy-1").acked
    client.ack(second)
    assert until(server, lambda s: s.acked.get(TYPE_LISTENER) == second.version_info)


def test_reconnect_resyncs_and_the_newest_stream_wins(server, client_factory):
    server.set_snapshot("envoy-1", snapshot())
    old = client_factory()
    old.request(TYPE_LISTENER)
    old.ack(old.receive())
    new = client_factory()
    new.request(TYPE_LISTENER, version="whatever-it-had")
    response = new.receive()
    assert response.version_info == snapshot().version(TYPE_LISTENER)
    assert server.node_status("envoy-1").acked == {}  # the new stream has not ACKed yet
    new.ack(response)
    old.close()
    assert until(server, lambda s: s.connected and s.acked.get(TYPE_LISTENER) == response.version_info)


def test_disconnect_is_reported(server, client_factory):
    server.set_snapshot("envoy-1", snapshot())
    client = client_factory()
    client.request(TYPE_CLUSTER)
    client.receive()
    assert server.node_status("envoy-1").connected
    client.close()
    assert until(server, lambda s: not s.connected)


def test_node_that_never_connected_reports_disconnected(server):
    server.set_snapshot("ghost", snapshot())
    status = server.node_status("ghost")
    assert not status.connected and not status.in_sync
    assert server.wait_in_sync(["ghost"], timeout=0.05) is False


def test_stop_ends_open_streams_and_leaves_no_stream_threads(client_factory, server):
    server.set_snapshot("envoy-1", snapshot())
    client = client_factory()
    client.request(TYPE_CLUSTER)
    client.receive()
    server.stop(0.5)
    for thread in threading.enumerate():
        if thread.name.startswith("waypost-xds"):
            thread.join(timeout=2)
            assert not thread.is_alive(), thread.name


def test_the_encoding_cache_is_bounded_in_bytes_and_keeps_what_is_served(monkeypatch):
    """A large resource re-encoded on every change must not pile up in the encoding cache version after
    version; what a node is served stays encoded either way."""
    from waypost.xds import server as xds_server

    monkeypatch.setattr(xds_server, "_CACHE_BYTES", 64 << 10)
    srv = XdsServer("127.0.0.1", 0)
    big = "x" * 8000
    for version in range(40):
        versions = srv.set_snapshot("node", Snapshot({TYPE_ROUTE: {"main": route("main", f"{big}{version}")}}))
        assert versions[TYPE_ROUTE]
    assert 0 < srv._cache_bytes <= 64 << 10
    assert len(srv._cache) < 40
    assert sum(packed.ByteSize() for packed in srv._cache.values()) == srv._cache_bytes
    served = srv._snapshots["node"].resources[TYPE_ROUTE]["main"]
    assert f"{big}39".encode() in served.value  # the newest version is the one served


def chained_listener(chains: int, marker: str = "") -> dict:
    """A listener with one HCM chain per port 1000.. (each its own dict), like a waypoint's main listener."""
    base = listener("main")
    template = base["filter_chains"][0]
    out = []
    for i in range(chains):
        hcm = dict(template["filters"][0]["typed_config"], stat_prefix=f"chain{i}{marker}")
        out.append({"name": f"c{i}", "filter_chain_match": {"destination_port": 1000 + i},
                    "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]})
    return {**base, "filter_chains": out}


def decoded(packed) -> object:
    msg = message_class(TYPE_LISTENER)()
    packed.Unpack(msg)
    return msg


def test_a_listener_is_encoded_chain_by_chain_and_reuses_the_unchanged_chains():
    """One chain of a big listener changes (a policy edit): the others keep their bytes; the result decodes to
    the same message as encoding the whole dict, and its version is the snapshot's."""
    srv = XdsServer("127.0.0.1", 0)
    first = chained_listener(50)
    srv.set_snapshot("node", Snapshot({TYPE_LISTENER: {"main": first}}))
    served = srv._snapshots["node"].resources[TYPE_LISTENER]["main"]
    assert decoded(served) == decoded(encode_resource(TYPE_LISTENER, first))

    changed = chained_listener(1, "-edited")["filter_chains"][0]
    second = {**first, "filter_chains": [changed, *first["filter_chains"][1:]]}  # chains 1..49: the same dicts
    snap = Snapshot({TYPE_LISTENER: {"main": second}})
    versions = srv.set_snapshot("node", snap)
    reencoded = srv._snapshots["node"].resources[TYPE_LISTENER]["main"]
    assert decoded(reencoded) == decoded(encode_resource(TYPE_LISTENER, second))
    assert versions[TYPE_LISTENER] == snap.version(TYPE_LISTENER) != Snapshot({TYPE_LISTENER: {"main": first}}).version(TYPE_LISTENER)
    # Bytes equal to a from-scratch encoding of the same listener on a fresh server (the layout is deterministic).
    fresh = XdsServer("127.0.0.1", 0)
    fresh.set_snapshot("node", Snapshot({TYPE_LISTENER: {"main": second}}))
    assert fresh._snapshots["node"].resources[TYPE_LISTENER]["main"].value == reencoded.value
    # Equal content in new dicts gives the same version (the digest is of content, not identity).
    assert Snapshot({TYPE_LISTENER: {"main": chained_listener(50)}}).version(TYPE_LISTENER) == Snapshot({TYPE_LISTENER: {"main": first}}).version(TYPE_LISTENER)


def test_a_broken_filter_chain_names_the_listener_and_the_chain():
    srv = XdsServer("127.0.0.1", 0)
    bad = chained_listener(3)
    bad["filter_chains"][1] = {**bad["filter_chains"][1], "filter_chain_match": {"destination_port": "not a port"}}
    with pytest.raises(EncodeError) as info:
        srv.set_snapshot("node", Snapshot({TYPE_LISTENER: {"main": bad}}))
    assert info.value.type_url == TYPE_LISTENER and info.value.name == "main"
    assert "filter chain 'c1'" in info.value.message
