"""A State-of-the-World ADS server: hands out per-node snapshots to Envoy and tracks ACK/NACK.

Protocol rules follow Envoy's "xDS REST and gRPC protocol" document
(https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol); design as in spec/envoy-dataplane.md §4.
The protocol rules live in `protocol.py`; this module does the I/O and the bookkeeping across streams.
Threads: gRPC runs each stream's response generator on a pool thread; a per-stream reader thread turns
Envoy's requests into queue items, and `set_snapshot` adds "push" items to the same queue, so one thread
drives each stream's protocol and responses leave in the order they were decided.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from waypost.xds.codec import EncodeError, encode_chain, encode_listener, encode_named
from waypost.xds.snapshot import Snapshot, chain_parts, content_digest, listener_digest, resource_digest, type_version
from waypost.xds.protocol import EncodedSnapshot, StreamProtocol
from waypost.xds.types import PUSH_ORDER, TYPE_LISTENER

_log = logging.getLogger("waypost.xds")

_CLOSED = object()  # queue item: the stream ended (client gone, or server stopping)
_PUSH = object()  # queue item: the node's snapshot changed
_CACHE_SIZE = 65536  # encoded resources kept across snapshots (at most this many ...)
# ... and at most this many bytes of them. A count alone let one multi-megabyte listener (a waypoint's
# main_internal, re-encoded on every policy change) pile up version after version: ~2 MB more resident
# per change at 1000 Services. Resources a node is served stay referenced by its encoding regardless.
_CACHE_BYTES = 16 << 20  # about two versions of that listener: enough to go back one change without re-encoding


@dataclass(frozen=True)
class NodeStatus:
    node_id: str
    connected: bool
    acked: Mapping[str, str]  # type_url -> last version the Envoy ACKed
    nacked: Mapping[str, tuple[str, str]]  # type_url -> (rejected version, Envoy's message)
    in_sync: bool


@dataclass(eq=False)
class _Stream:
    seq: int
    queue: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    protocol: StreamProtocol | None = None  # set by the first request, which names the node

    @property
    def node_id(self) -> str | None:
        return self.protocol.node_id if self.protocol else None


class _AbortStream(Exception):
    pass


class _Layout(NamedTuple):
    """Where a listener's filter chains sit in its encoding: the chain dicts, their digests (32 bytes each,
    concatenated) and the offsets of their encoded bytes in the Any's value (one more than chains)."""

    chains: tuple
    digests: bytes
    offsets: array


class _TypeEncoding(NamedTuple):
    """One resource type as served to a node: its resources by name (the very dicts), their digests and
    encodings, the type's version, and for listeners with filter chains where each chain's bytes are."""

    resources: Mapping[str, dict]
    digests: Mapping[str, str]
    packed: Mapping[str, any_pb2.Any]
    version: str
    layouts: Mapping[str, _Layout] = MappingProxyType({})


