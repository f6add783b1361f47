"""An RBAC filter's `rules` (ALLOW or DENY) as an equivalent `matcher`: a match tree keyed on the caller.

Envoy's rules engine tries the policies one by one in name order until one matches, so a waypoint's
cost per request grows with its rule count (~60 ns a rule measured, bench/RESULTS.md). Most rules name
their callers exactly (`from.source.principals: [cluster.local/ns/x/sa/y]`), and a request has one
caller: the tree looks the caller up in a hash map (`exact_match_map` on the filter-state object
`io.istio.peer_principal`, the one the `filter_state` principals read) and tries only the rules that could
match that caller, still in name order:

- the bucket of principal P lists every rule whose principals can only hold for P among others (its
  "keys" contain P) and every rule whose principals could hold for anyone (no keys), in name order;
- the map's `on_no_match` (a caller that is no key, or no caller) lists only the rules without keys.

A rule excluded from a bucket cannot match there, and each listed rule is the whole rule, so the first
match in a bucket is the first match of the rules engine: same decision and same policy name
(`rbac_access_denied_matched_policy[...]`). Within a bucket the checks of the caller are decided in
advance where that is exact (exact/prefix/suffix/contains without ignore_case); RE2 checks stay.

Envoy semantics relied on (envoy source/extensions/filters/common/rbac/engine_impl.cc,
RoleBasedAccessControlMatcherEngineImpl::handleAction): the action reached decides (ALLOW/LOG allow, DENY
denies), its `name` is the effective policy id; no action reached denies. Every matcher here ends in an
explicit `on_no_match`, so no result depends on how a nested no-match falls through.

Inputs and their rules-engine counterparts, which read the same data:
- `filter_state` principal ↔ FilterStateInput (both the object's serializeAsString);
- `header` ↔ HttpRequestHeaderMatchInput (both join repeated values with ","; absent: no match);
- `url_path` ↔ the `:path` header with the query cut off in the regex (Envoy's url_path is `:path` up to
  the first `?` or `#`, PathUtil::removeQueryAndFragment);
- `destination_port` ↔ DestinationPortInput (the local address's port, as a decimal string).
Anything else (IP ranges, metadata, URI templates, `ignore_case` paths, header matchers with other
options) makes `compile` return None: the filter keeps its `rules`. So does a filter with no exact
principal to dispatch on, one with fewer than MIN_RULES rules, or one whose buckets would repeat rules
too often (`MAX_FANOUT`).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from .common import PEER_PRINCIPAL_KEY

T_ACTION = "type.googleapis.com/envoy.config.rbac.v3.Action"
T_FILTER_STATE_INPUT = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.FilterStateInput"
T_HEADER_INPUT = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
T_DESTINATION_PORT_INPUT = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput"
NO_POLICY = "none"  # the name of the decision when no rule matches: Envoy prints "none" for an empty id too
MAX_FANOUT = 4  # bucket entries at most this many times the rule count (rules without keys repeat in every bucket)
# Fewer rules than this keep the rules engine: a tree costs about what one rule does per request (measured:
# a 1000-rule tree as fast as one rule) and its config is larger (a 1000-Service mesh of one-rule
# policies: control-plane RSS 290 → 296 MB).
MIN_RULES = 4

_STRING_FORMS = frozenset({"exact", "prefix", "suffix", "contains", "safe_regex"})


class Unsupported(Exception):
    """A part of a policy the match tree does not express (the filter keeps its rules)."""


# Predicates are xds.type.matcher.v3.Matcher.MatcherList.Predicate dicts, or these two constants.
TRUE: dict[str, Any] = {"_const": True}
FALSE: dict[str, Any] = {"_const": False}


def _combine(preds: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """`and_matcher`/`or_matcher` of `preds`, with TRUE and FALSE folded in."""
    absorbing, neutral = (FALSE, TRUE) if kind == "and_matcher" else (TRUE, FALSE)
    out = []
    for p in preds:
        if p is absorbing:
            return absorbing
        if p is not neutral:
            out.append(p)
    if not out:
        return neutral
    return out[0] if len(out) == 1 else {kind: {"predicate": out}}


def _and(preds: list[dict[str, Any]]) -> dict[str, Any]:
    return _combine(preds, "and_matcher")


def _or(preds: list[dict[str, Any]]) -> dict[str, Any]:
    return _combine(preds, "or_matcher")


def _not(p: dict[str, Any]) -> dict[str, Any]:
    if p is TRUE:
        return FALSE
    if p is FALSE:
        return TRUE
    return {"not_matcher": p}


def _input(name: str, type_url: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": type_url, **fields}}


def filter_state_input(key: str) -> dict[str, Any]:
    return _input("envoy.matching.inputs.filter_state", T_FILTER_STATE_INPUT, key=key)


def header_input(name: str) -> dict[str, Any]:
    return _input("envoy.matching.inputs.request_headers", T_HEADER_INPUT, header_name=name)


def _single(input_: dict[str, Any], match: Mapping[str, Any]) -> dict[str, Any]:
    value = dict(match)
    if "safe_regex" in value:  # xds's RegexMatcher names its engine (Envoy's defaults to RE2)
        value["safe_regex"] = {"google_re2": {}, **value["safe_regex"]}
    return {"single_predicate": {"input": input_, "value_match": value}}


def _string_match(m: Mapping[str, Any]) -> Mapping[str, Any]:
    """An Envoy StringMatcher the xds StringMatcher reads alike (same fields, same meaning)."""
    forms = [k for k in m if k != "ignore_case"]
    if len(forms) != 1 or forms[0] not in _STRING_FORMS:
        raise Unsupported(f"string matcher {sorted(m)}")
    if forms[0] == "safe_regex" and set(m["safe_regex"]) != {"regex"}:
        raise Unsupported("regex matcher options")
    return m


# -- the caller's identity, decided in advance --------------------------------------------------------
class Caller:
    """What a branch of the tree knows of the peer principal: that it is `known`, or (when `known` is None)
    that it is none of `not_any` (or absent)."""

    __slots__ = ("known", "not_any")

    def __init__(self, known: str | None, not_any: frozenset[str] = frozenset()) -> None:
        self.known, self.not_any = known, not_any

    def decide(self, m: Mapping[str, Any]) -> bool | None:
        """The value of a string match on the principal, where this branch knows it; None where Envoy must check."""
        if m.get("ignore_case") or "safe_regex" in m:
            return None
        ((form, value),) = m.items()
        if self.known is None:
            return False if form == "exact" and value in self.not_any else None
        p = self.known
        return {"exact": p == value, "prefix": p.startswith(value), "suffix": p.endswith(value), "contains": value in p}[form]


def principal(p: Mapping[str, Any], caller: Caller) -> dict[str, Any]:
    kind, v = _only(p, "principal")
    if kind == "any":
        return TRUE if v else FALSE
    if kind == "and_ids":
        return _and([principal(i, caller) for i in v.get("ids", [])])
    if kind == "or_ids":
        return _or([principal(i, caller) for i in v.get("ids", [])])
    if kind == "not_id":
        return _not(principal(v, caller))
    if kind == "filter_state":
        if set(v) != {"key", "string_match"}:
            raise Unsupported(f"filter_state principal {sorted(v)}")
        match = _string_match(v["string_match"])
        if v["key"] == PEER_PRINCIPAL_KEY:
            known = caller.decide(match)
            if known is not None:
                return TRUE if known else FALSE
        return _single(filter_state_input(v["key"]), match)
    if kind == "header":
        return _header(v)
    raise Unsupported(f"principal {kind}")


def permission(p: Mapping[str, Any]) -> dict[str, Any]:
    kind, v = _only(p, "permission")
    if kind == "any":
        return TRUE if v else FALSE
    if kind == "and_rules":
        return _and([permission(r) for r in v.get("rules", [])])
    if kind == "or_rules":
        return _or([permission(r) for r in v.get("rules", [])])
    if kind == "not_rule":
        return _not(permission(v))
    if kind == "header":
        return _header(v)
    if kind == "url_path":
        if set(v) != {"path"}:
            raise Unsupported(f"url_path {sorted(v)}")
        return url_path(_string_match(v["path"]))
    if kind == "destination_port":
        return _single(_input("envoy.matching.inputs.destination_port", T_DESTINATION_PORT_INPUT), {"exact": str(int(v))})
    raise Unsupported(f"permission {kind}")


def _only(p: Mapping[str, Any], what: str) -> tuple[str, Any]:
    if len(p) != 1:
        raise Unsupported(f"{what} with {sorted(p)}")
    ((kind, v),) = p.items()
    return kind, v


def _header(v: Mapping[str, Any]) -> dict[str, Any]:
    if set(v) != {"name", "string_match"}:
        raise Unsupported(f"header matcher {sorted(v)}")
    return _single(header_input(v["name"]), _string_match(v["string_match"]))


# -- url_path on :path -----------------------------------------------------------------------------------
_CUT = "(?:[?#].*)?"  # what url_path cuts off: from the first '?' or '#' to the end
# The atoms rbac.path_regex writes, and the same atoms unable to cross into the query.
_ATOMS = (("(;[^/]*)?", "(;[^/?#]*)?"), ("[^/]*", "[^/?#]*"), ("[^/]+", "[^/?#]+"), (".*", "[^?#]*"), (".+", "[^?#]+"))
_META = frozenset("()[]{}.*+?|^$\\")


def url_path(m: Mapping[str, Any]) -> dict[str, Any]:
    """Envoy's `url_path` string match as a match on `:path`: the part before the first `?`/`#` must match."""
    if m.get("ignore_case"):
        raise Unsupported("url_path with ignore_case")
    ((form, value),) = m.items()
    path = header_input(":path")
    if form == "safe_regex":
        return _single(path, {"safe_regex": {"regex": path_regex_on_path(value["regex"])}})
    if "?" in value or "#" in value:
        return FALSE  # the cut path holds neither
    if form == "prefix":
        return _single(path, {"prefix": value})  # the cut path starts with it iff :path does
    literal = re.escape(value)
    regex = {"exact": literal, "suffix": "[^?#]*" + literal, "contains": f"[^?#]*{literal}[^?#]*"}[form]
    return _single(path, {"safe_regex": {"regex": regex + _CUT}})


