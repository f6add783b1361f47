"""AuthorizationPolicy → Envoy RBAC filters, for waypoint HTTP chains, waypoint TCP chains and ztunnels.

Semantics: shared/spec/istio-ambient-semantics.md §5 (Istio `pilot/pkg/security/authz/builder`):
evaluation order CUSTOM → DENY → ALLOW (AUDIT only logs); a policy matches if any rule matches; a rule
needs (any `from`) AND (any `to`) AND every `when`; fields in one source/operation are ANDed, values
ORed, `not*` must match none. Values take the forms `abc`, `abc*`, `*abc`, `*` (presence).

The client identity is not a TLS peer inside the internal listeners: it is the filter-state object
`io.istio.peer_principal` that HBONE termination stored (a full `spiffe://` URI).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from waypost.api.security import AuthorizationPolicy, Condition, Operation, Source
from waypost.mesh.ztunnel_authz import Match, ZtunnelPolicy, reduce_policy

from . import rbac_matcher
from .common import PEER_PRINCIPAL_KEY
from .jwt import JWT_FILTER, PAYLOAD_KEY

T_HTTP_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
T_NET_RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
T_URI_TEMPLATE = "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig"
ANY = {"any": True}


def string_match(value: str, *, prefix: str = "", ignore_case: bool = False) -> dict[str, Any]:
    """Istio's four value forms: exact, `x*` prefix, `*x` suffix, `*` presence."""
    extra = {"ignore_case": True} if ignore_case else {}
    if value == "*":
        return {"safe_regex": {"regex": f"{re.escape(prefix)}.+"}} if prefix else {"safe_regex": {"regex": ".+"}}
    if value.endswith("*"):
        return {"prefix": prefix + value[:-1], **extra}
    if value.startswith("*"):
        return {"suffix": value[1:], **extra}
    return {"exact": prefix + value, **extra}


def _glob(value: str) -> str:
    return ".*".join(re.escape(part) for part in value.split("*"))


def _principal(match: dict[str, Any]) -> dict[str, Any]:
    return {"filter_state": {"key": PEER_PRINCIPAL_KEY, "string_match": match}}


def _principal_regex(regex: str) -> dict[str, Any]:
    return _principal({"safe_regex": {"regex": regex}})


def _or_ids(ids: list[dict[str, Any]]) -> dict[str, Any]:
    return ids[0] if len(ids) == 1 else {"or_ids": {"ids": ids}}


def _or_rules(rules: list[dict[str, Any]]) -> dict[str, Any]:
    return rules[0] if len(rules) == 1 else {"or_rules": {"rules": rules}}


def _cidr(value: str) -> dict[str, Any]:
    ip, _, length = value.partition("/")
    return {"address_prefix": ip, "prefix_len": int(length) if length else (128 if ":" in ip else 32)}


def _sa(value: str, policy_ns: str) -> str:
    ns, _, sa = value.rpartition("/")
    return f"spiffe://[^/]+/ns/{re.escape(ns or policy_ns)}/sa/{re.escape(sa)}"


# -- principals (the "from" side) --------------------------------------------------------------------
def source_ids(field: str, values: list[str] | tuple[str, ...], policy_ns: str) -> dict[str, Any]:
    """One source field's values as an OR of Envoy principals."""
    if field in ("principals", "source.principal"):
        ids = [_principal(string_match(v, prefix="spiffe://")) if not v.startswith("*") else _principal(string_match(v)) for v in values]
    elif field in ("namespaces", "source.namespace"):
        ids = [_principal_regex(f"spiffe://[^/]+/ns/{_glob(v)}/sa/[^/]+") for v in values]
    elif field in ("service_accounts", "source.serviceAccount"):
        ids = [_principal_regex(_sa(v, policy_ns)) for v in values]
    elif field in ("trust_domains", "source.trustDomain"):
        ids = [_principal_regex(f"spiffe://{_glob(v)}/ns/[^/]+/sa/[^/]+") for v in values]
    elif field in ("ip_blocks", "source.ip"):
        ids = [{"direct_remote_ip": _cidr(v)} for v in values]
    elif field in ("remote_ip_blocks", "remote.ip"):
        ids = [{"remote_ip": _cidr(v)} for v in values]
    elif field in ("request_principals", "request.auth.principal"):
        ids = [_request_principal(v) for v in values]
    elif field == "request.auth.audiences":
        ids = [_claim(["aud"], v) for v in values]
    elif field == "request.auth.presenter":
        ids = [_payload("azp", string_match(v)) for v in values]
    elif field.startswith("request.auth.claims["):
        ids = [_claim(re.findall(r"\[([^\]]+)\]", field), v) for v in values]
    elif field.startswith("request.headers["):
        name = field[len("request.headers[") : -1].lower()
        ids = [{"header": {"name": name, "string_match": string_match(v)}} for v in values]
    else:
        raise ValueError(f"no principal for {field}")
    return _or_ids(ids)


