"""Predict what the proxies will do with one request, by interpreting the Envoy config they run.

`waypost x authz check` must never disagree with the data plane, so nothing here knows about
AuthorizationPolicy or Istio: the input is the compiled Envoy v3 dicts (the xDS resources, or an admin
config dump, which carries the same protos as JSON with proto3 defaults left out), and every rule is
Envoy's own:

- listeners are found by the address a connection is made to; a filter chain is chosen with Envoy's
  `filter_chain_match` precedence (destination port, destination IP, server names, transport protocol,
  application protocols, direct source IP, source type, source IP, source port; most specific first, no
  backtracking), falling back to `default_filter_chain`;
- network filters run in order: RBAC (`rbac/v3`: a policy matches when any permission and any principal
  matches; ALLOW denies unless one matches, DENY denies if one does, LOG never denies; `shadow_rules`
  never change the outcome; policies are tried in name order, as Envoy's `std::map` holds them), then
  `tcp_proxy` (optionally tunneling as HTTP CONNECT), or an HTTP connection manager;
- an HCM normalises the path as configured, then runs its HTTP filters in order (`jwt_authn`, RBAC,
  `ext_authz`, ...) and routes (RDS or inline) to a cluster, whose endpoints are followed to the next
  listener (internal listeners, HBONE over mTLS, plain TCP) until the request leaves the proxies.

Any matcher, filter or field that changes a decision and is not implemented raises `Unsupported`
naming it: a guess here would be a lie about security.

Pure: no I/O. The caller supplies the configs and the clock.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, unquote

JWT_FILTER = "envoy.filters.http.jwt_authn"
HTTP_RBAC = "envoy.filters.http.rbac"
NET_RBAC = "envoy.filters.network.rbac"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
EXT_AUTHZ_SHADOW_PREFIX = "istio_ext_authz_"
SHADOW_EFFECTIVE_POLICY_ID = "shadow_effective_policy_id"
ORIGINAL_DST_LOCAL = "envoy.filters.listener.original_dst.local_ip"
ORIGINAL_DST_REMOTE = "envoy.filters.listener.original_dst.remote_ip"
TRANSPORT_ORIGINAL_DST = "envoy.network.transport_socket.original_dst_address"
TCP_PROXY_CLUSTER = "envoy.tcp_proxy.cluster"
JWT_CLOCK_SKEW = 60  # JwtProvider.clock_skew_seconds default
MAX_HOPS = 24  # a routing loop in the config must not hang the evaluator


EXTENSION_PREFIX = "extensions.istio.io/"  # filters of WasmPlugins and TrafficExtensions (waypost.envoy.extensions)


class Unsupported(ValueError):
    """The config uses something the evaluator does not implement; it refuses to guess."""


# --- the inputs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Proxy:
    """One Envoy's dynamic resources, keyed for lookup."""

    id: str
    listeners: tuple[dict[str, Any], ...]
    clusters: Mapping[str, dict[str, Any]]
    routes: Mapping[str, dict[str, Any]]

    @classmethod
    def of(cls, proxy_id: str, listeners: Sequence[dict[str, Any]], clusters: Sequence[dict[str, Any]], routes: Sequence[dict[str, Any]]) -> Proxy:
        return cls(proxy_id, tuple(listeners), {c["name"]: c for c in clusters}, {r["name"]: r for r in routes})

    @property
    def kind(self) -> str:
        return self.id.split("~", 1)[0]

    def internal_listener(self, name: str) -> dict[str, Any] | None:
        return next((l for l in self.listeners if l["name"] == name and "internal_listener" in l), None)


@dataclass(frozen=True)
class Request:
    """An HTTP/1.1 request as the client sends it, from `source_ip` to `destination_ip:destination_port`."""

    source_ip: str
    destination_ip: str
    destination_port: int
    method: str = "GET"
    path: str = "/"  # with the query string
    authority: str = ""
    headers: tuple[tuple[str, str], ...] = ()


# --- what comes out ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One filter that may decide: its policies in evaluation order and the one that matched."""

    filter: str
    kind: str  # ALLOW | DENY | AUDIT | CUSTOM | JWT | SHADOW
    considered: tuple[str, ...]
    matched: str | None
    effect: str  # allow | deny | log | custom | skip
    detail: str = ""