class XdsServer:
    """Serves snapshots set per node id over ADS. Never computes config.

    Each live stream occupies one of the `max_workers` pool threads; further streams are refused with
    RESOURCE_EXHAUSTED (Envoy retries with backoff) rather than queued silently.
    """

    def __init__(self, host: str, port: int = 0, *, max_workers: int = 16) -> None:
        self._host = host
        self._port = port
        self._max_workers = max_workers
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._snapshots: dict[str, EncodedSnapshot] = {}
        self._live: dict[str, list[_Stream]] = {}  # node id -> open streams, oldest first
        self._last: dict[str, _Stream] = {}  # node id -> newest stream ever (status after disconnect)
        self._open: set[_Stream] = set()  # includes streams that have not named their node yet
        self._emitted: dict[str, NodeStatus] = {}
        self._listeners: list[Callable[[NodeStatus], None]] = []
        self._cache: OrderedDict[tuple[str, str, str], any_pb2.Any] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._cache_bytes = 0  # the encoded size of what `_cache` holds
        # node -> type_url -> the resources served now, with their digests and encodings. A resource that is
        # the same object in the next snapshot keeps its digest and encoding: hashing the canonical JSON of
        # every resource on every push (a waypoint's main listener is megabytes) was most of a push's cost,
        # and a type whose resources are all the same objects keeps its version without a pass per resource
        # through the encoding cache. The snapshot's dicts are never modified once handed over, and holding
        # them keeps their ids valid.
        self._digests: dict[str, dict[str, _TypeEncoding]] = {}  # node -> type_url -> what it was served
        self._seq = itertools.count(1)
        self._nonces = itertools.count(1)
        self._server: grpc.Server | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopped = False

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> int:
        """Bind host:port (0 = ephemeral) and serve; returns the bound port."""
        if self._server is not None:
            raise RuntimeError("XdsServer.start() called twice")
        self._executor = ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="waypost-xds")
        self._server = grpc.server(
            self._executor,
            maximum_concurrent_rpcs=self._max_workers,
            options=[
                # gRPC sets SO_REUSEPORT by default; two servers sharing a port would split Envoys between them.
                ("grpc.so_reuseport", 0),
                # Notice a vanished Envoy (e.g. SIGKILL without FIN) so its stream and thread are freed.
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.max_pings_without_data", 0),
                # Accept Envoy's own HTTP/2 keepalive (`connection_keepalive` on the xDS cluster, as Istio's
                # bootstrap sets): by default gRPC answers pings more often than every 5 min with GOAWAY
                # too_many_pings, and Envoy would reconnect every few pings (seen with a 6 s interval).
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ],
        )
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Servicer(self), self._server)
        host = f"[{self._host}]" if ":" in self._host and not self._host.startswith("[") else self._host
        bound = self._server.add_insecure_port(f"{host}:{self._port}")
        if not bound:  # older grpcio reports a failed bind as port 0 instead of raising
            raise OSError(f"cannot bind xDS server to {host}:{self._port}")
        self._server.start()
        _stop_at_exit(self)
        _log.info("xDS server listening on %s:%d", host, bound)
        return bound

    def stop(self, grace: float | None = 0.5) -> None:
        """Stop serving. Ends every stream first, so no pool thread stays blocked on its queue."""
        with self._lock:
            self._stopped = True
            streams = list(self._open)
        for stream in streams:
            stream.queue.put(_CLOSED)
        if self._server is not None:
            self._server.stop(grace).wait(timeout=(grace or 0) + 2)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        with self._cond:  # bounded: a stream ends at its next queue read, which _CLOSED makes immediate
            self._cond.wait_for(lambda: not self._open, timeout=2)

    # --- configuration ---------------------------------------------------------------------------

    def set_snapshot(self, node_id: str, snapshot: Snapshot) -> Mapping[str, str]:
        """Store the node's snapshot and push changed types; returns its version per type (as
        `Snapshot.version` computes them). Raises EncodeError before changing anything."""
        digests: dict[str, _TypeEncoding] = {}
        encoded = self._encode(snapshot, self._digests.get(node_id, {}), digests)
        with self._lock:
            previous = self._snapshots.get(node_id)
            self._snapshots[node_id] = encoded
            self._digests[node_id] = digests
            streams = list(self._live.get(node_id, ()))
        if previous is None or previous.versions != encoded.versions:
            for stream in streams:
                stream.queue.put(_PUSH)
        self._notify(node_id)
        return encoded.versions

    def _encode(
        self, snapshot: Snapshot, known: Mapping[str, _TypeEncoding] | None = None, out: dict[str, _TypeEncoding] | None = None,
    ) -> EncodedSnapshot:
        """The snapshot encoded, reusing from `known` (what the node was served) the digest and encoding of
        every resource that is the very same object, and a whole type's version when all of its are."""
        versions: dict[str, str] = {}
        resources: dict[str, Mapping[str, any_pb2.Any]] = {}
        for type_url, named in snapshot.resources.items():
            if type_url not in PUSH_ORDER:
                raise EncodeError(type_url, "", f"unsupported resource type; serving only {', '.join(PUSH_ORDER)}")
            before = known.get(type_url) if known else None
            if before is not None and len(before.resources) == len(named) and all(named.get(n) is r for n, r in before.resources.items()):
                encoding = before
            else:
                encoding = self._encode_type(type_url, named, before)
            if out is not None:
                out[type_url] = encoding
            versions[type_url] = encoding.version
            resources[type_url] = encoding.packed
        return EncodedSnapshot(MappingProxyType(versions), MappingProxyType(resources))

    def _encode_type(self, type_url: str, named: Mapping[str, dict], before: _TypeEncoding | None) -> _TypeEncoding:
        packed: dict[str, any_pb2.Any] = {}
        digests: dict[str, str] = {}
        layouts: dict[str, _Layout] = {}
        for name in sorted(named):
            resource = named[name]
            if before is not None and before.resources.get(name) is resource:
                digest, packed[name] = before.digests[name], before.packed[name]
                if name in before.layouts:
                    layouts[name] = before.layouts[name]
            elif type_url == TYPE_LISTENER and (parts := chain_parts(resource)) is not None:
                digest, packed[name], layouts[name] = self._encode_listener(name, parts, before)
            else:
                try:
                    digest = resource_digest(resource)
                except (TypeError, ValueError) as exc:
                    raise EncodeError(type_url, name, f"not JSON-representable: {exc}") from exc
                packed[name] = self._cached_encode(type_url, name, digest, resource)
            digests[name] = digest
        # `named` is the snapshot's own dict, never modified once handed over (see `_digests`): kept, not copied.
        return _TypeEncoding(named, digests, MappingProxyType(packed), type_version(digests.items()), MappingProxyType(layouts))

    @staticmethod
    def _encode_listener(name: str, parts: tuple[dict, Sequence[dict]], before: _TypeEncoding | None) -> tuple[str, any_pb2.Any, _Layout]:
        """A listener with filter chains, chain by chain: a chain that is the very dict the node was last served
        under this listener name keeps its digest and its bytes (cut from that encoding); only the others are
        hashed and encoded. A policy edit at 1000 Services changes one chain of the waypoint's ~7 MB main
        listener, so this is most of what made its push take a third of a second. Not kept in the encoding
        cache: going back to an earlier version re-encodes just the chains that differ."""
        rest, chains = parts

        def digest_of(value: object) -> bytes:
            try:
                return content_digest(value)
            except (TypeError, ValueError) as exc:
                raise EncodeError(TYPE_LISTENER, name, f"not JSON-representable: {exc}") from exc

        previous = before.layouts.get(name) if before is not None else None
        old = before.packed[name].value if previous is not None else b""
        at = {id(chain): i for i, chain in enumerate(previous.chains)} if previous is not None else {}
        rest_digest = digest_of(rest)
        chain_digests: list[bytes] = []
        pieces: list[bytes] = []
        for chain in chains:
            i = at.get(id(chain))
            if i is not None and previous.chains[i] is chain:
                chain_digests.append(previous.digests[32 * i:32 * i + 32])
                pieces.append(old[previous.offsets[i]:previous.offsets[i + 1]])
            else:
                chain_digests.append(digest_of(chain))
                pieces.append(encode_chain(name, chain))
        packed = encode_listener(name, rest, pieces)
        offsets = array("I", [len(packed.value) - sum(len(p) for p in pieces)])
        for piece in pieces:
            offsets.append(offsets[-1] + len(piece))
        return listener_digest(rest_digest, chain_digests), packed, _Layout(tuple(chains), b"".join(chain_digests), offsets)

    def _cached_encode(self, type_url: str, name: str, digest: str, resource: dict) -> any_pb2.Any:
        key = (type_url, name, digest)
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        packed = encode_named(type_url, name, resource)
        size = packed.ByteSize()
        with self._cache_lock:
            if key not in self._cache:
                self._cache[key] = packed
                self._cache_bytes += size
            while self._cache and (len(self._cache) > _CACHE_SIZE or self._cache_bytes > _CACHE_BYTES):
                _, dropped = self._cache.popitem(last=False)
                self._cache_bytes -= dropped.ByteSize()
        return packed

    # --- status ----------------------------------------------------------------------------------

    def node_status(self, node_id: str) -> NodeStatus:
        with self._lock:
            return self._status(node_id)

    def wait_in_sync(self, node_ids: Iterable[str], timeout: float) -> bool:
        """Block until every node is in sync (True) or the timeout passes (False)."""
        ids = list(node_ids)
        with self._cond:
            return self._cond.wait_for(lambda: all(self._status(n).in_sync for n in ids), timeout)

    def add_listener(self, callback: Callable[[NodeStatus], None]) -> None:
        """Call `callback(status)` when a node's status changes.

        Called from server threads (and from set_snapshot's caller), possibly from two threads at once; a
        listener that needs the newest state should re-read `node_status`. Exceptions are logged.
        """
        with self._lock:
            self._listeners.append(callback)

    def _status(self, node_id: str) -> NodeStatus:
        live = self._live.get(node_id)
        stream = live[-1] if live else self._last.get(node_id)  # the newest stream wins
        if stream is None:
            return NodeStatus(node_id, False, MappingProxyType({}), MappingProxyType({}), False)
        protocol = stream.protocol
        assert protocol is not None  # only streams that named their node are indexed by node
        encoded = self._snapshots.get(node_id)
        in_sync = bool(live) and encoded is not None and protocol.in_sync(encoded)
        return NodeStatus(
            node_id, bool(live), MappingProxyType(dict(protocol.acked)), MappingProxyType(dict(protocol.nacked)), in_sync
        )

    def _notify(self, node_id: str | None) -> None:
        if node_id is None:
            return
        with self._lock:
            status = self._status(node_id)
            self._cond.notify_all()
            if self._emitted.get(node_id) == status:
                return
            self._emitted[node_id] = status
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback(status)
            except Exception:
                _log.exception("xDS status listener failed for node %s", node_id)

    # --- streams ---------------------------------------------------------------------------------

    def _serve(self, requests: Iterator[discovery_pb2.DiscoveryRequest], context: grpc.ServicerContext):
        stream = _Stream(next(self._seq))
        with self._lock:
            if self._stopped:
                context.abort(grpc.StatusCode.UNAVAILABLE, "xDS server is stopping")
            self._open.add(stream)
        if not context.add_callback(lambda: stream.queue.put(_CLOSED)):
            stream.queue.put(_CLOSED)
        reader = threading.Thread(
            target=_read, args=(requests, stream.queue), name=f"waypost-xds-reader-{stream.seq}", daemon=True
        )
        reader.start()
        return self._respond(stream, context)

    def _respond(self, stream: _Stream, context: grpc.ServicerContext) -> Iterator[discovery_pb2.DiscoveryResponse]:
        try:
            while True:
                item = stream.queue.get()
                if item is _CLOSED:
                    return
                with self._lock:
                    if item is _PUSH:
                        responses = stream.protocol.on_snapshot(self._snapshots[stream.node_id])
                    else:
                        try:
                            responses = self._on_request(stream, item)
                        except _AbortStream as exc:
                            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                self._notify(stream.node_id)
                yield from responses
        finally:
            self._close(stream)

    def _close(self, stream: _Stream) -> None:
        with self._lock:
            self._open.discard(stream)
            self._cond.notify_all()
            live = self._live.get(stream.node_id or "", [])
            if stream in live:
                live.remove(stream)
                _log.info("node %s disconnected (stream %d)", stream.node_id, stream.seq)
        self._notify(stream.node_id)

    def _on_request(self, stream: _Stream, request: discovery_pb2.DiscoveryRequest) -> list:
        if stream.protocol is None:
            # set_node_on_first_message_only: only the first request is guaranteed to carry the node.
            if not request.node.id:
                raise _AbortStream("the first DiscoveryRequest on a stream must carry node.id")
            stream.protocol = StreamProtocol(request.node.id, self._new_nonce)
            self._live.setdefault(request.node.id, []).append(stream)
            self._last[request.node.id] = stream
            _log.info("node %s connected (stream %d)", request.node.id, stream.seq)
        return stream.protocol.on_request(request, self._snapshots.get(stream.protocol.node_id))

    def _new_nonce(self) -> str:
        return str(next(self._nonces))


