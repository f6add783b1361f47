"""The upstream CRD schemas (shared/crds) as an oracle and as hypothesis strategies.

Oracle (`verdict`): what the API server would decide on a create, for one object:
  1. prune explicit nulls of non-nullable fields, then apply schema defaults (structural defaulting);
  2. the OpenAPI v3 schema, converted to JSON Schema and checked with `jsonschema` (nullable,
     x-kubernetes-int-or-string, x-kubernetes-preserve-unknown-fields, unknown fields refused as
     `kubectl apply` does with strict field validation);
  3. `x-kubernetes-list-type: set|map` uniqueness;
  4. every `x-kubernetes-validations` CEL rule on the values present (tests/fuzz/cel.py). A rule the
     evaluator cannot decide makes the verdict `undecided`: such objects are skipped and counted.
Object names are checked as the API server checks custom resources: a DNS-1123 subdomain.

Strategies (`objects`): hypothesis strategies that build objects FROM a schema: required fields always,
optional ones sometimes (fewer the deeper they are), enums, integer bounds, maxItems/maxLength and patterns
(`from_regex`), with sizes kept small so that thousands of examples fit in CI's time.
"""

from __future__ import annotations

import copy
import re
import string
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from hypothesis import strategies as st

from waypost.api.load import KINDS

from . import cel

CRD_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "crds"
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True)
class CRDKind:
    group: str
    kind: str
    version: str
    namespaced: bool
    schema: dict[str, Any]  # openAPIV3Schema of that version

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


@lru_cache(maxsize=None)
def crd_kinds() -> dict[str, CRDKind]:
    """Every implemented kind that has an upstream CRD, at the first version waypost supports that is served."""
    crds: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                crds[(doc["spec"]["group"], doc["spec"]["names"]["kind"])] = doc
    out: dict[str, CRDKind] = {}
    for (group, kind), cls in KINDS.items():
        crd = crds.get((group, kind))
        if crd is None:
            continue
        served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
        version = next((v for v in cls.VERSIONS if v in served), None)
        if version is None:
            continue
        out[kind] = CRDKind(
            group, kind, version, crd["spec"]["scope"] == "Namespaced", served[version]["schema"]["openAPIV3Schema"]
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# OpenAPI v3 (Kubernetes structural schema) → JSON Schema


def to_jsonschema(node: Any) -> Any:
    if isinstance(node, list):
        return [to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("format", "default", "description", "nullable"):
            continue
        if key in ("properties",):
            out[key] = {k: to_jsonschema(v) for k, v in value.items()}
        elif key == "additionalProperties" and isinstance(value, dict):
            out[key] = to_jsonschema(value)
        elif key in ("items", "not", "allOf", "anyOf", "oneOf"):
            out[key] = to_jsonschema(value)
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}] + out.get("anyOf", [])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@lru_cache(maxsize=None)
def _validator(kind: str) -> jsonschema.protocols.Validator:
    schema = to_jsonschema(crd_kinds()[kind].schema)
    # Every object may carry these at its root, whatever its schema lists.
    schema["properties"] = {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
        **schema.get("properties", {}),
    }
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema)


# ---------------------------------------------------------------------------------------------------------
# Defaulting and null pruning (the API server does both before validating)