def path_regex_on_path(regex: str) -> str:
    """A regex written by rbac.path_regex (literals, `.*`, `.+`, `[^/]*`, `[^/]+`, `(;[^/]*)?`), rewritten
    so that its full match on `:path` is its full match on the path cut at the first `?`/`#`: no atom may
    cross a `?`/`#`, then anything from one on may follow. Any other construct: Unsupported."""
    out, i = [], 0
    while i < len(regex):
        for atom, bounded in _ATOMS:
            if regex.startswith(atom, i):
                out.append(bounded)
                i += len(atom)
                break
        else:
            ch = regex[i]
            if ch == "\\":
                if i + 1 >= len(regex) or regex[i + 1].isalnum():
                    raise Unsupported(f"regex escape in {regex!r}")
                literal = regex[i + 1]
                i += 2
            elif ch in _META:
                raise Unsupported(f"regex {regex!r}")
            else:
                literal = ch
                i += 1
            if literal in "?#":
                raise Unsupported(f"regex {regex!r} needs a literal {literal!r}, which url_path never holds")
            out.append(re.escape(literal))
    return "".join(out) + _CUT


# -- keys -----------------------------------------------------------------------------------------------
def principal_keys(p: Mapping[str, Any]) -> frozenset[str] | None:
    """Exact principals one of which the caller must be for `p` to hold; None when `p` may hold for anyone."""
    if len(p) != 1:
        return None
    ((kind, v),) = p.items()
    if kind == "filter_state" and v.get("key") == PEER_PRINCIPAL_KEY:
        m = v.get("string_match", {})
        return frozenset([m["exact"]]) if set(m) == {"exact"} and isinstance(m["exact"], str) else None
    if kind == "or_ids":
        parts = [principal_keys(i) for i in v.get("ids", [])]
        if not parts or any(k is None for k in parts):
            return None
        return frozenset().union(*parts)  # type: ignore[arg-type]
    if kind == "and_ids":
        parts = [k for k in (principal_keys(i) for i in v.get("ids", [])) if k is not None]
        return frozenset.intersection(*parts) if parts else None
    return None


