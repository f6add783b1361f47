"""The resolved mesh as immutable values: workloads, services, waypoints, routes and status conditions."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from .addresses import AddressPlan

TRUST_DOMAIN = "cluster.local"
CLUSTER_DOMAIN = "cluster.local"

# Port protocols as Istio names them (pilot/pkg/model/protocol); UNKNOWN means "sniff HTTP vs TCP".
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-Web"})
Protocol = str


def spiffe_id(namespace: str, service_account: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


def service_key(kind: str, namespace: str, name: str) -> str:
    """Services are keyed `ns/name`; ServiceEntries `ns/ServiceEntry/name` (the two kinds may share names)."""
    return f"{namespace}/{name}" if kind == "Service" else f"{namespace}/{kind}/{name}"


def entry_host_key(namespace: str, name: str, hosts: list[str] | tuple[str, ...], index: int) -> str:
    """The key of a ServiceEntry's index-th host: one mesh service per host (Istio's model), the first keyed
    like the entry itself, the others `ns/ServiceEntry/name/host`."""
    key = service_key("ServiceEntry", namespace, name)
    return key if index == 0 else f"{key}/{hosts[index]}"


def service_fqdn(namespace: str, name: str) -> str:
    return f"{name}.{namespace}.svc.{CLUSTER_DOMAIN}"


@dataclass(frozen=True)
class Condition:
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "status": self.status, "reason": self.reason, "message": self.message}


@dataclass(frozen=True, order=True)
class WaypointRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Waypoint:
    namespace: str
    name: str
    address: str
    service_account: str
    traffic_for: str  # service | workload | all | none
    ready: bool

    @property
    def ref(self) -> WaypointRef:
        return WaypointRef(self.namespace, self.name)

    @property
    def identity(self) -> str:
        return spiffe_id(self.namespace, self.service_account)

    @property
    def proxy_id(self) -> str:
        """The Envoy node id of this waypoint."""
        return f"waypoint~{self.namespace}~{self.name}"

    @property
    def accepts_service_traffic(self) -> bool:
        return self.traffic_for in ("service", "all")

    @property
    def accepts_workload_traffic(self) -> bool:
        return self.traffic_for in ("workload", "all")


@dataclass(frozen=True)
class WorkloadPort:
    name: str
    port: int


@dataclass(frozen=True)
class Workload:
    kind: Literal["Pod", "WorkloadEntry"]
    namespace: str
    name: str
    owner: str  # Deployment name, or "" for bare Pods and WorkloadEntries
    labels: tuple[tuple[str, str], ...]
    service_account: str
    address: str  # the pod IP: what clients dial and the source the mesh identifies it by
    app_address: str  # where the application listens (the inside address for enrolled pods)
    captured: bool  # enrolled in ambient: the ztunnel captures its traffic and speaks HBONE for it
    node: str
    ports: tuple[WorkloadPort, ...]
    image: str
    echo: str | None  # built-in echo flavor ("basic" | "advanced"), None for client-only workloads
    waypoint: WaypointRef | None = None  # workload (pod-IP) waypoint binding
    is_waypoint: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def identity(self) -> str:
        return spiffe_id(self.namespace, self.service_account)

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    def port_named(self, name: str) -> int | None:
        for p in self.ports:
            if p.name == name:
                return p.port
        return None


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    target_port: int | str
    protocol: Protocol

    @property
    def is_http(self) -> bool:
        return self.protocol in HTTP_PROTOCOLS


@dataclass(frozen=True)
class Endpoint:
    workload: str  # namespace/name
    address: str  # pod IP (HBONE destination) or the WorkloadEntry address
    port: int  # resolved target port
    hbone: bool  # reachable through its node's ztunnel on address:15008
    resolve: str = ""  # "" (an IP), or STRICT_DNS / LOGICAL_DNS: `address` is a name the proxy resolves


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    vip: str
    ports: tuple[ServicePort, ...]
    waypoint: WaypointRef | None
    endpoints: tuple[tuple[int, tuple[Endpoint, ...]], ...]  # service port -> endpoints
    kind: str = "Service"  # or "ServiceEntry"
    hostname: str | None = None  # a ServiceEntry's host
    key_suffix: str = ""  # "/host" for a ServiceEntry's second and later hosts (`entry_host_key`)
    resolution: str = ""  # a ServiceEntry's resolution; DYNAMIC_DNS: the waypoint resolves each request's host

    @property
    def key(self) -> str:
        return service_key(self.kind, self.namespace, self.name) + self.key_suffix

    @property
    def fqdn(self) -> str:
        return self.hostname or service_fqdn(self.namespace, self.name)

    @property
    def dynamic_dns(self) -> bool:
        return self.resolution == "DYNAMIC_DNS"

    def endpoints_for(self, port: int) -> tuple[Endpoint, ...]:
        for p, eps in self.endpoints:
            if p == port:
                return eps
        return ()

    def port(self, number: int) -> ServicePort | None:
        for p in self.ports:
            if p.port == number:
                return p
        return None


@dataclass(frozen=True)
class HeaderOps:
    """RequestHeaderModifier / ResponseHeaderModifier: set replaces, add appends, remove deletes."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)