def _payload(key: str | list[str], match: dict[str, Any], list_match: bool = False) -> dict[str, Any]:
    keys = [key] if isinstance(key, str) else key
    value = {"list_match": {"one_of": {"string_match": match}}} if list_match else {"string_match": match}
    return {"metadata": {"filter": JWT_FILTER, "path": [{"key": PAYLOAD_KEY}] + [{"key": k} for k in keys], "value": value}}


def _claim(path: list[str], value: str) -> dict[str, Any]:
    """A claim may be a string or a list of strings: either matches (§6)."""
    return {"or_ids": {"ids": [_payload(path, string_match(value)), _payload(path, string_match(value), list_match=True)]}}


def _request_principal(value: str) -> dict[str, Any]:
    """`request.auth.principal` is `<iss>/<sub>` of the validated token, split on the last `/` (§6)."""
    present = {"safe_regex": {"regex": ".+"}}

    def both(iss: dict[str, Any], sub: dict[str, Any]) -> dict[str, Any]:
        return {"and_ids": {"ids": [_payload("iss", iss), _payload("sub", sub)]}}

    if value == "*":
        return _payload("iss", present)
    if value.startswith("*"):
        rest = value[1:]
        if "/" not in rest:
            return _payload("sub", {"suffix": rest})
        iss_suffix, sub = rest.rsplit("/", 1)
        return both({"suffix": iss_suffix} if iss_suffix else present, {"exact": sub})
    if value.endswith("*"):
        rest = value[:-1]
        if "/" not in rest:
            return _payload("iss", {"prefix": rest})
        iss, sub_prefix = rest.rsplit("/", 1)
        return both({"exact": iss}, {"prefix": sub_prefix} if sub_prefix else present)
    iss, _, sub = value.rpartition("/")
    return both({"exact": iss}, {"exact": sub})


# -- permissions (the "to" side) -----------------------------------------------------------------------
_PARAMS = "(;[^/]*)?"  # RFC 3986 path parameters, which many servers drop: `/admin;x` means `/admin`


def path_regex(value: str) -> str:
    """Istio's path forms as a regex that also accepts `;params` after every complete segment.

    Without this, `/admin;x` would slip past a DENY on `/admin` and still reach a server that ignores
    the parameter (the waypoint forwards it unchanged).
    """
    if value == "*":
        return ".+"
    if value.startswith("*"):
        return ".*" + re.escape(value[1:]) + _PARAMS
    prefix = value.endswith("*")
    body = value[:-1] if prefix else value
    segments = body.split("/")
    complete = segments if not prefix else segments[:-1]
    out = "/".join(re.escape(seg) + (_PARAMS if seg else "") for seg in complete)
    if prefix:
        out += "/" + re.escape(segments[-1]) if len(segments) > 1 else re.escape(segments[-1])
        return out + ".*"
    return out


