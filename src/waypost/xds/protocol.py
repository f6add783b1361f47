"""The State-of-the-World ADS protocol for one stream, without I/O: requests and snapshots in, responses out.

Rules from Envoy's "xDS REST and gRPC protocol" (https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol):
a request whose `response_nonce` is the last one sent for its type ACKs (or, with `error_detail`, NACKs) that
response; an older nonce is stale and ignored. Clusters and listeners are wildcard subscriptions, every
other type is subscribed by name. The caller serialises calls (one thread per stream).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from waypost.xds.types import PUSH_ORDER, TYPE_CLUSTER, TYPE_ENDPOINT, TYPE_LISTENER, TYPE_ROUTE, WILDCARD_TYPES, short_name

HELD_FOR_CLUSTERS = (TYPE_LISTENER, TYPE_ROUTE)  # they name clusters; secrets are not held (clusters warm on them)

_log = logging.getLogger("waypost.xds")


@dataclass(frozen=True)
class EncodedSnapshot:
    """A snapshot in wire form: per type, its version and its packed resources by name."""

    versions: Mapping[str, str]
    resources: Mapping[str, Mapping[str, any_pb2.Any]]


@dataclass
class _TypeState:
    requested: bool = False
    names: frozenset[str] = frozenset()  # named types: resource_names of the latest request
    nonce: str = ""  # of the last response sent
    sent_version: str | None = None  # None: nothing sent on this stream yet
    sent_names: frozenset[str] | None = None
    answer_next: bool = False  # answer the next request even if nothing changed (see cluster warming)
    sent: dict[str, any_pb2.Any] = field(default_factory=dict)  # named types: what this stream last sent per name


@dataclass
class StreamProtocol:
    """What one Envoy stream has asked for, been sent, and accepted."""

    node_id: str
    new_nonce: Callable[[], str]
    types: dict[str, _TypeState] = field(default_factory=dict)
    acked: dict[str, str] = field(default_factory=dict)  # type_url -> version
    nacked: dict[str, tuple[str, str]] = field(default_factory=dict)  # type_url -> (version, message)
    clusters_pending: bool = False  # a CDS push not yet ACKed/NACKed: listeners and routes wait for it

    def on_request(
        self, request: discovery_pb2.DiscoveryRequest, snapshot: EncodedSnapshot | None
    ) -> list[discovery_pb2.DiscoveryResponse]:
        type_url = request.type_url
        state = self.types.setdefault(type_url, _TypeState())
        if request.response_nonce:
            if request.response_nonce != state.nonce:
                if request.HasField("error_detail"):
                    state.sent = {}  # a superseded response was rejected: resend everything on the next push
                return []  # stale: answers a response that a newer one superseded; Envoy answers that one too
            if request.HasField("error_detail"):
                message = request.error_detail.message
                self.nacked[type_url] = (state.sent_version or "", message)
                state.sent = {}  # Envoy kept its old resources: the next answer sends every subscribed one again
                _log.warning("node %s rejected %s version %s: %s", self.node_id, short_name(type_url),
                             state.sent_version, message)
            else:
                self.acked[type_url] = state.sent_version or ""
                self.nacked.pop(type_url, None)
        state.requested = True
        held: list[discovery_pb2.DiscoveryResponse] = []
        if type_url == TYPE_CLUSTER and request.response_nonce and self.clusters_pending:
            # The clusters are in place (Envoy ACKs CDS once new clusters warmed; a NACK keeps the old ones):
            # now the listeners and routes that may name them.
            self.clusters_pending = False
            for held_type in HELD_FOR_CLUSTERS:
                if held_type in self.types and self.types[held_type].requested:
                    response = self._response(held_type, snapshot, initial=False, push=True)
                    if response is not None:
                        held.append(response)
        if type_url not in WILDCARD_TYPES:
            state.names = frozenset(request.resource_names)
        # A request without a nonce opens the subscription (or reopens it after a reconnect): answer it.
        response = self._response(type_url, snapshot, initial=not request.response_nonce)
        return ([response] if response is not None else []) + held

    def on_snapshot(self, snapshot: EncodedSnapshot) -> list[discovery_pb2.DiscoveryResponse]:
        """Responses for every subscribed type that changed, clusters first (make before break).

        While a cluster push is unacknowledged, listeners and routes are held back and sent with the CDS
        ACK: a route naming a cluster Envoy has not finished adding answers 500 `cluster_not_found` (seen
        when a route switched to a backend whose cluster the previous change had removed)."""
        responses = []
        for type_url in PUSH_ORDER:
            if type_url in self.types and self.types[type_url].requested:
                if type_url in HELD_FOR_CLUSTERS and self.clusters_pending:
                    continue  # sent when the clusters are ACKed (on_request)
                response = self._response(type_url, snapshot, initial=False, push=True)
                if response is not None:
                    responses.append(response)
                    if type_url == TYPE_CLUSTER:
                        self.clusters_pending = True
        return responses

    def subscribed(self, type_url: str) -> bool:
        if type_url in WILDCARD_TYPES:
            return True  # Envoy always subscribes to every cluster and listener
        state = self.types.get(type_url)
        return state is not None and state.requested and bool(state.names)

    def in_sync(self, snapshot: EncodedSnapshot) -> bool:
        """Every subscribed type with resources has been ACKed at the snapshot's version."""
        return all(
            self.acked.get(type_url) == version
            for type_url, version in snapshot.versions.items()
            if version and self.subscribed(type_url)
        )

    def _response(
        self, type_url: str, snapshot: EncodedSnapshot | None, *, initial: bool, push: bool = False
    ) -> discovery_pb2.DiscoveryResponse | None:
        if snapshot is None:
            return None  # nothing to serve yet; the snapshot's arrival will push
        state = self.types[type_url]
        version = snapshot.versions.get(type_url, "")
        available = snapshot.resources.get(type_url, {})
        if type_url in WILDCARD_TYPES:
            names = None
            # Answer the first request even when empty: Envoy's initialization waits for CDS and LDS.
            if not initial and state.sent_version == version:
                return None
            chosen = list(available.values())
        else:
            names = state.names
            if state.sent_version is None and not available:
                return None
            unchanged = state.sent_version == version and state.sent_names == names
            if unchanged and not initial and not state.answer_next:
                return None
            # Names the snapshot lacks are left out rather than waited for, so the stream never blocks.
            wanted = [name for name in sorted(names) if name in available]
            if push and not state.answer_next and state.sent_names == names:
                # A new snapshot for an unchanged subscription: only the resources that differ from what this
                # stream sent. Envoy updates the named resources a SotW response carries and keeps the others
                # (xDS protocol: only Listener and Cluster responses must hold the whole state), so a waypoint
                # with 1000 RouteConfigurations is not sent (and does not parse) 1000 for one route change.
                changed = [name for name in wanted if not _same(state.sent.get(name), available[name])]
                if changed:
                    wanted = changed
            chosen = [available[name] for name in wanted]
            if push and state.sent_names == names:
                state.sent.update(zip(wanted, chosen))
            else:
                state.sent = dict(zip(wanted, chosen))
        state.nonce = self.new_nonce()
        state.sent_version = version
        state.sent_names = names
        state.answer_next = False
        if type_url == TYPE_CLUSTER and TYPE_ENDPOINT in self.types:
            # A changed cluster warms as a new instance and re-requests its endpoints with the same names;
            # its CDS ACK waits until it warmed. Unanswered, that takes initial_fetch_timeout (15 s). Istio
            # forces the EDS answer the same way (pilot/pkg/model "WarmingDependencies"; envoy#13009).
            self.types[TYPE_ENDPOINT].answer_next = True
        _log.debug("node %s: sending %s version %s (%d resources, nonce %s)", self.node_id,
                   short_name(type_url), version, len(chosen), state.nonce)
        return discovery_pb2.DiscoveryResponse(
            version_info=version, resources=chosen, type_url=type_url, nonce=state.nonce
        )


def _same(sent: any_pb2.Any | None, current: any_pb2.Any) -> bool:
    # Encoded resources are cached by content digest, so an unchanged one is usually the same object.
    return sent is not None and (sent is current or sent == current)