def policy_keys(policy: Mapping[str, Any]) -> frozenset[str] | None:
    parts = [principal_keys(p) for p in policy.get("principals", [])]
    if not parts or any(k is None for k in parts):
        return None
    return frozenset().union(*parts)  # type: ignore[arg-type]


# -- the tree -------------------------------------------------------------------------------------------
def _action(name: str, action: str) -> dict[str, Any]:
    return {"action": {"name": "envoy.rbac.action", "typed_config": {"@type": T_ACTION, "name": name, "action": action}}}


def _branch(entries: list[tuple[str, Mapping[str, Any], dict[str, Any]]], caller: Caller, action: str, otherwise: dict[str, Any]) -> dict[str, Any]:
    """The OnMatch of one caller branch: its rules (name, policy, permission predicate) in order, first
    match wins, else `otherwise`."""
    matchers = []
    for name, policy, allowed in entries:
        pred = _and([allowed, _or([principal(p, caller) for p in policy.get("principals", [])])])
        if pred is FALSE:
            continue
        if pred is TRUE:
            otherwise = _action(name, action)  # matches everything left: the rules after it are never reached
            break
        matchers.append({"predicate": pred, "on_match": _action(name, action)})
    if not matchers:
        return otherwise
    return {"matcher": {"matcher_list": {"matchers": matchers}, "on_no_match": otherwise}}