@dataclass(frozen=True)
class WeightedBackend:
    service: str  # FQDN of the backend Service
    port: int
    weight: int
    exists: bool  # False: that share of requests gets 500 (missing Service, bad kind, unsupported filter)
    request_headers: HeaderOps = HeaderOps()
    response_headers: HeaderOps = HeaderOps()
    subset: str = ""  # a DestinationRule subset (VirtualService destinations): its own cluster


@dataclass(frozen=True)
class ValueMatch:
    """A header or query parameter match. `how`: exact, regex, prefix, or present (any value); `invert`
    negates it (VirtualService withoutHeaders)."""

    name: str
    value: str
    regex: bool = False
    how: str = ""  # "" = exact, or regex when `regex`; else "prefix" | "present"
    invert: bool = False


@dataclass(frozen=True)
class PathRewrite:
    """ReplaceFullPath (full=True) or ReplacePrefixMatch of `matched_prefix` by `value`."""

    value: str
    full: bool
    matched_prefix: str = "/"
    literal: bool = False  # VirtualService rewrite.uri: Envoy's prefix_rewrite as written (Istio)
    pattern: str | None = None  # VirtualService uriRegexRewrite: regex `pattern` → substitution `value`


@dataclass(frozen=True)
class Redirect:
    scheme: str | None
    hostname: str | None
    port: int | None
    path: PathRewrite | None
    status_code: int
    strip_port: bool = False  # VirtualService derivePort FROM_PROTOCOL_DEFAULT


@dataclass(frozen=True)
class Mirror:
    service: str
    port: int
    per_million: int  # share of requests mirrored, in millionths
    subset: str = ""


@dataclass(frozen=True)
class Cors:
    allow_origins: tuple[str, ...]
    allow_credentials: bool
    allow_methods: tuple[str, ...]
    allow_headers: tuple[str, ...]
    expose_headers: tuple[str, ...]
    max_age: int | None
    origin_matches: tuple[ValueMatch, ...] = ()  # VirtualService allowOrigins (StringMatch), besides allow_origins
    kind: str = "HTTPRoute"  # or VirtualService
    forward_unmatched_preflights: bool = True


@dataclass(frozen=True)
class Fault:
    """VirtualService fault injection: a delay and/or an abort, each for a share of requests (millionths)."""

    delay_ms: int | None = None
    delay_per_million: int = 0
    abort_http: int | None = None
    abort_grpc: int | None = None
    abort_per_million: int = 0


@dataclass(frozen=True)
class IstioRetry:
    """A VirtualService `retries` stanza (Istio's retry.ConvertPolicy)."""

    attempts: int
    retry_on: str  # Envoy retry_on policies; "" = Istio's default ones
    codes: tuple[int, ...]
    per_try_timeout_ms: int | None
    backoff_ms: int | None
    previous_hosts: bool


@dataclass(frozen=True)
class RetrySpec:
    attempts: int
    codes: tuple[int, ...]
    backoff_ms: int | None


@dataclass(frozen=True)
class HTTPRouteEntry:
    """One match of one rule of one HTTPRoute (or GRPCRoute), in final precedence order within its port."""

    route: str  # namespace/name of the route
    rule_index: int
    rule_name: str | None
    path_type: str  # Exact | PathPrefix | RegularExpression, or Prefix (a VirtualService's plain string prefix)
    path: str
    backends: tuple[WeightedBackend, ...]
    headers: tuple[ValueMatch, ...] = ()
    query: tuple[ValueMatch, ...] = ()
    method: str | None = None
    request_headers: HeaderOps = HeaderOps()
    response_headers: HeaderOps = HeaderOps()
    redirect: Redirect | None = None
    rewrite_host: str | None = None
    rewrite_path: PathRewrite | None = None
    mirrors: tuple[Mirror, ...] = ()
    cors: Cors | None = None
    timeout_ms: int | None = None  # None: no timeouts stanza
    backend_timeout_ms: int | None = None
    retry: RetrySpec | None = None  # None: Istio's default retry policy
    direct_status: int | None = None  # answer locally (500 for an unresolvable ExtensionRef filter)
    consumer_namespace: str | None = None  # consumer route: applies only to clients in this namespace
    kind: str = "HTTPRoute"  # or GRPCRoute, VirtualService
    # VirtualService-only parts.
    case_sensitive: bool = True  # ignoreUriCase: False
    fault: Fault | None = None
    istio_retry: IstioRetry | None = None
    direct_body: str | None = None
    route_name_override: str | None = None

    @property
    def route_name(self) -> str:
        if self.route_name_override:
            return self.route_name_override
        ns, name = self.route.split("/", 1)
        return self.rule_name or f"{ns}.{name}.{self.rule_index}"