def _path_permission(value: str) -> dict[str, Any]:
    if "{" in value:
        # Istio's `{*}`/`{**}` are Envoy's `*`/`**` (Envoy rejects `{*}`: it would name a variable);
        # istio pilot/pkg/security/authz/matcher converts them the same way.
        template = value.replace("{**}", "**").replace("{*}", "*")
        return {"uri_template": {"name": "uri-template", "typed_config": {"@type": T_URI_TEMPLATE, "path_template": template}}}
    regex = path_regex(value)
    exact = {"url_path": {"path": {"safe_regex": {"regex": regex}}}}
    prefilter = _literal_prefilter(regex)
    if prefilter is not None and regex == re.escape(prefilter.get("prefix", "")) + ".*":
        exact = {"url_path": {"path": prefilter}}  # `/api*`: the regex is the prefix and nothing more
    # The regex implies the literal check, so both together match exactly what the regex alone does; Envoy's
    # and_rules stops at the first miss, so a request without the literal never runs RE2. The literal is
    # checked on the `:path` header: `url_path` is `:path` cut at `?`/`#`, so a `url_path` that starts with
    # (or contains) the literal means a `:path` that does too, and a header compare skips the copy Envoy
    # makes to cut the query (a policy with many path rules costs one compare per rule).
    literal = next(iter(prefilter.values())) if prefilter is not None else ""
    if not literal or "?" in literal or "#" in literal:
        return exact
    return {"and_rules": {"rules": [{"header": {"name": ":path", "string_match": prefilter}}, exact]}}


_REGEX_META = frozenset("()[]{}.*+?|^$")


def _literal_prefilter(regex: str) -> dict[str, str] | None:
    """A string check every path the regex (from `path_regex`) fully matches passes: the literal text it
    starts with (`prefix`) or, after a leading `.*`, the literal it then needs (`contains`). None when that
    text is at most "/" (every path passes it)."""
    contains = regex.startswith(".*")
    i, literal = (2 if contains else 0), []
    while i < len(regex) and regex[i] not in _REGEX_META:
        if regex[i] == "\\":  # re.escape's escape: the next character is literal
            i += 1
        literal.append(regex[i])
        i += 1
    text = "".join(literal)
    if len(text) <= 1:
        return None
    return {"contains": text} if contains else {"prefix": text}


@functools.lru_cache(maxsize=4096)
def _header_rule(name: str, value: str, ignore_case: bool) -> dict[str, Any]:
    """A method or host permission: the same few values in many policies, so shared (bounded cache)."""
    return {"header": {"name": name, "string_match": string_match(value, ignore_case=ignore_case)}}


def operation_rules(field: str, values: list[str] | tuple[str, ...]) -> dict[str, Any]:
    if field in ("hosts",):
        rules = [_header_rule(":authority", v, True) for v in values]
    elif field in ("methods",):
        rules = [_header_rule(":method", v, False) for v in values]
    elif field in ("paths",):
        rules = [_path_permission(v) for v in values]
    elif field in ("ports", "destination.port"):
        rules = [{"destination_port": int(v)} for v in values]
    elif field in ("destination_ips", "destination.ip"):
        rules = [{"destination_ip": _cidr(v)} for v in values]
    elif field == "connection.sni":
        rules = [{"requested_server_name": string_match(v)} for v in values]
    else:
        raise ValueError(f"no permission for {field}")
    return _or_rules(rules)


DESTINATION_KEYS = {"destination.ip", "destination.port", "connection.sni"}
HTTP_ONLY_KEYS_PREFIX = ("request.",)
SOURCE_FIELDS = ("principals", "namespaces", "service_accounts", "trust_domains", "ip_blocks", "remote_ip_blocks", "request_principals")
OPERATION_FIELDS = ("hosts", "ports", "methods", "paths")
HTTP_ONLY = {"request_principals", "hosts", "methods", "paths"}


def _source(source: Source, policy_ns: str, tcp: bool) -> dict[str, Any]:
    ids = []
    for field in SOURCE_FIELDS:
        if tcp and field in HTTP_ONLY:
            continue  # §5.7: HTTP-only fields are ignored on TCP chains (ALLOW rules using them are skipped earlier)
        if values := getattr(source, field):
            ids.append(source_ids(field, values, policy_ns))
        if values := getattr(source, f"not_{field}"):
            ids.append({"not_id": source_ids(field, values, policy_ns)})
    if not ids:
        return ANY
    return ids[0] if len(ids) == 1 else {"and_ids": {"ids": ids}}