@dataclass(frozen=True)
class Hop:
    proxy: str
    role: str  # source ztunnel | waypoint | destination ztunnel | ...
    listener: str
    chain: str
    peer: str | None  # the client identity this hop sees (io.istio.peer_principal), None without mTLS
    source_ip: str | None
    checks: tuple[Check, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Outcome:
    verdict: str  # allowed | denied | unknown
    status: int | None  # HTTP status the client sees; None for a reset or the application's own answer
    reason: str
    proxy: str | None = None  # who decided
    policy: str | None = None
    delivered_to: str | None = None  # address:port of the application that got the request


@dataclass(frozen=True)
class Path:
    hops: tuple[Hop, ...]
    outcome: Outcome
    choices: tuple[str, ...] = ()  # load-balancing choices taken (weighted clusters, endpoints)


@dataclass(frozen=True)
class Evaluation:
    request: Request
    paths: tuple[Path, ...]

    @property
    def outcome(self) -> Outcome:
        """The outcome when every possible path agrees; otherwise `unknown` naming the disagreement."""
        outcomes = {(p.outcome.verdict, p.outcome.status) for p in self.paths}
        if len(outcomes) == 1:
            return self.paths[0].outcome
        return Outcome("unknown", None, "depends on the load-balancing choice: " + "; ".join(sorted({_short(p.outcome) for p in self.paths})))


def _short(o: Outcome) -> str:
    return f"{o.verdict}{f' {o.status}' if o.status else ''}"


# --- string, address and value matchers ---------------------------------------------------------------
def _regex(m: Mapping[str, Any]) -> str:
    extra = set(m) - {"regex", "google_re2"}
    if extra:
        raise Unsupported(f"unsupported regex matcher field(s) {sorted(extra)}")
    return m["regex"]


def string_match(m: Mapping[str, Any], value: str | None) -> bool:
    """`type.matcher.v3.StringMatcher` against a present value (an absent one matches nothing)."""
    if value is None:
        return False
    ignore = bool(m.get("ignore_case"))
    known = {"exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case"}
    extra = set(m) - known
    if extra:
        raise Unsupported(f"unsupported StringMatcher {sorted(extra)}")
    v = value.lower() if ignore else value
    if "exact" in m:
        return v == (m["exact"].lower() if ignore else m["exact"])
    if "prefix" in m:
        return v.startswith(m["prefix"].lower() if ignore else m["prefix"])
    if "suffix" in m:
        return v.endswith(m["suffix"].lower() if ignore else m["suffix"])
    if "contains" in m:
        return (m["contains"].lower() if ignore else m["contains"]) in v
    if "safe_regex" in m:
        return re.fullmatch(_regex(m["safe_regex"]), value) is not None  # RE2 full match; ignore_case does not apply
    raise Unsupported(f"empty StringMatcher {dict(m)}")


def cidr_match(cidr: Mapping[str, Any], ip: str | None) -> bool:
    if ip is None:
        return False  # not an IP address (an internal connection without a restored source)
    length = cidr.get("prefix_len", 0)
    network = ipaddress.ip_network(f"{cidr['address_prefix']}/{int(length)}", strict=False)
    return ipaddress.ip_address(ip) in network


def _struct_value(value: Any, m: Mapping[str, Any]) -> bool:
    """`type.matcher.v3.ValueMatcher` against a JSON value (None: absent)."""
    if "string_match" in m:
        return isinstance(value, str) and string_match(m["string_match"], value)
    if "present_match" in m:
        return (value is not None) == bool(m["present_match"])
    if "bool_match" in m:
        return isinstance(value, bool) and value == m["bool_match"]
    if "null_match" in m:
        return value is None
    if "list_match" in m:
        lm = m["list_match"]
        if set(lm) != {"one_of"}:
            raise Unsupported(f"unsupported ListMatcher {sorted(lm)}")
        return isinstance(value, list) and any(_struct_value(v, lm["one_of"]) for v in value)
    if "double_match" in m:
        d = m["double_match"]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        if "exact" in d:
            return float(value) == float(d["exact"])
        raise Unsupported(f"unsupported DoubleMatcher {sorted(d)}")
    raise Unsupported(f"unsupported ValueMatcher {sorted(m)}")


def header_value(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    """Envoy matches all values of a header joined with ',' (HeaderUtility::getAllOfHeaderAsString)."""
    values = [v for k, v in headers if k.lower() == name.lower()]
    return ",".join(values) if values else None


def header_match(m: Mapping[str, Any], headers: Sequence[tuple[str, str]]) -> bool:
    """`config.route.v3.HeaderMatcher` (RBAC and routes)."""
    extra = set(m) - {"name", "string_match", "present_match", "invert_match", "treat_missing_header_as_empty"}
    if extra:
        raise Unsupported(f"unsupported HeaderMatcher field(s) {sorted(extra)} (header {m.get('name')})")
    # As Envoy's HeaderUtility::matchHeaders: a missing header matches only a present_match that asks for
    # absence (or, inverted, for presence: VirtualService withoutHeaders `{}`); else the match is inverted.
    value = header_value(headers, m["name"])
    present_type = "present_match" in m and "string_match" not in m
    if value is None and not m.get("treat_missing_header_as_empty"):
        if m.get("invert_match"):
            return present_type and bool(m["present_match"])
        return present_type and not bool(m["present_match"])
    if value is None:
        value = ""
    if "string_match" in m:
        result = string_match(m["string_match"], value)
    elif present_type:
        result = bool(m["present_match"])
    else:
        result = True  # no specifier: the header is present
    return result != bool(m.get("invert_match"))


# --- RBAC ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attributes:
    """What an RBAC matcher can see of a connection or request."""

    destination_ip: str | None
    destination_port: int
    remote_ip: str | None  # source_ip / remote_ip / direct_remote_ip (no XFF handling here)
    filter_state: Mapping[str, str]
    headers: tuple[tuple[str, str], ...] = ()  # lower-case, with :method, :path, :authority
    metadata: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    server_name: str = ""
    http: bool = False

    @property
    def url_path(self) -> str | None:
        path = header_value(self.headers, ":path")
        return None if path is None else re.split("[?#]", path, maxsplit=1)[0]  # PathUtil::removeQueryAndFragment


def permission_matches(p: Mapping[str, Any], a: Attributes) -> bool:
    (kind,) = p.keys() if len(p) == 1 else (_one_of(p, "permission"),)
    v = p[kind]
    if kind == "any":
        return bool(v)
    if kind == "and_rules":
        return all(permission_matches(r, a) for r in v.get("rules", []))
    if kind == "or_rules":
        return any(permission_matches(r, a) for r in v.get("rules", []))
    if kind == "not_rule":
        return not permission_matches(v, a)
    if kind == "header":
        return header_match(v, a.headers)
    if kind == "url_path":
        return _path_matcher(v, a.url_path)
    if kind == "destination_ip":
        return cidr_match(v, a.destination_ip)
    if kind == "destination_port":
        return a.destination_port == int(v)
    if kind == "destination_port_range":
        return int(v.get("start", 0)) <= a.destination_port < int(v.get("end", 0))
    if kind == "requested_server_name":
        return string_match(v, a.server_name)
    if kind == "metadata":
        return _metadata_match(v, a)
    if kind == "uri_template":
        return _uri_template(v, a.url_path)
    raise Unsupported(f"unsupported RBAC permission matcher {kind!r}")


def principal_matches(p: Mapping[str, Any], a: Attributes) -> bool:
    (kind,) = p.keys() if len(p) == 1 else (_one_of(p, "principal"),)
    v = p[kind]
    if kind == "any":
        return bool(v)
    if kind == "and_ids":
        return all(principal_matches(i, a) for i in v.get("ids", []))
    if kind == "or_ids":
        return any(principal_matches(i, a) for i in v.get("ids", []))
    if kind == "not_id":
        return not principal_matches(v, a)
    if kind in ("direct_remote_ip", "remote_ip", "source_ip"):
        return cidr_match(v, a.remote_ip)
    if kind == "header":
        return header_match(v, a.headers)
    if kind == "url_path":
        return _path_matcher(v, a.url_path)
    if kind == "filter_state":
        if "string_match" not in v:
            raise Unsupported(f"unsupported FilterStateMatcher {sorted(v)}")
        return string_match(v["string_match"], a.filter_state.get(v["key"]))
    if kind == "metadata":
        return _metadata_match(v, a)
    raise Unsupported(f"unsupported RBAC principal matcher {kind!r}")


def _one_of(p: Mapping[str, Any], what: str) -> str:
    raise Unsupported(f"an RBAC {what} must set exactly one matcher, got {sorted(p)}")


def _path_matcher(v: Mapping[str, Any], path: str | None) -> bool:
    if set(v) != {"path"}:
        raise Unsupported(f"unsupported PathMatcher {sorted(v)}")
    return string_match(v["path"], path)


def _metadata_match(v: Mapping[str, Any], a: Attributes) -> bool:
    value: Any = a.metadata.get(v["filter"])
    for segment in v.get("path", []):
        value = value.get(segment["key"]) if isinstance(value, dict) else None
    result = _struct_value(value, v["value"])
    return not result if v.get("invert") else result


_TEMPLATE_LITERAL = "a-zA-Z0-9-._~%!$&'()+,;:@="


def uri_template_regex(template: str) -> str:
    """Envoy's `uri_template` path template as a regex: `*` one segment, `**` the rest, `{v}`/`{v=...}` bind."""
    if not template.startswith("/"):
        raise Unsupported(f"invalid uri_template {template!r}: it must start with '/' (Envoy rejects it)")
    one, rest = f"[{_TEMPLATE_LITERAL}]+", f"[{_TEMPLATE_LITERAL}/]*"

    def operator(text: str) -> str:
        if text == "*":
            return one
        if text == "**":
            return rest
        raise Unsupported(f"invalid uri_template operator {text!r} in {template!r}")

    out = []
    for segment in template[1:].split("/"):
        if segment in ("*", "**"):
            out.append(operator(segment))
            continue
        m = re.fullmatch(r"\{([a-zA-Z][a-zA-Z0-9_]*)(?:=([^}]*))?\}", segment)
        if m:
            parts = (m.group(2) or "*").split("/")
            out.append("/".join(operator(x) if x in ("*", "**") else re.escape(x) for x in parts))
            continue
        if "{" in segment or "}" in segment or "*" in segment:
            raise Unsupported(f"invalid uri_template segment {segment!r} in {template!r} (Envoy rejects the config)")
        out.append(re.escape(segment))
    return "/" + "/".join(out)


def _uri_template(v: Mapping[str, Any], path: str | None) -> bool:
    config = v.get("typed_config", {})
    if not str(config.get("@type", "")).endswith("UriTemplateMatchConfig"):
        raise Unsupported(f"unsupported uri_template extension {config.get('@type')!r}")
    return path is not None and re.fullmatch(uri_template_regex(config["path_template"]), path) is not None


@dataclass(frozen=True)
class RbacResult:
    action: str  # ALLOW | DENY | LOG
    considered: tuple[str, ...]
    matched: str | None
    allowed: bool


def rbac_engine(rules: Mapping[str, Any], a: Attributes) -> RbacResult:
    """One `config.rbac.v3.RBAC`: the first policy (in name order) whose permissions and principals match."""
    action = rules.get("action", "ALLOW")
    if action not in ("ALLOW", "DENY", "LOG"):
        raise Unsupported(f"unsupported RBAC action {action!r}")
    policies = rules.get("policies", {})
    names = tuple(sorted(policies))
    matched = None
    for name in names:
        policy = policies[name]
        extra = set(policy) - {"permissions", "principals"}
        if extra:
            raise Unsupported(f"unsupported RBAC policy field(s) {sorted(extra)} in {name}")
        if any(permission_matches(p, a) for p in policy.get("permissions", [])) and any(principal_matches(i, a) for i in policy.get("principals", [])):
            matched = name
            break
    allowed = {"ALLOW": matched is not None, "DENY": matched is None, "LOG": True}[action]
    return RbacResult(action, names, matched, allowed)


# The RBAC match tree (`matcher`): Envoy's RoleBasedAccessControlMatcherEngineImpl. The action reached
# decides (ALLOW and LOG allow, DENY denies) and its name is the effective policy; none reached denies.
T_RBAC_ACTION = "type.googleapis.com/envoy.config.rbac.v3.Action"
NO_POLICY = "none"  # the name waypost gives the decision of "no rule matched" (what Envoy prints for no id)


def _tree_input(config: Mapping[str, Any], a: Attributes) -> str | None:
    """What a match input reads of a request (`xds.type.matcher.v3` inputs waypost writes)."""
    typed = config.get("typed_config", {})
    kind = str(typed.get("@type", "")).rsplit(".", 1)[-1]
    if kind == "FilterStateInput":
        return a.filter_state.get(typed["key"])
    if kind == "HttpRequestHeaderMatchInput":
        return header_value(a.headers, typed["header_name"])
    if kind == "DestinationPortInput":
        return str(a.destination_port)
    raise Unsupported(f"unsupported match input {typed.get('@type')!r}")


def tree_predicate(p: Mapping[str, Any], a: Attributes) -> bool:
    """`xds.type.matcher.v3.Matcher.MatcherList.Predicate` (absent input data: a single predicate is false)."""
    (kind,) = p.keys() if len(p) == 1 else (_one_of(p, "predicate"),)
    v = p[kind]
    if kind == "single_predicate":
        if "value_match" not in v:
            raise Unsupported("a custom_match predicate")
        return string_match(v["value_match"], _tree_input(v["input"], a))
    if kind == "and_matcher":
        return all(tree_predicate(q, a) for q in v["predicate"])
    if kind == "or_matcher":
        return any(tree_predicate(q, a) for q in v["predicate"])
    if kind == "not_matcher":
        return not tree_predicate(v, a)
    raise Unsupported(f"unsupported predicate {kind!r}")


def _tree_on_match(on_match: Mapping[str, Any], a: Attributes) -> Mapping[str, Any]:
    if "action" in on_match:
        return on_match["action"].get("typed_config", {})
    reached = tree_match(on_match["matcher"], a)
    if reached is None:
        raise Unsupported("a nested match tree that reaches no action (no on_no_match)")
    return reached


def tree_match(matcher: Mapping[str, Any], a: Attributes) -> Mapping[str, Any] | None:
    """The action (its typed_config) a match tree reaches for `a`, or None. `prefix_match_map`: the
    longest key that starts the input (Envoy's prefix map matcher)."""
    if "matcher_list" in matcher:
        for field_matcher in matcher["matcher_list"]["matchers"]:
            if tree_predicate(field_matcher["predicate"], a):
                return _tree_on_match(field_matcher["on_match"], a)
    elif "matcher_tree" in matcher:
        tree = matcher["matcher_tree"]
        kinds = set(tree) - {"input"}
        if kinds not in ({"exact_match_map"}, {"prefix_match_map"}):
            raise Unsupported(f"unsupported match tree {sorted(tree)}")
        value = _tree_input(tree["input"], a)
        entries = tree.get("exact_match_map", tree.get("prefix_match_map", {}))["map"]
        found = None
        if value is not None and "exact_match_map" in tree:
            found = entries.get(value)
        elif value is not None:
            keys = [k for k in entries if value.startswith(k)]
            found = entries[max(keys, key=len)] if keys else None
        if found is not None:
            return _tree_on_match(found, a)
    if "on_no_match" in matcher:
        return _tree_on_match(matcher["on_no_match"], a)
    return None


def _tree_actions(node: Any) -> list[Mapping[str, Any]]:
    if isinstance(node, list):
        return [x for item in node for x in _tree_actions(item)]
    if not isinstance(node, Mapping):
        return []
    if node.get("@type") == T_RBAC_ACTION:
        return [node]
    return [x for value in node.values() for x in _tree_actions(value)]


def rbac_tree_engine(matcher: Mapping[str, Any], a: Attributes) -> RbacResult:
    """A match tree as the engine result of the rules it stands for: its kind is the action of its named
    decisions (all alike in a tree waypost writes), `considered` their names."""
    named = [x for x in _tree_actions(matcher) if x.get("name", "") not in ("", NO_POLICY)]
    kinds = {x.get("action", "ALLOW") for x in named}
    if len(kinds) > 1:
        raise Unsupported(f"an RBAC match tree with both {sorted(kinds)} rules")
    reached = tree_match(matcher, a)
    if reached is not None and reached.get("@type") != T_RBAC_ACTION:
        raise Unsupported(f"unsupported RBAC match action {reached.get('@type')!r}")
    action = next(iter(kinds)) if kinds else ("DENY" if reached is not None and reached.get("action") == "ALLOW" else "ALLOW")
    decision = reached.get("action", "ALLOW") if reached is not None else "DENY"
    name = reached.get("name", "") if reached is not None else ""
    matched = None if name in ("", NO_POLICY) else name
    return RbacResult(action, tuple(sorted({x["name"] for x in named})), matched, decision in ("ALLOW", "LOG"))


def rbac_filter(config: Mapping[str, Any], a: Attributes) -> tuple[RbacResult | None, RbacResult | None]:
    """(enforced result, shadow result) of an HTTP or network RBAC filter; None where not configured."""
    extra = set(config) - {"@type", "rules", "matcher", "shadow_rules", "rules_stat_prefix", "shadow_rules_stat_prefix", "stat_prefix"}
    if extra:
        raise Unsupported(f"unsupported RBAC filter field(s) {sorted(extra)}")
    if "matcher" in config:
        # Envoy uses the matcher and ignores rules when both are set (filters/common/rbac/utility.h createEngine)
        enforced: RbacResult | None = rbac_tree_engine(config["matcher"], a)
    else:
        enforced = rbac_engine(config["rules"], a) if "rules" in config else None
    shadow = rbac_engine(config["shadow_rules"], a) if "shadow_rules" in config else None
    return enforced, shadow


def _check_of(filter_name: str, result: RbacResult, *, shadow: bool = False) -> Check:
    if shadow:
        return Check(filter_name, "SHADOW", result.considered, result.matched, "log", "shadow rules never change the outcome")
    kind = {"LOG": "AUDIT"}.get(result.action, result.action)
    effect = "log" if result.action == "LOG" else ("allow" if result.allowed else "deny")
    return Check(filter_name, kind, result.considered, result.matched, effect)


# --- JWT -------------------------------------------------------------------------------------------
def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64int(text: str) -> int:
    return int.from_bytes(_b64(text), "big")


class JwtError(Exception):
    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status  # Envoy answers an audience mismatch with 403, every other failure with 401


def verify_jwt(token: str, provider: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The payload of a token valid for `provider`, checked in Envoy's order (authenticator.cc): parse,
    time constraints (exp, nbf, with clock skew), audiences, then the signature over the inline JWKS."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")
    try:
        header, payload = json.loads(_b64(parts[0])), json.loads(_b64(parts[1]))
        signature = _b64(parts[2])
    except ValueError:
        raise JwtError("Jwt header is an invalid Base64url encoded") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise JwtError("Jwt header or payload is not a JSON object")
    alg = header.get("alg")
    hashes_of = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}
    if not isinstance(alg, str) or alg[:2] not in ("RS", "ES", "PS") or alg[2:] not in hashes_of:
        raise JwtError(f"Jwt algorithm {alg!r} is not supported")
    skew = int(provider.get("clock_skew_seconds", JWT_CLOCK_SKEW))
    if isinstance(payload.get("exp"), (int, float)) and now > payload["exp"] + skew:
        raise JwtError("Jwt is expired")
    if isinstance(payload.get("nbf"), (int, float)) and now + skew < payload["nbf"]:
        raise JwtError("Jwt not yet valid")
    audiences = provider.get("audiences", [])
    if audiences:
        aud = payload.get("aud")
        token_aud = aud if isinstance(aud, list) else [aud] if isinstance(aud, str) else []
        if not set(token_aud) & set(audiences):
            raise JwtError("Audiences in Jwt are not allowed", 403)
    if "remote_jwks" in provider or "local_jwks" not in provider:
        raise Unsupported("jwt_authn provider without an inline local_jwks")
    jwks = provider["local_jwks"]
    if "inline_string" not in jwks:
        raise Unsupported(f"unsupported local_jwks source {sorted(jwks)}")
    try:
        keys = json.loads(jwks["inline_string"]).get("keys", [])
    except (ValueError, AttributeError):
        raise JwtError("Jwks is an invalid JSON") from None
    kid = header.get("kid")
    candidates = [k for k in keys if (kid is None or k.get("kid") in (None, kid)) and k.get("alg") in (None, alg)]
    signing_input = f"{parts[0]}.{parts[1]}".encode()
    digest = hashes_of[alg[2:]]
    verified = False
    for key in candidates:
        try:
            if alg[:2] in ("RS", "PS") and key.get("kty") == "RSA":
                public = rsa.RSAPublicNumbers(_b64int(key["e"]), _b64int(key["n"])).public_key()
                pad = padding.PKCS1v15() if alg[:2] == "RS" else padding.PSS(padding.MGF1(digest), padding.PSS.DIGEST_LENGTH)
                public.verify(signature, signing_input, pad, digest)
            elif alg[:2] == "ES" and key.get("kty") == "EC":
                curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}[key["crv"]]
                public = ec.EllipticCurvePublicNumbers(_b64int(key["x"]), _b64int(key["y"]), curve).public_key()
                half = len(signature) // 2
                der = encode_dss_signature(int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big"))
                public.verify(der, signing_input, ec.ECDSA(digest))
            else:
                continue
            verified = True
            break
        except (InvalidSignature, KeyError, ValueError):
            continue
    if not verified:
        raise JwtError("Jwt verification fails")
    return payload


def _extract(provider: Mapping[str, Any], headers: Sequence[tuple[str, str]], query: Mapping[str, str]) -> tuple[str, str] | None:
    """(where, token) from the provider's locations; Envoy's default is `Authorization: Bearer` or ?access_token."""
    if provider.get("from_cookies"):
        raise Unsupported("jwt_authn from_cookies")
    header_specs = provider.get("from_headers")
    params = provider.get("from_params")
    if header_specs is None and params is None:
        header_specs, params = [{"name": "Authorization", "value_prefix": "Bearer "}], ["access_token"]
    for spec in header_specs or []:
        value = header_value(headers, spec["name"])
        if value is None:
            continue
        prefix = spec.get("value_prefix", "")
        if prefix:
            if prefix not in value:
                continue
            value = value.split(prefix, 1)[1].split(",", 1)[0].strip()
        return f"header:{spec['name'].lower()}", value
    for name in params or []:
        if name in query:
            return f"param:{name}", query[name]
    return None


@dataclass(frozen=True)
class JwtResult:
    status: int | None  # 401 when rejected
    reason: str
    payload: dict[str, Any] | None
    remove_header: str | None  # the token header, when `forward` is false
    considered: tuple[str, ...]
    provider: str | None


def jwt_authn(config: Mapping[str, Any], headers: Sequence[tuple[str, str]], path: str, now: float) -> JwtResult:
    providers: Mapping[str, Any] = config.get("providers", {})
    names = tuple(sorted(providers))
    extra = set(config) - {"@type", "providers", "rules"}
    if extra:
        raise Unsupported(f"unsupported jwt_authn field(s) {sorted(extra)}")
    rule = next((r for r in config.get("rules", []) if _jwt_rule_applies(r["match"], path)), None)
    if rule is None:
        return JwtResult(None, "no jwt_authn rule applies", None, None, names, None)
    requires = rule.get("requires")
    if requires is None:
        return JwtResult(None, "the matching rule requires nothing", None, None, names, None)
    if set(requires) == {"provider_name"}:
        requirements, allow_missing = [requires["provider_name"]], False
    elif set(requires) == {"requires_any"}:
        reqs = requires["requires_any"].get("requirements", [])
        requirements = [r["provider_name"] for r in reqs if "provider_name" in r]
        allow_missing = any("allow_missing" in r for r in reqs)
        if any(set(r) - {"provider_name", "allow_missing"} for r in reqs):
            raise Unsupported(f"unsupported jwt requirement in {reqs}")
    else:
        raise Unsupported(f"unsupported jwt_authn requirement {sorted(requires)}")
    query = dict(parse_qsl(path.split("?", 1)[1], keep_blank_values=True)) if "?" in path else {}
    found = [(name, _extract(providers[name], headers, query)) for name in requirements]
    found = [(name, where) for name, where in found if where is not None]
    if not found:
        if allow_missing:
            return JwtResult(None, "no token: continues without a request principal", None, None, names, None)
        return JwtResult(401, "Jwt is missing", None, None, names, None)
    token = found[0][1][1]
    issuer = _unverified_issuer(token)
    errors: list[JwtError] = []
    for name, (where, tok) in found:
        provider = providers[name]
        if provider.get("issuer") and issuer != provider["issuer"]:
            continue
        try:
            payload = verify_jwt(tok, provider, now)
        except JwtError as exc:
            errors.append(exc)
            continue
        remove = where.split(":", 1)[1] if where.startswith("header:") and not provider.get("forward") else None
        return JwtResult(None, f"valid token from {provider.get('issuer')}", payload, remove, names, name)
    if errors:
        return JwtResult(errors[0].status, str(errors[0]), None, None, names, None)
    return JwtResult(401, "Jwt issuer is not configured", None, None, names, None)


def _unverified_issuer(token: str) -> str | None:
    try:
        payload = json.loads(_b64(token.split(".")[1]))
        return payload.get("iss") if isinstance(payload, dict) else None
    except (ValueError, IndexError):
        return None


def _jwt_rule_applies(match: Mapping[str, Any], path: str) -> bool:
    if set(match) == {"prefix"}:
        return path.startswith(match["prefix"])
    if set(match) == {"path"}:
        return path.split("?", 1)[0] == match["path"]
    raise Unsupported(f"unsupported jwt_authn rule match {sorted(match)}")


# --- HTTP path normalisation (HCM) -------------------------------------------------------------------
_UNRESERVED = re.compile(r"%([0-9A-Fa-f]{2})")


def normalize_path(path: str, hcm: Mapping[str, Any]) -> str | None:
    """The :path after the HCM's normalisation: unescape slashes, RFC 3986 canonical form, merge slashes.

    None when Envoy rejects the path (400). Only the path is rewritten, never the query.
    """
    action = hcm.get("path_with_escaped_slashes_action", "IMPLEMENTATION_SPECIFIC_DEFAULT")
    if action not in ("IMPLEMENTATION_SPECIFIC_DEFAULT", "KEEP_UNCHANGED", "UNESCAPE_AND_FORWARD"):
        raise Unsupported(f"unsupported path_with_escaped_slashes_action {action}")
    base, sep, query = path.partition("?")
    if action == "UNESCAPE_AND_FORWARD":
        base = re.sub(r"%2[Ff]", "/", base)
        base = re.sub(r"%5[Cc]", "\\\\", base)
    if hcm.get("normalize_path"):
        if not base.startswith("/"):
            return None

        def unescape(m: re.Match[str]) -> str:
            ch = chr(int(m.group(1), 16))
            return ch if re.fullmatch(r"[A-Za-z0-9\-._~]", ch) else "%" + m.group(1).upper()

        base = _UNRESERVED.sub(unescape, base.replace("\\", "/"))
        segments: list[str] = []
        parts = base.split("/")[1:]
        for i, seg in enumerate(parts):
            last = i == len(parts) - 1
            if seg == ".":
                if last:
                    segments.append("")
                continue
            if seg == "..":
                if segments:
                    segments.pop()
                if last:
                    segments.append("")
                continue
            segments.append(seg)
        base = "/" + "/".join(segments)
    if hcm.get("merge_slashes"):
        base = re.sub(r"/{2,}", "/", base)
    return base + sep + query


# --- routes ------------------------------------------------------------------------------------------
def _route_matches(match: Mapping[str, Any], headers: Sequence[tuple[str, str]], path: str, filter_state: Mapping[str, str]) -> bool:
    known = {"prefix", "path", "safe_regex", "path_separated_prefix", "connect_matcher", "headers", "query_parameters", "filter_state", "case_sensitive"}
    extra = set(match) - known
    if extra:
        raise Unsupported(f"unsupported route match field(s) {sorted(extra)}")
    bare = path.split("?", 1)[0]
    if match.get("case_sensitive") is False:
        # Envoy compares prefix and path without case (not regular expressions): ignoreUriCase.
        lowered = {k: (v.lower() if k in ("prefix", "path", "path_separated_prefix") else v) for k, v in match.items() if k != "case_sensitive"}
        if "safe_regex" not in match:
            return _route_matches(lowered, headers, bare.lower() + path[len(bare):], filter_state)
        match = lowered
    method = header_value(headers, ":method")
    if "connect_matcher" in match:
        if method != "CONNECT":
            return False
    elif method == "CONNECT":
        return False
    elif "prefix" in match:
        if not path.startswith(match["prefix"]):
            return False
    elif "path" in match:
        if bare != match["path"]:
            return False
    elif "safe_regex" in match:
        if re.fullmatch(_regex(match["safe_regex"]), bare) is None:
            return False
    elif "path_separated_prefix" in match:
        p = match["path_separated_prefix"]
        if not (bare == p or bare.startswith(p + "/")):
            return False
    else:
        raise Unsupported(f"route match without a path specifier: {dict(match)}")
    if not all(header_match(h, headers) for h in match.get("headers", [])):
        return False
    if match.get("query_parameters"):
        query = parse_qsl(path.split("?", 1)[1], keep_blank_values=True) if "?" in path else []
        for q in match["query_parameters"]:
            values = [unquote(v) for k, v in query if k == q["name"]]
            if "string_match" in q:
                if not values or not string_match(q["string_match"], values[0]):
                    return False
            elif q.get("present_match"):
                if not values:
                    return False
            else:
                raise Unsupported(f"unsupported query parameter matcher {sorted(q)}")
    for fs in match.get("filter_state", []):
        if "string_match" not in fs:
            raise Unsupported(f"unsupported route filter_state matcher {sorted(fs)}")
        if not string_match(fs["string_match"], filter_state.get(fs["key"])):
            return False
    return True


def _domain_matches(domain: str, host: str) -> int:
    """Envoy's virtual host precedence: exact (3) > suffix wildcard (2) > prefix wildcard (1) > '*' (0); -1 none."""
    host = host.lower()
    domain = domain.lower()
    if domain == "*":
        return 0
    if domain == host:
        return 3
    if domain.startswith("*") and host.endswith(domain[1:]) and len(host) > len(domain) - 1:
        return 2
    if domain.endswith("*") and host.startswith(domain[:-1]) and len(host) > len(domain) - 1:
        return 1
    return -1


def select_route(route_config: Mapping[str, Any], headers: Sequence[tuple[str, str]], path: str, filter_state: Mapping[str, str]) -> tuple[dict[str, Any] | None, str]:
    host = header_value(headers, ":authority") or ""
    best: tuple[tuple[int, int], dict[str, Any]] | None = None
    for vh in route_config.get("virtual_hosts", []):
        for domain in vh.get("domains", []):
            score = _domain_matches(domain, host)
            if score < 0:
                continue
            key = (score, len(domain))
            if best is None or key > best[0]:
                best = (key, vh)
    if best is None:
        return None, f"no virtual host of {route_config.get('name')} serves {host!r}"
    vh = best[1]
    routes = vh.get("routes", [])
    if "matcher" in vh:
        # The route match tree: its action's routes, tried in order (none: no route; no fall-through).
        a = Attributes(destination_ip=None, destination_port=0, remote_ip=None, filter_state=filter_state, headers=tuple(headers), http=True)
        reached = tree_match(vh["matcher"], a)
        kind = str((reached or {}).get("@type", "")).rsplit(".", 1)[-1]
        if reached is not None and kind not in ("RouteList", "Route"):
            raise Unsupported(f"unsupported route match action {reached.get('@type')!r}")
        routes = [] if reached is None else reached.get("routes", []) if kind == "RouteList" else [reached]
    for route in routes:
        if _route_matches(route.get("match", {}), headers, path, filter_state):
            return route, f"route {route.get('name', '?')} of {route_config.get('name')}"
    return None, f"no route of {route_config.get('name')} matches"


_REDIRECT_CODES = {"MOVED_PERMANENTLY": 301, "FOUND": 302, "SEE_OTHER": 303, "TEMPORARY_REDIRECT": 307, "PERMANENT_REDIRECT": 308}
_NOT_FOUND_CODES = {"SERVICE_UNAVAILABLE": 503, "NOT_FOUND": 404, "INTERNAL_SERVER_ERROR": 500}


# --- the walk ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Conn:
    """A connection arriving at a listener: what the listener and its filters can observe."""

    local_ip: str | None
    local_port: int
    remote_ip: str | None
    peer: str | None = None  # TLS client identity (URI SAN), when the connection is mTLS
    tls: bool = False
    alpn: tuple[str, ...] = ()
    filter_state: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # passthrough (endpoint) metadata
    connect: Mapping[str, Any] | None = None  # an HTTP CONNECT this connection carries first: {authority, headers}
    proxy_protocol: Mapping[str, Any] | None = None  # a PROXY header sent first: {source, destination, tlvs}
    direct_ip: str | None = None  # the socket's own peer address, when a PROXY header replaced remote_ip


@dataclass(frozen=True)
class _Result:
    """How a connection ends, seen from the side that opened it."""

    kind: str  # delivered | closed | http
    status: int | None
    reason: str
    hops: tuple[Hop, ...]
    proxy: str | None = None
    policy: str | None = None
    delivered_to: str | None = None
    choices: tuple[str, ...] = ()


class Evaluator:
    def __init__(self, proxies: Sequence[Proxy], applications: Mapping[str, str] | None = None, now: float = 0.0) -> None:
        """`applications`: app address → workload name, so a delivery names the pod that answers."""
        self.proxies = list(proxies)
        self.applications = dict(applications or {})
        self.now = now

    # -- entry
    def evaluate(self, request: Request) -> Evaluation:
        results = self._tcp(None, request.source_ip, request.destination_ip, request.destination_port, request, depth=0)
        paths = []
        for r in results:
            if r.kind == "delivered":
                outcome = Outcome("allowed", None, f"delivered to {r.reason}", delivered_to=r.delivered_to)
            elif r.kind == "http":
                denied = r.status is not None and r.status >= 400
                outcome = Outcome("denied" if denied else "allowed", r.status, r.reason, r.proxy, r.policy)
                if r.status is None:
                    outcome = Outcome("unknown", None, r.reason, r.proxy, r.policy)
            else:
                outcome = Outcome("denied", None, f"connection reset: {r.reason}", r.proxy, r.policy)
            paths.append(Path(r.hops, outcome, r.choices))
        return Evaluation(request, tuple(paths))

    # -- L4: find the listener that gets a TCP connection
    def _listener_at(self, ip: str, port: int, source_ip: str | None) -> tuple[Proxy, dict[str, Any]] | None:
        found = []
        for proxy in self.proxies:
            for listener in proxy.listeners:
                if "internal_listener" in listener:
                    continue
                addresses = [listener.get("address")] + [a.get("address") for a in listener.get("additional_addresses", [])]
                for address in addresses:
                    sock = (address or {}).get("socket_address", {})
                    if sock.get("address") in (ip, "0.0.0.0") and int(sock.get("port_value", 0)) == port:
                        found.append((proxy, listener))
        if len(found) > 1 and source_ip is not None:
            # Several node ztunnels bind the same VIP: the client's own node is the one that knows its address.
            knowing = [(p, l) for p, l in found if any(_in_ranges(source_ip, ch.get("filter_chain_match", {}).get("source_prefix_ranges", [])) for ch in l.get("filter_chains", []))]
            found = knowing or found
        return found[0] if found else None

    def _tcp(self, origin: Proxy | None, source_ip: str | None, ip: str, port: int, request: Request, depth: int, **kw: Any) -> list[_Result]:
        """A TCP connection from `source_ip` to ip:port (kw: peer, tls, alpn, connect for HBONE)."""
        if depth > MAX_HOPS:
            raise Unsupported("the configuration forwards in a loop")
        at = self._listener_at(ip, port, source_ip)
        if at is None:
            app = self.applications.get(ip)
            if app is not None:
                return [_Result("delivered", None, f"{app} at {ip}:{port}", (), delivered_to=f"{ip}:{port}")]
            return [_Result("closed", None, f"nothing listens at {ip}:{port}", (), proxy=origin.id if origin else None)]
        proxy, listener = at
        conn = _Conn(ip, port, source_ip, **kw)
        return self._listener(proxy, listener, conn, request, depth)

    def _listener(self, proxy: Proxy, listener: dict[str, Any], conn: _Conn, request: Request, depth: int) -> list[_Result]:
        try:
            conn = self._listener_filters(listener, conn, request)
        except _NoProxyHeader:
            return [_Result("closed", None, f"{proxy.id} {listener['name']} expects a PROXY protocol header", (), proxy=proxy.id)]
        chain = select_filter_chain(listener, conn)
        if chain is None:
            hop = Hop(proxy.id, _role(proxy, listener, None), listener["name"], "-", conn.filter_state.get("io.istio.peer_principal") or conn.peer, conn.remote_ip, note="no filter chain matches")
            return [_Result("closed", None, f"no filter chain of {proxy.id} {listener['name']} matches", (hop,), proxy=proxy.id)]
        return self._chain(proxy, listener, chain, conn, request, depth)

    def _listener_filters(self, listener: dict[str, Any], conn: _Conn, request: Request) -> _Conn:
        for lf in listener.get("listener_filters", []):
            name = lf.get("name")
            if _disabled(lf.get("filter_disabled"), conn.local_port):
                continue
            if name == "envoy.filters.listener.original_dst":
                if "internal_listener" in listener:
                    local = conn.filter_state.get(ORIGINAL_DST_LOCAL)
                    remote = conn.filter_state.get(ORIGINAL_DST_REMOTE)
                    if local:
                        ip, _, p = local.rpartition(":")
                        conn = replace(conn, local_ip=ip, local_port=int(p))
                    if remote:
                        conn = replace(conn, remote_ip=remote.rpartition(":")[0] or remote)
                # On a socket listener it reads SO_ORIGINAL_DST: on loopback the dialled address itself.
            elif name == "envoy.filters.listener.http_inspector":
                if not conn.tls and conn.connect is None:
                    conn = replace(conn, alpn=("http/1.1",))
            elif name == "envoy.filters.listener.tls_inspector":
                pass  # our requests are plaintext HTTP: no SNI, no ALPN
            elif name == "envoy.filters.listener.proxy_protocol":
                header = conn.proxy_protocol
                if header is None:
                    raise _NoProxyHeader()
                metadata = {k: dict(v) for k, v in conn.metadata.items()}
                for rule in lf.get("typed_config", {}).get("rules", []):
                    value = header["tlvs"].get(int(rule["tlv_type"]))
                    target = rule.get("on_tlv_present")
                    if value is not None and target:
                        metadata.setdefault(target["metadata_namespace"], {})[target["key"]] = value
                dst_ip, _, dst_port = header["destination"].rpartition(":")
                conn = replace(conn, local_ip=dst_ip, local_port=int(dst_port), remote_ip=header["source"].rpartition(":")[0],
                               direct_ip=conn.remote_ip, metadata=metadata, proxy_protocol=None)
            else:
                raise Unsupported(f"unsupported listener filter {name}")
        return conn

    def _chain(self, proxy: Proxy, listener: dict[str, Any], chain: dict[str, Any], conn: _Conn, request: Request, depth: int) -> list[_Result]:
        peer = conn.peer
        transport = chain.get("transport_socket")
        if transport is not None:
            if not conn.tls:
                hop = self._hop(proxy, listener, chain, conn, (), "plaintext to a TLS chain")
                return [_Result("closed", None, "TLS handshake fails (the client does not speak TLS)", (hop,), proxy=proxy.id)]
            tls = transport.get("typed_config", {})
            if tls.get("require_client_certificate") and not peer:
                hop = self._hop(proxy, listener, chain, conn, (), "no client certificate")
                return [_Result("closed", None, "TLS handshake fails (client certificate required)", (hop,), proxy=proxy.id)]
        checks: list[Check] = []
        filters = chain.get("filters", [])
        for index, f in enumerate(filters):
            name = f.get("name")
            config = f.get("typed_config", {})
            if name == NET_RBAC:
                enforced, shadow = rbac_filter(config, self._net_attributes(conn))
                if shadow is not None:
                    checks.append(_check_of(name, shadow, shadow=True))
                if enforced is not None:
                    checks.append(_check_of(name, enforced))
                    if not enforced.allowed:
                        hop = self._hop(proxy, listener, chain, conn, tuple(checks), "connection closed by RBAC")
                        return [_Result("closed", None, f"{proxy.id} network RBAC ({enforced.action}) denies" + (f": {enforced.matched}" if enforced.matched else ": no policy matches"), (hop,), proxy=proxy.id, policy=enforced.matched)]
            elif name == "envoy.filters.network.set_filter_state":
                state = dict(conn.filter_state)
                for item in config.get("on_new_connection", []):
                    state[item["object_key"]] = _format(item["format_string"], conn, {})
                conn = replace(conn, filter_state=state)
            elif name == TCP_PROXY:
                if conn.connect is not None:
                    raise Unsupported(f"an HTTP CONNECT tunnel into the TCP chain {chain.get('name')} of {proxy.id}")
                hop = self._hop(proxy, listener, chain, conn, tuple(checks))
                return [_prepend(hop, r) for r in self._tcp_proxy(proxy, config, conn, request, depth)]
            elif name == HCM:
                hop = self._hop(proxy, listener, chain, conn, tuple(checks))
                if conn.connect is not None:
                    return [_prepend(hop, r) for r in self._connect_terminate(proxy, config, conn, request, depth)]
                return self._hcm(proxy, config, conn, request, depth, hop)
            else:
                raise Unsupported(f"unsupported network filter {name} in {proxy.id} {listener['name']}")
        hop = self._hop(proxy, listener, chain, conn, tuple(checks), "no terminal filter")
        return [_Result("closed", None, "the chain has no terminal filter", (hop,), proxy=proxy.id)]

    def _hop(self, proxy: Proxy, listener: dict[str, Any], chain: dict[str, Any], conn: _Conn, checks: tuple[Check, ...], note: str = "") -> Hop:
        return Hop(proxy.id, _role(proxy, listener, chain), listener["name"], chain.get("name", "-"), conn.filter_state.get("io.istio.peer_principal") or conn.peer, conn.remote_ip, checks, note)

    def _net_attributes(self, conn: _Conn) -> Attributes:
        return Attributes(conn.local_ip, conn.local_port, conn.remote_ip, conn.filter_state)

    # -- upstream: clusters and endpoints
    def _tcp_proxy(self, proxy: Proxy, config: Mapping[str, Any], conn: _Conn, request: Request, depth: int) -> list[_Result]:
        if TCP_PROXY_CLUSTER in conn.filter_state:
            # Envoy's per-connection override (set_filter_state `envoy.tcp_proxy.cluster`) wins over the config.
            targets = [(conn.filter_state[TCP_PROXY_CLUSTER], "")]
        elif "weighted_clusters" in config:
            targets = [(c["name"], f"weighted cluster {c['name']}") for c in config["weighted_clusters"].get("clusters", []) if int(c.get("weight", 0)) > 0]
        else:
            targets = [(config["cluster"], "")]
        tunnel = config.get("tunneling_config")
        out = []
        for cluster_name, choice in targets:
            connect = None
            if tunnel is not None:
                headers = [(h["header"]["key"].lower(), _format_text(h["header"]["value"], conn, {})) for h in tunnel.get("headers_to_add", [])]
                connect = {"authority": _format_text(tunnel["hostname"], conn, {}), "headers": headers}
            for r in self._cluster(proxy, cluster_name, conn, request, depth, connect=connect):
                out.append(_with_choice(r, choice))
        return out

    def _cluster(self, proxy: Proxy, name: str, conn: _Conn, request: Request, depth: int, connect: Mapping[str, Any] | None) -> list[_Result]:
        cluster = proxy.clusters.get(name)
        if cluster is None:
            return [_Result("closed", None, f"{proxy.id} has no cluster {name}", (), proxy=proxy.id)]
        identity = _client_identity(cluster)
        tls = identity is not None
        alpn = ("h2",) if tls else ()
        kind = cluster.get("type", "EDS")
        if kind == "ORIGINAL_DST":
            lb = cluster.get("original_dst_lb_config", {})
            if "metadata_key" in lb:
                key = lb["metadata_key"]
                value: Any = conn.metadata.get(key["key"], {})
                for seg in key.get("path", []):
                    value = value.get(seg["key"]) if isinstance(value, dict) else None
                target = value
            else:
                target = conn.filter_state.get(TRANSPORT_ORIGINAL_DST)
            if not target:
                return [_Result("closed", None, f"ORIGINAL_DST cluster {name} has no destination", (), proxy=proxy.id)]
            ip, _, port = str(target).rpartition(":")
            return self._tcp(proxy, self._upstream_source(proxy, conn), ip, int(port), request, depth + 1, peer=identity, tls=tls, alpn=alpn, connect=connect)
        if kind != "STATIC":
            raise Unsupported(f"unsupported cluster type {kind} ({name})")
        endpoints = [lb for group in cluster.get("load_assignment", {}).get("endpoints", []) for lb in group.get("lb_endpoints", [])]
        if not endpoints:
            return [_Result("closed", None, f"cluster {name} has no endpoints", (), proxy=proxy.id)]
        out = []
        for ep in endpoints:
            address = ep["endpoint"]["address"]
            metadata = ep.get("metadata", {}).get("filter_metadata", {})
            if "envoy_internal_address" in address:
                listener_name = address["envoy_internal_address"]["server_listener_name"]
                listener = proxy.internal_listener(listener_name)
                if listener is None:
                    out.append(_Result("closed", None, f"{proxy.id} has no internal listener {listener_name}", (), proxy=proxy.id))
                    continue
                passthrough = _passthrough(cluster, metadata)
                # shared_with_upstream state travels along (the cluster override is the connection's own)
                state = {k: v for k, v in conn.filter_state.items() if k != TCP_PROXY_CLUSTER}
                # An internal connection's peer is an envoy internal address, not an IP, until
                # original_dst restores one from filter state.
                inner = _Conn(None, 0, None, None, False, (), state, passthrough, connect)
                choice = metadata.get("tunnel", {}).get("destination", listener_name)
                results = self._listener(proxy, listener, inner, request, depth + 1)
                out.extend(_with_choice(r, f"endpoint {choice}" if len(endpoints) > 1 else "") for r in results)
            else:
                sock = address["socket_address"]
                extra: dict[str, Any] = {}
                header = _proxy_protocol_header(cluster, conn)
                if header is not None:
                    extra["proxy_protocol"] = header
                source = cluster.get("upstream_bind_config", {}).get("source_address", {}).get("address") or self._upstream_source(proxy, conn)
                results = self._tcp(proxy, source, sock["address"], int(sock["port_value"]), request, depth + 1, peer=identity, tls=tls, alpn=alpn, connect=connect, **extra)
                out.extend(_with_choice(r, f"endpoint {sock['address']}:{sock['port_value']}" if len(endpoints) > 1 else "") for r in results)
        return out

    def _upstream_source(self, proxy: Proxy, conn: _Conn) -> str:
        """Envoy does not bind upstream sockets: on loopback the kernel picks 127.0.0.1 as the source."""
        return "127.0.0.1"

    # -- HTTP
    def _hcm(self, proxy: Proxy, hcm: Mapping[str, Any], conn: _Conn, request: Request, depth: int, hop: Hop) -> list[_Result]:
        """The client's HTTP request through one HCM; the results start with this hop and its checks."""
        headers = list(_request_headers(request))
        path = normalize_path(request.path, hcm)
        if path is None:
            return self._http_answer(proxy, hop, list(hop.checks), 400, f"{proxy.id} rejects the path {request.path!r}")
        headers = [(k, path if k == ":path" else v) for k, v in headers]
        metadata: dict[str, dict[str, Any]] = {}
        checks: list[Check] = list(hop.checks)
        http_filters = hcm.get("http_filters", [])

        attributes = lambda: Attributes(conn.local_ip, conn.local_port, conn.remote_ip, conn.filter_state, tuple(headers), metadata, "", True)
        for f in http_filters:
            name = f.get("name")
            config = f.get("typed_config", {})
            if f.get("disabled"):
                continue
            if name == JWT_FILTER:
                jr = jwt_authn(config, headers, path, self.now)
                effect = "deny" if jr.status else ("allow" if jr.payload else "skip")
                checks.append(Check(name, "JWT", jr.considered, jr.provider, effect, jr.reason))
                if jr.status:
                    return self._http_answer(proxy, hop, checks, jr.status, f"{proxy.id} jwt_authn: {jr.reason}", jr.provider)
                if jr.payload is not None:
                    metadata[JWT_FILTER] = {_payload_key(config, jr.provider): jr.payload}
                if jr.remove_header:
                    headers = [(k, v) for k, v in headers if k != jr.remove_header]
            elif name == HTTP_RBAC or str(config.get("@type", "")).endswith("filters.http.rbac.v3.RBAC"):
                # (an unloaded fail-closed Wasm plugin is an RBAC filter under the plugin's name)
                enforced, shadow = rbac_filter(config, attributes())
                custom = str(config.get("shadow_rules_stat_prefix", "")) == EXT_AUTHZ_SHADOW_PREFIX
                if shadow is not None:
                    if custom:
                        checks.append(Check(name, "CUSTOM", shadow.considered, shadow.matched, "custom" if shadow.matched else "skip",
                                            "a CUSTOM rule matches: the external authorizer is called" if shadow.matched else "no CUSTOM rule matches: the external authorizer is not called"))
                        metadata.setdefault(name, {})[f"{EXT_AUTHZ_SHADOW_PREFIX}{SHADOW_EFFECTIVE_POLICY_ID}"] = shadow.matched
                    else:
                        checks.append(_check_of(name, shadow, shadow=True))
                if enforced is not None:
                    checks.append(_check_of(name, enforced))
                    if not enforced.allowed:
                        return self._http_answer(proxy, hop, checks, 403, f"{proxy.id} RBAC ({enforced.action}) denies" + (f": {enforced.matched}" if enforced.matched else ": no policy matches"), enforced.matched)
            elif name == EXT_AUTHZ:
                gate = config.get("filter_enabled_metadata")
                enabled = True
                if gate is not None:
                    value: Any = metadata.get(gate["filter"])
                    for seg in gate.get("path", []):
                        value = value.get(seg["key"]) if isinstance(value, dict) else None
                    enabled = _struct_value(value, gate["value"])
                if enabled:
                    provider = _ext_authz_provider(metadata)
                    checks.append(Check(name, "CUSTOM", (), provider, "custom", f"external authorizer {provider} decides"))
                    return [_Result("http", None, f"external authorizer {provider} decides (unknown without --send)", (replace(hop, checks=tuple(checks)),), proxy=proxy.id, policy=_shadow_policy(metadata))]
            elif _observer(f):
                continue  # CORS answers preflights per route, the others only observe: none authorizes
            elif str(name).startswith(EXTENSION_PREFIX):
                # A WasmPlugin/TrafficExtension: its code is not interpreted here. Say so rather than guess.
                checks.append(Check(name, "EXTENSION", (), None, "unknown", "an extension runs here; its code is not evaluated (it may change or answer the request)"))
            elif name == "envoy.filters.http.router":
                results = self._route(proxy, hcm, headers, path, conn, request, depth)
                return [replace(r, hops=(replace(hop, checks=tuple(checks)),) + r.hops) for r in results]
            else:
                raise Unsupported(f"unsupported HTTP filter {name} in {proxy.id}")
        return self._http_answer(proxy, hop, checks, 500, "the HCM has no router")

    def _http_answer(self, proxy: Proxy, hop: Hop, checks: list[Check], status: int, reason: str, policy: str | None = None) -> list[_Result]:
        return [_Result("http", status, reason, (replace(hop, checks=tuple(checks)),), proxy=proxy.id, policy=policy)]

    def _route(self, proxy: Proxy, hcm: Mapping[str, Any], headers: list[tuple[str, str]], path: str, conn: _Conn, request: Request, depth: int) -> list[_Result]:
        if "route_config" in hcm:
            rc = hcm["route_config"]
        elif "rds" in hcm:
            rc = proxy.routes.get(hcm["rds"]["route_config_name"])
            if rc is None:
                return [_Result("http", 404, f"{proxy.id} has no route configuration {hcm['rds']['route_config_name']}", (), proxy=proxy.id)]
        else:
            raise Unsupported("an HCM without route_config or rds")
        route, why = select_route(rc, headers, path, conn.filter_state)
        if route is None:
            return [_Result("http", 404, f"{proxy.id}: {why}", (), proxy=proxy.id)]
        fault = route.get("typed_per_filter_config", {}).get("envoy.filters.http.fault", {})
        abort = fault.get("abort")
        if abort is not None and int(abort.get("percentage", {}).get("numerator", 0)) > 0:
            share = _fraction(abort["percentage"])
            if share >= 1:
                status = int(abort.get("http_status", 503 if "grpc_status" in abort else 500))
                return [_Result("http", status, f"{proxy.id} aborts every request by fault injection ({why})", (), proxy=proxy.id)]
            why += f"; fault injection aborts {share:.4g} of the requests"
        if "direct_response" in route:
            return [_Result("http", int(route["direct_response"]["status"]), f"{proxy.id} answers directly ({why})", (), proxy=proxy.id)]
        if "redirect" in route:
            code = _REDIRECT_CODES.get(route["redirect"].get("response_code", "MOVED_PERMANENTLY"), 301)
            return [_Result("http", code, f"{proxy.id} redirects ({why})", (), proxy=proxy.id)]
        action = route.get("route")
        if action is None:
            raise Unsupported(f"unsupported route action in {route.get('name')}")
        if "weighted_clusters" in action:
            targets = [(c["name"], f"{c['name']} (weight {c.get('weight')})") for c in action["weighted_clusters"].get("clusters", []) if int(c.get("weight", 0)) > 0]
        elif "cluster" in action:
            targets = [(action["cluster"], "")]
        else:
            raise Unsupported(f"unsupported route action {sorted(action)}")
        out = []
        for cluster_name, choice in targets:
            if cluster_name not in proxy.clusters:
                code = _NOT_FOUND_CODES.get(action.get("cluster_not_found_response_code", "SERVICE_UNAVAILABLE"), 503)
                out.append(_Result("http", code, f"{proxy.id}: cluster {cluster_name} does not exist ({why})", (), proxy=proxy.id, choices=(choice,) if choice else ()))
                continue
            for r in self._cluster(proxy, cluster_name, replace(conn, connect=None), request, depth, connect=None):
                if r.kind == "closed":
                    # The router gets no response: Envoy answers 503 "upstream connect error or disconnect/reset".
                    r = replace(r, kind="http", status=503, reason=f"{proxy.id} answers 503: upstream {r.reason}")
                out.append(_with_choice(r, choice))
        return out

    def _connect_terminate(self, proxy: Proxy, hcm: Mapping[str, Any], conn: _Conn, request: Request, depth: int) -> list[_Result]:
        """An HBONE CONNECT: route on the authority, copy identity and addresses to filter state, hand over."""
        assert conn.connect is not None
        authority = conn.connect["authority"]
        headers = [(":method", "CONNECT"), (":authority", authority)] + list(conn.connect["headers"])
        state: dict[str, str] = {}
        for f in hcm.get("http_filters", []):
            name = f.get("name")
            config = f.get("typed_config", {})
            if name == "envoy.filters.http.set_filter_state":
                for item in config.get("on_request_headers", []):
                    value = _format(item["format_string"], conn, dict(headers))
                    if value == "" and item.get("skip_if_empty"):
                        continue
                    state[item["object_key"]] = value
            elif name == "envoy.filters.http.router":
                break
            elif name in (HTTP_RBAC, JWT_FILTER, EXT_AUTHZ):
                raise Unsupported(f"{name} on a CONNECT-terminating HCM")
        rc = hcm.get("route_config")
        if rc is None:
            raise Unsupported("a CONNECT-terminating HCM without an inline route_config")
        route, why = select_route(rc, headers, "", state)
        if route is None or "cluster" not in route.get("route", {}):
            return [_Result("closed", None, f"{proxy.id} refuses CONNECT {authority} ({why})", (), proxy=proxy.id)]
        inner = replace(conn, connect=None, tls=False, peer=None, alpn=(), filter_state={**conn.filter_state, **state})
        cluster = proxy.clusters.get(route["route"]["cluster"])
        if cluster is None:
            return [_Result("closed", None, f"{proxy.id} has no cluster {route['route']['cluster']}", (), proxy=proxy.id)]
        return self._cluster(proxy, cluster["name"], inner, request, depth + 1, connect=None)


# --- helpers -----------------------------------------------------------------------------------------
def _request_headers(request: Request) -> tuple[tuple[str, str], ...]:
    authority = next((v for k, v in request.headers if k.lower() == "host"), request.authority)
    rest = tuple((k.lower(), v) for k, v in request.headers if k.lower() != "host")
    return ((":method", request.method), (":path", request.path), (":authority", authority), (":scheme", "http")) + rest


_OBSERVERS = (
    "envoy.extensions.filters.http.cors.v3.Cors",
    "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
    # Fault injection is configured per route (VirtualService `fault`): the route's answer says what it does.
    "envoy.extensions.filters.http.fault.v3.HTTPFault",
)


def _fraction(percent: Mapping[str, Any]) -> float:
    denominators = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}
    return int(percent.get("numerator", 0)) / denominators.get(percent.get("denominator", "HUNDRED"), 100)