def _stop_at_exit(server: XdsServer) -> None:
    # gRPC runs each stream's generator on a ThreadPoolExecutor thread, and at exit the interpreter joins
    # those threads *before* `atexit` handlers run, so a forgotten stop() would hang the exit on an idle
    # stream. concurrent.futures itself uses this hook for the same reason; it has been in CPython since 3.9.
    register = getattr(threading, "_register_atexit", None)
    if register is None:
        return
    ref = weakref.ref(server)

    def stop() -> None:
        live = ref()
        if live is not None:
            live.stop(0)

    try:
        register(stop)
    except RuntimeError:  # the interpreter is already shutting down
        pass


def _read(requests: Iterator[discovery_pb2.DiscoveryRequest], inbox: queue.SimpleQueue) -> None:
    try:
        for request in requests:
            inbox.put(request)
    except Exception as exc:  # the RPC was cancelled or the connection dropped: the stream is over either way
        _log.debug("xDS stream reader ended: %s", exc)
    finally:
        inbox.put(_CLOSED)


class _Servicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    # DeltaAggregatedResources is left to the base class, which answers UNIMPLEMENTED.
    def __init__(self, server: XdsServer) -> None:
        self._server = server

    def StreamAggregatedResources(self, request_iterator, context):  # noqa: N802 (gRPC's name)
        return self._server._serve(request_iterator, context)