def _prune_and_default(schema: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties") or {}
        addl = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else None
        preserve = schema.get("x-kubernetes-preserve-unknown-fields")
        out: dict[str, Any] = {}
        for key, item in value.items():
            sub = props.get(key) or addl
            if sub is None:
                out[key] = item  # unknown: left for the validator to refuse (or preserved)
                continue
            if item is None and not sub.get("nullable") and not sub.get("x-kubernetes-preserve-unknown-fields"):
                continue
            out[key] = _prune_and_default(sub, item)
        for key, sub in props.items():
            if key not in out and "default" in sub:
                out[key] = _prune_and_default(sub, copy.deepcopy(sub["default"]))
        del preserve
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_prune_and_default(schema["items"], v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------------
# The verdict


@dataclass
class Verdict:
    errors: list[tuple[tuple[Any, ...], str]] = field(default_factory=list)
    undecided: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors and not self.undecided


def _key_of(item: Any, keys: list[str]) -> Any:
    return tuple(repr(item.get(k)) for k in keys) if isinstance(item, dict) else repr(item)


def _walk_rules(schema: dict[str, Any], value: Any, path: tuple[Any, ...], verdict: Verdict) -> None:
    for rule in schema.get("x-kubernetes-validations") or ():
        if "oldSelf" in rule["rule"]:
            continue  # a transition rule: not evaluated on create
        try:
            ok = cel.check(rule["rule"], value)
        except cel.CelUnsupported as exc:
            verdict.undecided.append(f"{_render(path)}: {rule['rule'][:60]}…: {exc}")
            continue
        if not ok:
            verdict.errors.append((path, rule.get("message") or f"failed rule: {rule['rule']}"))
    list_type = schema.get("x-kubernetes-list-type")
    if isinstance(value, list) and list_type in ("set", "map"):
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen = [_key_of(v, keys) if list_type == "map" else repr(v) for v in value]
        if len(seen) != len(set(seen)):
            verdict.errors.append((path, f"Duplicate value (list-type {list_type})"))
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties") or {}
        addl = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else None
        for key, item in value.items():
            sub = props.get(key) or addl
            if sub is not None:
                _walk_rules(sub, item, path + (key,), verdict)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _walk_rules(schema["items"], item, path + (i,), verdict)


def normalize(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return _prune_and_default(crd_kinds()[kind].schema, obj)


def verdict(kind: str, obj: dict[str, Any]) -> Verdict:
    spec = crd_kinds()[kind]
    result = Verdict()
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name = meta.get("name")
    if not isinstance(name, str) or len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        result.errors.append((("metadata", "name"), "a lowercase RFC 1123 subdomain"))
    data = normalize(kind, obj)
    for err in _validator(kind).iter_errors(data):
        result.errors.append((tuple(err.absolute_path), err.message[:200]))
    if not result.errors:  # CEL rules run on schema-valid objects (their types are then known)
        _walk_rules(spec.schema, data, (), result)
    return result


def _render(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


render_path = _render


# ---------------------------------------------------------------------------------------------------------
# Strategies


DNS_LABEL_ST = st.from_regex(r"\A[a-z]([-a-z0-9]{0,6}[a-z0-9])?\Z")
HOST_ST = st.builds(lambda a, b: f"{a}.{b}", DNS_LABEL_ST, st.sampled_from(["example.com", "svc", "local", "io"]))
LOOPBACK_ST = st.integers(1, 254).map(lambda n: f"127.0.0.{n}")
PLAIN_TEXT = st.text(alphabet=string.ascii_letters + string.digits + "-._/:*", max_size=12)
ANY_TEXT = st.text(max_size=12)  # any code point but lone surrogates: YAML files are UTF-8

# Values a real manifest would hold for fields of these names. They are offered next to the schema-driven
# strategy (never instead of it), so that objects get past the mesh-level checks some of the time.
HINTS: dict[str, st.SearchStrategy[Any]] = {
    "name": DNS_LABEL_ST,
    "namespace": DNS_LABEL_ST,
    "sectionName": DNS_LABEL_ST,
    "gatewayClassName": DNS_LABEL_ST,
    "serviceAccount": DNS_LABEL_ST,
    "hostname": HOST_ST,
    "hosts": HOST_ST,
    "hostnames": HOST_ST,
    "address": LOOPBACK_ST,
    "addresses": LOOPBACK_ST,
    "port": st.integers(1, 65535),
    "number": st.integers(1, 65535),
    "targetPort": st.integers(1, 65535),
    "url": st.sampled_from(["https://example.com/filter.wasm", "oci://ghcr.io/x/y:1", "file:///opt/f.wasm"]),
    "issuer": HOST_ST,
    "jwksUri": st.just("https://example.com/jwks.json"),
    "key": st.sampled_from(["request.headers[x-a]", "source.ip", "destination.port", "app"]),
    "principals": st.sampled_from(["cluster.local/ns/a/sa/b", "*"]),
    "methods": st.sampled_from(["GET", "POST"]),
    "paths": st.sampled_from(["/a", "/b*", "*"]),
    "ipBlocks": st.sampled_from(["10.0.0.0/8", "127.0.0.1"]),
    "group": st.sampled_from(["", "gateway.networking.k8s.io"]),
    "kind": st.sampled_from(["Service", "Gateway"]),
}


def _regex_strategy(pattern: str, min_len: int, max_len: int) -> st.SearchStrategy[str]:
    try:
        compiled = re.compile(pattern)
        base = st.from_regex(compiled, fullmatch=True)
    except (re.error, TypeError, ValueError, NotImplementedError):
        return st.nothing()
    return base.filter(lambda s: min_len <= len(s) <= max_len and "\n" not in s)


def _string_strategy(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    if "enum" in schema:
        return st.sampled_from(list(schema["enum"]))
    min_len = schema.get("minLength", 0)
    max_len = schema.get("maxLength", 10_000)
    if "pattern" in schema:
        return _regex_strategy(schema["pattern"], min_len, max_len)
    cap = min(max_len, max(min_len, 12))
    return st.one_of(
        st.text(alphabet=string.ascii_lowercase + string.digits + "-.", min_size=min_len, max_size=cap),
        st.text(min_size=min_len, max_size=cap),
    )


def _int_strategy(schema: dict[str, Any]) -> st.SearchStrategy[int]:
    if "enum" in schema:
        return st.sampled_from(list(schema["enum"]))
    lo = schema.get("minimum")
    hi = schema.get("maximum")
    if schema.get("format") == "int32":
        lo = -(2**31) if lo is None else lo
        hi = 2**31 - 1 if hi is None else hi
    lo = -1000 if lo is None else lo
    hi = 70_000 if hi is None else hi
    lo, hi = int(lo), int(hi)
    edges = sorted({lo, hi, min(max(0, lo), hi), min(max(1, lo), hi)})
    return st.one_of(st.sampled_from(edges), st.integers(lo, min(hi, lo + 100_000)))


JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), PLAIN_TEXT)
JSON_VALUE = st.recursive(JSON_SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(PLAIN_TEXT, inner, max_size=2)), max_leaves=4)


def strategy(schema: dict[str, Any], name: str = "", depth: int = 0) -> st.SearchStrategy[Any]:
    """A strategy for values of `schema` (valid ones most of the time; the oracle decides)."""
    base = _strategy(schema, depth)
    hint = HINTS.get(name)
    if hint is not None:
        if schema.get("type") == "array":
            items = schema.get("items") or {}
            if items.get("type") in ("string", "integer") and "enum" not in items:
                max_items = min(schema.get("maxItems", 3), 3)
                return st.one_of(base, st.lists(hint, min_size=min(schema.get("minItems", 0), max_items) or 1, max_size=max_items))
            return base
        if schema.get("type") in ("string", "integer") and "enum" not in schema or schema.get("x-kubernetes-int-or-string"):
            return st.one_of(hint, base)
    return base


def _strategy(schema: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
    if schema.get("x-kubernetes-int-or-string"):
        return st.one_of(_int_strategy(schema), _string_strategy(schema))
    typ = schema.get("type")
    if typ == "string":
        return _string_strategy(schema)
    if typ == "integer":
        return _int_strategy(schema)
    if typ == "number":
        return st.one_of(_int_strategy(schema), st.floats(0, 100, allow_nan=False))
    if typ == "boolean":
        return st.booleans()
    if typ == "array":
        items = schema.get("items") or {}
        lo = schema.get("minItems", 0)
        hi = min(schema.get("maxItems", 1000), lo + (2 if depth < 4 else 1))
        return st.lists(strategy(items, "", depth + 1), min_size=lo, max_size=max(lo, hi))
    if typ == "object" or "properties" in schema:
        props: dict[str, Any] = schema.get("properties") or {}
        if not props:
            addl = schema.get("additionalProperties")
            if isinstance(addl, dict):
                keys = st.one_of(DNS_LABEL_ST, PLAIN_TEXT.filter(bool))
                return st.dictionaries(keys, strategy(addl, "", depth + 1), max_size=2)
            if schema.get("x-kubernetes-preserve-unknown-fields"):
                return st.dictionaries(PLAIN_TEXT, JSON_VALUE, max_size=2)
            return st.just({})
        required = set(schema.get("required") or ())
        req = {k: strategy(v, k, depth + 1) for k, v in props.items() if k in required}
        # Optional fields: each present with a probability that falls with depth; deep ones only when required.
        optional = {k: strategy(v, k, depth + 1) for k, v in props.items() if k not in required} if depth < 7 else {}
        if not optional:
            return st.fixed_dictionaries(req)
        return _object(req, optional, 4 if depth < 3 else 2)
    if "anyOf" in schema or "oneOf" in schema:
        return JSON_VALUE
    return JSON_VALUE


@st.composite
def _object(draw, req: dict[str, Any], optional: dict[str, Any], max_opt: int) -> dict[str, Any]:
    out = {k: draw(v) for k, v in req.items()}
    chosen = draw(st.lists(st.sampled_from(sorted(optional)), max_size=max_opt, unique=True))
    for k in chosen:
        out[k] = draw(optional[k])
    return out


@lru_cache(maxsize=None)
def objects(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """Whole manifests of `kind`: valid metadata and a spec drawn from the CRD's schema."""
    crd = crd_kinds()[kind]
    spec_schema = (crd.schema.get("properties") or {}).get("spec") or {"type": "object"}
    meta = st.fixed_dictionaries(
        {"name": st.from_regex(r"\A[a-z]([-a-z0-9.]{0,10}[a-z0-9])?\Z").filter(DNS_SUBDOMAIN.match)},
        optional={"namespace": DNS_LABEL_ST, "labels": st.dictionaries(DNS_LABEL_ST, DNS_LABEL_ST, max_size=2)}
        if crd.namespaced
        else {"labels": st.dictionaries(DNS_LABEL_ST, DNS_LABEL_ST, max_size=2)},
    )
    return st.builds(
        lambda m, s: {"apiVersion": crd.api_version, "kind": kind, "metadata": m, "spec": s},
        meta,
        strategy(spec_schema, "spec", 0),
    )


def schema_at(kind: str, path: tuple[Any, ...]) -> dict[str, Any] | None:
    """The schema node for a path in an object of `kind` (None when the path leaves the schema)."""
    node: dict[str, Any] | None = crd_kinds()[kind].schema
    for part in path:
        if node is None:
            return None
        if isinstance(part, int):
            node = node.get("items")
        else:
            props = node.get("properties") or {}
            addl = node.get("additionalProperties")
            node = props.get(part) or (addl if isinstance(addl, dict) else None)
    return node