def _observer(f: Mapping[str, Any]) -> bool:
    """HTTP filters that cannot decide a request's fate: CORS, gRPC stats, Lua code that runs only on responses."""
    kind = str(f.get("typed_config", {}).get("@type", "")).rsplit("/", 1)[-1]
    if kind in _OBSERVERS:
        return True
    if kind == "envoy.extensions.filters.http.lua.v3.Lua":
        config = f["typed_config"]
        code = config.get("inline_code") or config.get("default_source_code", {}).get("inline_string")
        if code is None or config.get("source_codes"):
            raise Unsupported(f"Lua filter {f.get('name')} with code this evaluator cannot read")
        return "envoy_on_request" not in code
    return False


def _payload_key(config: Mapping[str, Any], provider: str | None) -> str:
    p = config.get("providers", {}).get(provider or "", {})
    return p.get("payload_in_metadata", "payload")


def _ext_authz_provider(metadata: Mapping[str, Mapping[str, Any]]) -> str:
    policy = _shadow_policy(metadata) or ""
    m = re.match(r"istio-ext-authz-(.+?)-ns\[", policy)
    return m.group(1) if m else "?"


def _shadow_policy(metadata: Mapping[str, Mapping[str, Any]]) -> str | None:
    for values in metadata.values():
        value = values.get(f"{EXT_AUTHZ_SHADOW_PREFIX}{SHADOW_EFFECTIVE_POLICY_ID}")
        if value:
            return str(value)
    return None