@dataclass(frozen=True)
class ServiceRoutes:
    """The HTTP routing of one service port in its waypoint.

    `consumers` hold consumer-route entries (each names its client namespace), grouped by namespace in
    `consumer_namespaces` order; `producers` apply to every other client. No producer entries: the
    default route (spec §3.5) serves the other clients.
    """

    service: str  # namespace/name
    port: int
    consumers: tuple[HTTPRouteEntry, ...]
    producers: tuple[HTTPRouteEntry, ...]
    consumer_namespaces: tuple[str, ...] = ()

    @property
    def entries(self) -> tuple[HTTPRouteEntry, ...]:
        return self.consumers + self.producers


@dataclass(frozen=True)
class L4RouteEntry:
    route: str  # namespace/name
    kind: str
    hostnames: tuple[str, ...]  # SNI matches (TLSRoute); empty = every connection
    backends: tuple[WeightedBackend, ...]


@dataclass(frozen=True)
class L4Routes:
    service: str
    port: int
    kind: str
    entries: tuple[L4RouteEntry, ...]


@dataclass(frozen=True)
class ResourceStatus:
    kind: str
    namespace: str
    name: str
    conditions: tuple[Condition, ...]
    parents: tuple[tuple[str, tuple[Condition, ...]], ...] = ()  # routes: parentRef text -> conditions


@dataclass(frozen=True)
class AuthzProvider:
    """A MeshConfig `envoyExtAuthzHttp`/`envoyExtAuthzGrpc` provider, its `service` resolved in the registry.

    `error` says why CUSTOM policies naming it cannot call it (their matching requests are then denied)."""

    name: str
    grpc: bool
    config: Any  # waypost.api.meshconfig.ExtAuthzHttp | ExtAuthzGrpc
    hostname: str = ""  # the resolved service's host (its FQDN)
    port: int = 0
    service: str | None = None  # the resolved Service/ServiceEntry key
    error: str | None = None


@dataclass(frozen=True)
class WasmModule:
    """A Wasm module a WasmPlugin/TrafficExtension names, as fetched: a local file to load, or why not."""

    url: str  # as written in the resource
    sha256: str = ""  # of the fetched bytes
    path: str = ""  # where Envoy reads it
    error: str | None = None