def _operation(op: Operation, tcp: bool) -> dict[str, Any]:
    rules = []
    for field in OPERATION_FIELDS:
        if tcp and field in HTTP_ONLY:
            continue
        if values := getattr(op, field):
            rules.append(operation_rules(field, values))
        if values := getattr(op, f"not_{field}"):
            rules.append({"not_rule": operation_rules(field, values)})
    if not rules:
        return ANY
    return rules[0] if len(rules) == 1 else {"and_rules": {"rules": rules}}


def _condition(c: Condition, policy_ns: str) -> tuple[str, dict[str, Any]]:
    """('permission'|'principal', matcher) for one `when` condition: values ORed, notValues must not match."""
    side = "permission" if c.key in DESTINATION_KEYS else "principal"
    build = (lambda vs: operation_rules(c.key, vs)) if side == "permission" else (lambda vs: source_ids(c.key, vs, policy_ns))
    parts = []
    if c.values:
        parts.append(build(c.values))
    if c.not_values:
        parts.append({"not_rule": build(c.not_values)} if side == "permission" else {"not_id": build(c.not_values)})
    if len(parts) == 1:
        return side, parts[0]
    key = "and_rules" if side == "permission" else "and_ids"
    return side, {key: {("rules" if side == "permission" else "ids"): parts}}


def rule_policy(policy: AuthorizationPolicy, rule, tcp: bool) -> dict[str, Any]:
    permissions: list[dict[str, Any]] = []
    principals: list[dict[str, Any]] = []
    if rule.to is not None:
        permissions.append(_or_rules([_operation(t.operation, tcp) for t in rule.to]))
    if rule.from_ is not None:
        principals.append(_or_ids([_source(f.source, policy.namespace, tcp) for f in rule.from_]))
    for condition in rule.when:
        if tcp and condition.key.startswith(HTTP_ONLY_KEYS_PREFIX):
            continue
        side, matcher = _condition(condition, policy.namespace)
        (permissions if side == "permission" else principals).append(matcher)
    permission = ANY if not permissions else permissions[0] if len(permissions) == 1 else {"and_rules": {"rules": permissions}}
    principal = ANY if not principals else principals[0] if len(principals) == 1 else {"and_ids": {"ids": principals}}
    return {"permissions": [permission], "principals": [principal]}