def compile_rules(rules: Mapping[str, Any], min_rules: int = MIN_RULES) -> dict[str, Any] | None:
    """The match tree for an RBAC `rules` (ALLOW or DENY) that decides alike, or None (see the module doc)."""
    action = rules.get("action", "ALLOW")
    if action not in ("ALLOW", "DENY"):
        return None
    entries = sorted(rules.get("policies", {}).items())
    if len(entries) < min_rules:
        return None
    for _, policy in entries:
        if set(policy) - {"permissions", "principals"}:
            return None
    keys = [policy_keys(policy) for _, policy in entries]
    every = frozenset().union(*[k for k in keys if k is not None])
    if not every:
        return None
    at: dict[str, list[int]] = {}
    anyone: list[int] = []
    for i, k in enumerate(keys):
        for key in k if k is not None else ():
            at.setdefault(key, []).append(i)
        if k is None:
            anyone.append(i)
    if len(anyone) * len(every) + len(entries) > MAX_FANOUT * len(entries):
        return None
    otherwise = _action(NO_POLICY, "DENY" if action == "ALLOW" else "ALLOW")
    try:
        # the permission side does not depend on the caller: built once per rule
        entries = [(name, policy, _or([permission(p) for p in policy.get("permissions", [])])) for name, policy in entries]
        by_key = {
            key: _branch([entries[i] for i in sorted(at[key] + anyone)], Caller(key), action, otherwise)
            for key in sorted(every)
        }
        rest = _branch([entries[i] for i in anyone], Caller(None, every), action, otherwise)
    except Unsupported:
        return None
    tree = {"matcher_tree": {"input": filter_state_input(PEER_PRINCIPAL_KEY), "exact_match_map": {"map": by_key}}, "on_no_match": rest}
    return tree