@dataclass(frozen=True)
class MeshSnapshot:
    """Everything a translation needs for one config version; built by `mesh.build`."""

    plan: AddressPlan
    nodes: tuple[str, ...]
    workloads: tuple[Workload, ...]
    services: tuple[Service, ...]
    waypoints: tuple[Waypoint, ...]
    routes: tuple[ServiceRoutes, ...]
    statuses: tuple[ResourceStatus, ...] = field(default=())
    l4routes: tuple[L4Routes, ...] = field(default=())
    node_addresses: tuple[tuple[str, str], ...] = field(default=())  # node -> its ztunnel's address, kept across changes
    authorization_policies: tuple = field(default=())  # api AuthorizationPolicy values, sorted by namespace/name
    request_authentications: tuple = field(default=())  # api RequestAuthentication values, sorted
    jwks_documents: tuple[tuple[str, str], ...] = field(default=())  # jwksUri -> fetched JWKS (by the local layer)
    root_namespace: str = "istio-system"
    authz_providers: tuple[AuthzProvider, ...] = field(default=())
    extensions: tuple = field(default=())  # api WasmPlugin and TrafficExtension values, sorted by namespace/name
    telemetries: tuple = field(default=())  # api Telemetry values, sorted by namespace/name
    envoy_filters: tuple = field(default=())  # api EnvoyFilter values, sorted by namespace/name
    peer_authentications: tuple = field(default=())  # api PeerAuthentication values, oldest first
    destination_rules: tuple = field(default=())  # api DestinationRule values, oldest first
    destination_rule_index: Any = field(default=None, compare=False, repr=False)  # the one build made of them
    wasm_modules: tuple[WasmModule, ...] = field(default=())  # fetched by the local layer (waypost.local.wasm)
    mesh_config: Any = None  # waypost.api.meshconfig.MeshConfig in effect (None: all defaults)
    # What `build` may reuse when it builds the next snapshot (`build(..., reuse=this)`): route rules turned
    # into entries (`routes.attach`). Not part of the model: equality, hashing and repr ignore it.
    rule_memo: Any = field(default=None, compare=False, repr=False)
    registry_memo: Any = field(default=None, compare=False, repr=False)  # build's workloads and services (build._Registry)
    status_memo: Any = field(default=None, compare=False, repr=False)  # build's policy statuses, by the objects they read

    def envoy_filters_for(self, waypoint: Waypoint) -> tuple:
        """The EnvoyFilters whose patches apply to `waypoint` (targetRefs to its Gateway, or to GatewayClass
        istio-waypoint from the root namespace)."""
        return tuple(f for f in self.envoy_filters if f.selects_waypoint(waypoint.namespace, waypoint.name, self.root_namespace))

    def ztunnel_address(self, node: str) -> str:
        """The address `build` allocated to `node`'s ztunnel (stable while the node exists)."""
        return next(address for name, address in self.node_addresses if name == node)

    # Lookups by key. The snapshot is immutable, so each index is built once, on first use, and kept on the
    # instance (cached_property writes the instance dict, which a frozen dataclass allows); they are not
    # fields, so equality, hashing and `dataclasses.replace` ignore them. Translation calls these in loops
    # over every service and endpoint: linear scans made it O(services²). As the scans did, the first of
    # equal keys wins.

    # index -> the field it is computed from (and nothing else).
    _INDEX_SOURCES = {
        "_services_by_key": "services", "_services_by_fqdn": "services", "services_of_waypoint": "services",
        "_waypoints_by_ref": "waypoints", "_workloads_by_key": "workloads", "_routes_by_port": "routes",
        "_l4routes_by_port": "l4routes", "_statuses_by_name": "statuses",
    }

    def inherit_indexes(self, earlier: "MeshSnapshot") -> None:
        """Takes over the indexes `earlier` has built whose field is the very same object here (`build`
        keeps an unchanged field's tuple), instead of building them again on first use."""
        mine, theirs = self.__dict__, earlier.__dict__
        for index, source in self._INDEX_SOURCES.items():
            if index in theirs and index not in mine and getattr(self, source) is getattr(earlier, source):
                mine[index] = theirs[index]

    @cached_property
    def _services_by_key(self) -> dict[str, Service]:
        return _first_by(self.services, lambda s: s.key)

    @cached_property
    def _services_by_fqdn(self) -> dict[str, Service]:
        return _first_by(self.services, lambda s: s.fqdn)

    @cached_property
    def _waypoints_by_ref(self) -> dict[WaypointRef, Waypoint]:
        return _first_by(self.waypoints, lambda w: w.ref)

    @cached_property
    def _workloads_by_key(self) -> dict[str, Workload]:
        return _first_by(self.workloads, lambda w: w.key)

    @cached_property
    def _routes_by_port(self) -> dict[tuple[str, int], ServiceRoutes]:
        return _first_by(self.routes, lambda r: (r.service, r.port))

    @cached_property
    def _l4routes_by_port(self) -> dict[tuple[str, int], L4Routes]:
        return _first_by(self.l4routes, lambda r: (r.service, r.port))

    @cached_property
    def _statuses_by_name(self) -> dict[tuple[str, str, str], ResourceStatus]:
        return _first_by(self.statuses, lambda s: (s.kind, s.namespace, s.name))

    @cached_property
    def _wasm_modules_by_url(self) -> dict[str, WasmModule]:
        return _first_by(self.wasm_modules, lambda m: m.url)

    @cached_property
    def _authz_providers_by_name(self) -> dict[str, AuthzProvider]:
        return _first_by(self.authz_providers, lambda p: p.name)

    @cached_property
    def services_of_waypoint(self) -> dict[WaypointRef, tuple[Service, ...]]:
        """Services bound to each waypoint, in snapshot order."""
        out: dict[WaypointRef, list[Service]] = {}
        for s in self.services:
            if s.waypoint is not None:
                out.setdefault(s.waypoint, []).append(s)
        return {ref: tuple(items) for ref, items in out.items()}

    @cached_property
    def policy_chains(self) -> Any:
        """AuthorizationPolicies indexed by target (`policies.TargetIndex`), for per-chain lookups."""
        from .policies import TargetIndex

        return TargetIndex(self.authorization_policies)

    @cached_property
    def authn_chains(self) -> Any:
        """RequestAuthentications indexed by target (`policies.TargetIndex`)."""
        from .policies import TargetIndex

        return TargetIndex(self.request_authentications)

    @cached_property
    def extension_chains(self) -> Any:
        """WasmPlugins/TrafficExtensions indexed by target (`policies.TargetIndex`)."""
        from .policies import TargetIndex

        return TargetIndex(self.extensions)

    def waypoint_chain(self, kind: str, waypoint: WaypointRef, service: str | None) -> tuple:
        """The policies of one waypoint chain, as `policies.for_waypoint_chain` finds them: `kind` is "authz"
        (AuthorizationPolicy), "authn" (RequestAuthentication) or "extensions" (WasmPlugin/TrafficExtension);
        `service` is the chain's service key, None for a workload chain. Keys, not values, as arguments: the
        call is cheap to remember and compare (`tracking.Recorder`)."""
        index = {"authz": self.policy_chains, "authn": self.authn_chains, "extensions": self.extension_chains}[kind]
        target = self.service(service) if service is not None else None
        if service is not None and target is None:
            raise KeyError(f"no service {service!r} in this snapshot")
        return tuple(index.chain(waypoint, target, self.root_namespace))

    def wasm_module(self, url: str) -> WasmModule:
        found = self._wasm_modules_by_url.get(url)
        return found if found is not None else WasmModule(url, error="the module has not been fetched")

    def authz_provider(self, name: str) -> AuthzProvider:
        """The provider a CUSTOM policy names; one with `error` set when it is not usable (Istio getExtAuthz)."""
        found = self._authz_providers_by_name.get(name)
        if found is not None:
            return found
        available = sorted(p.name for p in self.authz_providers)
        return AuthzProvider(name, False, None, error=f"available providers are {available} but found {name!r}")

    def service(self, key: str) -> Service | None:
        return self._services_by_key.get(key)

    def service_identity(self, key: str) -> tuple[str, str, str] | None:
        """(kind, namespace, name) of the service `key` names, None when there is none (`tracking._inputs`)."""
        found = self._services_by_key.get(key)
        return (found.kind, found.namespace, found.name) if found is not None else None

    def service_by_fqdn(self, fqdn: str) -> Service | None:
        return self._services_by_fqdn.get(fqdn)

    def waypoint(self, ref: WaypointRef | None) -> Waypoint | None:
        if ref is None:
            return None
        return self._waypoints_by_ref.get(ref)

    def workload(self, key: str) -> Workload | None:
        return self._workloads_by_key.get(key)

    def routes_for(self, service_key: str, port: int) -> ServiceRoutes | None:
        return self._routes_by_port.get((service_key, port))

    def routed_by_grpc(self, service_key: str, port: int) -> bool:
        """Whether a GRPCRoute routes this service port (Istio's request_protocol is then grpc); a narrower
        read than `routes_for`, so that a chain does not depend on every route change."""
        routes = self._routes_by_port.get((service_key, port))
        return routes is not None and any(e.kind == "GRPCRoute" for e in routes.entries)

    def port_has_fault(self, service_key: str, port: int) -> bool:
        """Whether a VirtualService injects faults on this service port (its chain then needs the fault filter)."""
        routes = self._routes_by_port.get((service_key, port))
        return routes is not None and any(e.fault is not None for e in routes.entries)

    @cached_property
    def _destination_rules(self) -> Any:
        from .destinations import DestinationRuleIndex

        made = self.destination_rule_index  # build's, when it is of these very rules
        if made is not None and made.rules is self.destination_rules and made.root == self.root_namespace:
            return made
        return DestinationRuleIndex(self.destination_rules, self.root_namespace)

    def destination_rule(self, host: str, proxy_namespace: str, service_namespace: str) -> Any:
        """The DestinationRule spec (merged as Istio merges them) a proxy in `proxy_namespace` applies to
        `host`, or None (`mesh.destinations`)."""
        return self._destination_rules.lookup(host, proxy_namespace, service_namespace)

    def l4routes_for(self, service_key: str, port: int) -> L4Routes | None:
        return self._l4routes_by_port.get((service_key, port))

    def status_of(self, kind: str, namespace: str, name: str) -> ResourceStatus | None:
        return self._statuses_by_name.get((kind, namespace, name))


def _first_by(items, key) -> dict:
    """items by key; the first of equal keys wins (as a scan in order would find it)."""
    out: dict = {}
    for item in items:
        out.setdefault(key(item), item)
    return out