def _policies(policies: list[AuthorizationPolicy], action: str, tcp: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in sorted(policies, key=lambda p: (p.namespace, p.name)):
        if p.spec.action != action:
            continue
        for i, rule in enumerate(p.spec.rules or []):
            if tcp and action == "ALLOW" and _http_only(rule):
                continue  # §5.7: an ALLOW rule using an HTTP-only field does not apply to TCP (less permissive)
            out[f"ns[{p.namespace}]-policy[{p.name}]-rule[{i}]"] = rule_policy(p, rule, tcp)
    return out


def _http_only(rule) -> bool:
    """Whether a rule uses a field that exists only for HTTP (remote IPs count as L4 at a waypoint)."""
    for f in rule.from_ or []:
        if f.source.request_principals or f.source.not_request_principals:
            return True
    for t in rule.to or []:
        o = t.operation
        if o.hosts or o.not_hosts or o.methods or o.not_methods or o.paths or o.not_paths:
            return True
    return any(c.key.startswith(HTTP_ONLY_KEYS_PREFIX) for c in rule.when)


def _filters(policies: list[AuthorizationPolicy], tcp: bool, stat_prefix: str, tree: bool = False) -> list[dict[str, Any]]:
    """AUDIT (log only), DENY, then ALLOW — the order Istio installs them (§5.1).

    With `tree`, an HTTP filter whose rules dispatch on exact callers carries the equivalent match tree
    instead (rbac_matcher: one hash lookup instead of trying every rule)."""
    out = []
    for action, envoy_action in (("AUDIT", "LOG"), ("DENY", "DENY"), ("ALLOW", "ALLOW")):
        present = [p for p in policies if p.spec.action == action]
        if not present:
            continue
        rules = {"action": envoy_action, "policies": _policies(present, action, tcp)}
        if tcp:
            out.append({"name": "envoy.filters.network.rbac", "typed_config": {"@type": T_NET_RBAC, "stat_prefix": f"{stat_prefix}{action.lower()}.", "rules": rules}})
        else:
            matcher = rbac_matcher.compile_rules(rules) if tree else None
            body = {"matcher": matcher} if matcher is not None else {"rules": rules}
            out.append({"name": "envoy.filters.http.rbac", "typed_config": {"@type": T_HTTP_RBAC, **body, "rules_stat_prefix": f"{stat_prefix}{action.lower()}."}})
    return out


def http_filters(policies: list[AuthorizationPolicy], stat_prefix: str = "", *, tree: bool = False) -> list[dict[str, Any]]:
    return _filters(policies, tcp=False, stat_prefix=stat_prefix, tree=tree)


def network_filters(policies: list[AuthorizationPolicy], stat_prefix: str = "") -> list[dict[str, Any]]:
    return _filters(policies, tcp=True, stat_prefix=stat_prefix)


# -- ztunnel ------------------------------------------------------------------------------------------
def _ztunnel_match(match: Match, policy_ns: str) -> dict[str, Any]:
    parts = []
    for field, values in match.fields:
        negated = field.startswith("not_")
        base = field[4:] if negated else field
        if base in ("ports", "destination_ips"):
            item = operation_rules(base, values)
            parts.append(("permission", {"not_rule": item} if negated else item))
        else:
            item = source_ids(base, values, policy_ns)
            parts.append(("principal", {"not_id": item} if negated else item))
    return parts


def ztunnel_filters(policies: list[AuthorizationPolicy], stat_prefix: str) -> list[dict[str, Any]]:
    """Network RBAC with ztunnel's reduced semantics (L4 only; see mesh.ztunnel_authz)."""
    reduced = [reduce_policy(p) for p in policies if p.spec.action in ("ALLOW", "DENY")]
    out = []
    for action in ("DENY", "ALLOW"):
        present = [z for z in reduced if z.action == action]
        if not present:
            continue
        envoy_policies: dict[str, Any] = {}
        for z in sorted(present, key=lambda z: (z.namespace, z.name)):
            for i, group in enumerate(z.groups):
                envoy_policies[f"ns[{z.namespace}]-policy[{z.name}]-group[{i}]"] = _group(group, z)
        out.append({"name": "envoy.filters.network.rbac", "typed_config": {"@type": T_NET_RBAC, "stat_prefix": f"{stat_prefix}{action.lower()}.", "rules": {"action": action, "policies": envoy_policies}}})
    return out


def _group(group, z: ZtunnelPolicy) -> dict[str, Any]:
    permissions: list[dict[str, Any]] = []
    principals: list[dict[str, Any]] = []
    for clause in group.clauses:
        # A clause is ORed over its matches; all of a match's fields must hold. A match mixes no sides.
        alternatives = [_ztunnel_match(m, z.namespace) for m in clause.matches]
        if all(side == "principal" for alt in alternatives for side, _ in alt):
            principals.append(_or_ids([_and([m for _, m in alt], "ids") for alt in alternatives]))
        elif all(side == "permission" for alt in alternatives for side, _ in alt):
            permissions.append(_or_rules([_and([m for _, m in alt], "rules") for alt in alternatives]))
        else:
            raise AssertionError("a ztunnel clause mixes source and destination fields")
    return {
        "permissions": [_and(permissions, "rules") if permissions else ANY],
        "principals": [_and(principals, "ids") if principals else ANY],
    }


def _and(items: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    if len(items) == 1:
        return items[0]
    return {f"and_{kind}": {kind: items}}