def _passthrough(cluster: Mapping[str, Any], endpoint_metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The endpoint metadata `internal_upstream` hands to the internal listener's connection."""
    transport = cluster.get("transport_socket", {}).get("typed_config", {})
    out = {}
    for item in transport.get("passthrough_metadata", []):
        if "host" in item.get("kind", {}) and item["name"] in endpoint_metadata:
            out[item["name"]] = endpoint_metadata[item["name"]]
    return out


def _client_identity(cluster: Mapping[str, Any]) -> str | None:
    """The SPIFFE identity of the client certificate an upstream TLS cluster presents (its SDS secret)."""
    transport = cluster.get("transport_socket", {})
    config = transport.get("typed_config", {})
    if not str(config.get("@type", "")).endswith("UpstreamTlsContext"):
        return None
    secrets = config.get("common_tls_context", {}).get("tls_certificate_sds_secret_configs", [])
    return secrets[0]["name"] if secrets else None


class _NoProxyHeader(Exception):
    """A listener expecting a PROXY protocol header got a connection without one (Envoy closes it)."""


def _proxy_protocol_header(cluster: Mapping[str, Any], conn: _Conn) -> dict[str, Any] | None:
    """The PROXY v2 header an `upstream_proxy_protocol` transport sends: the downstream's addresses and its TLVs."""
    transport = cluster.get("transport_socket", {})
    if transport.get("name") != "envoy.transport_sockets.upstream_proxy_protocol":
        return None
    config = transport.get("typed_config", {}).get("config", {})
    tlvs = {int(t["type"]): base64.b64decode(t["value"]).decode() for t in config.get("added_tlvs", [])}
    return {"source": f"{conn.remote_ip}:0", "destination": f"{conn.local_ip}:{conn.local_port}", "tlvs": tlvs}


def _format(fmt: Mapping[str, Any], conn: _Conn, headers: Mapping[str, str]) -> str:
    source = fmt.get("text_format_source", {})
    if set(source) != {"inline_string"}:
        raise Unsupported(f"unsupported format string {dict(fmt)}")
    return _format_text(source["inline_string"], conn, headers)


def _format_text(text: str, conn: _Conn, headers: Mapping[str, str]) -> str:
    def command(m: re.Match[str]) -> str:
        op, arg = m.group(1), m.group(2)
        if op == "REQ":
            return headers.get(arg.lower(), "")
        if op == "DOWNSTREAM_PEER_URI_SAN":
            return conn.peer or ""
        if op == "DOWNSTREAM_LOCAL_ADDRESS":
            return f"{conn.local_ip}:{conn.local_port}"
        if op == "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":
            return conn.local_ip or ""
        if op == "DOWNSTREAM_REMOTE_ADDRESS":
            return f"{conn.remote_ip}:0" if conn.remote_ip else ""
        if op == "DYNAMIC_METADATA":
            ns, _, key = (arg or "").partition(":")
            value = conn.metadata.get(ns, {}).get(key)
            return "" if value is None else str(value)
        if op == "FILTER_STATE":
            key = (arg or "").rsplit(":", 1)[0]
            return conn.filter_state.get(key, "")
        raise Unsupported(f"unsupported format command %{op}%")

    return re.sub(r"%([A-Z_]+)(?:\(([^)]*)\))?%", command, text)


def _disabled(predicate: Mapping[str, Any] | None, port: int) -> bool:
    if predicate is None:
        return False
    return _predicate(predicate, port)


def _predicate(p: Mapping[str, Any], port: int) -> bool:
    """`ListenerFilterChainMatchPredicate` (only the destination port is known before the filters run)."""
    (kind,) = p.keys()
    v = p[kind]
    if kind == "destination_port_range":
        return int(v.get("start", 0)) <= port < int(v.get("end", 0))
    if kind == "not_match":
        return not _predicate(v, port)
    if kind == "or_match":
        return any(_predicate(r, port) for r in v.get("rules", []))
    if kind == "and_match":
        return all(_predicate(r, port) for r in v.get("rules", []))
    if kind == "any_match":
        return bool(v)
    raise Unsupported(f"unsupported listener filter predicate {kind}")


def _in_ranges(ip: str | None, ranges: Sequence[Mapping[str, Any]]) -> bool:
    return any(cidr_match(r, ip) for r in ranges)


def _longest(ip: str | None, chains: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Envoy's per-level choice: the chains whose `key` ranges hold `ip` most specifically, else those without ranges."""
    best, length = [], -1
    for ch in chains:
        for r in ch.get("filter_chain_match", {}).get(key, []):
            if cidr_match(r, ip):
                n = int(r.get("prefix_len", 0))
                if n > length:
                    best, length = [ch], n
                elif n == length and ch not in best:
                    best.append(ch)
    return best or [ch for ch in chains if not ch.get("filter_chain_match", {}).get(key)]


_CHAIN_FIELDS = {"destination_port", "prefix_ranges", "server_names", "transport_protocol", "application_protocols",
                 "direct_source_prefix_ranges", "source_type", "source_prefix_ranges", "source_ports"}


def select_filter_chain(listener: Mapping[str, Any], conn: _Conn) -> dict[str, Any] | None:
    """Envoy's FilterChainManager: each level narrows to its most specific match, never backtracking."""
    chains = list(listener.get("filter_chains", []))
    for ch in chains:
        extra = set(ch.get("filter_chain_match", {})) - _CHAIN_FIELDS
        if extra:
            raise Unsupported(f"unsupported filter_chain_match field(s) {sorted(extra)} in {ch.get('name')}")
    fcm = lambda ch: ch.get("filter_chain_match", {})
    exact = [ch for ch in chains if "destination_port" in fcm(ch) and int(fcm(ch)["destination_port"]) == conn.local_port]
    chains = exact or [ch for ch in chains if "destination_port" not in fcm(ch)]
    chains = _longest(conn.local_ip, chains, "prefix_ranges")
    if any(fcm(ch).get("server_names") for ch in chains):
        raise Unsupported("filter chains matched on server_names (TLS SNI) are not evaluated")
    transport = "tls" if conn.tls else "raw_buffer"
    exact = [ch for ch in chains if fcm(ch).get("transport_protocol") == transport]
    chains = exact or [ch for ch in chains if not fcm(ch).get("transport_protocol")]
    exact = [ch for ch in chains if set(fcm(ch).get("application_protocols", [])) & set(conn.alpn)]
    chains = exact or [ch for ch in chains if not fcm(ch).get("application_protocols")]
    chains = _longest(conn.direct_ip or conn.remote_ip, chains, "direct_source_prefix_ranges")
    if any(fcm(ch).get("source_type", "ANY") != "ANY" for ch in chains):
        raise Unsupported("filter chains matched on source_type")
    chains = _longest(conn.remote_ip, chains, "source_prefix_ranges")
    if any(fcm(ch).get("source_ports") for ch in chains):
        raise Unsupported("filter chains matched on source_ports")
    if chains:
        return chains[0]
    return listener.get("default_filter_chain")


def _role(proxy: Proxy, listener: Mapping[str, Any], chain: Mapping[str, Any] | None) -> str:
    """A name for the reader; it never affects the evaluation."""
    if proxy.kind == "ztunnel":
        inbound = "inbound" in listener["name"] or str((chain or {}).get("name", "")).startswith("inbound")
        return "destination ztunnel" if inbound else "source ztunnel"
    return proxy.kind


def _prepend(hop: Hop, result: _Result) -> _Result:
    return replace(result, hops=(hop,) + result.hops)


def _with_choice(result: _Result, choice: str) -> _Result:
    return replace(result, choices=((choice,) if choice else ()) + result.choices)
