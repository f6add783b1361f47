"""Fuzzed input for `waypost.api.load_text` (issue 9): no crash, no hang, every rejection a located error.

Inputs: objects generated from the upstream CRD schemas (and small hand-written schemas of the core kinds
waypost reads), then mutated per field (wrong types, out-of-range numbers, huge strings and lists, deep
nesting, unicode), and raw-text attacks (duplicate keys, anchors and aliases, alias bombs, non-mapping and
multi-document streams, arbitrary text). Example counts are in each `@fuzz(N)`; see settings.py.
"""

from __future__ import annotations

import copy
import time
import tracemalloc
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from . import schema as S
from .checks import check_deterministic, check_result, dump, load
from .settings import fuzz

CRD_KINDS = sorted(S.crd_kinds())

# Core kinds have no CRD: these strategies follow the Kubernetes API for the fields waypost reads.
_LABELS = st.dictionaries(S.DNS_LABEL_ST, S.DNS_LABEL_ST, max_size=2)
_META = st.fixed_dictionaries({"name": S.DNS_LABEL_ST}, optional={"namespace": S.DNS_LABEL_ST, "labels": _LABELS})
_PORT = st.fixed_dictionaries(
    {"port": st.integers(1, 65535)},
    optional={"name": S.DNS_LABEL_ST, "targetPort": st.one_of(st.integers(1, 65535), S.DNS_LABEL_ST),
              "protocol": st.sampled_from(["TCP", "UDP"]), "appProtocol": st.sampled_from(["http", "grpc", "tcp"])},
)
_CONTAINER = st.fixed_dictionaries(
    {"name": S.DNS_LABEL_ST, "image": st.sampled_from(["echo", "nginx:1", "curl"])},
    optional={"ports": st.lists(st.fixed_dictionaries({"containerPort": st.integers(1, 65535)}), max_size=2)},
)
_POD_SPEC = st.fixed_dictionaries({"containers": st.lists(_CONTAINER, min_size=1, max_size=2)}, optional={"serviceAccountName": S.DNS_LABEL_ST})
CORE: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "Namespace": st.fixed_dictionaries({"apiVersion": st.just("v1"), "kind": st.just("Namespace"), "metadata": _META}),
    "ServiceAccount": st.fixed_dictionaries({"apiVersion": st.just("v1"), "kind": st.just("ServiceAccount"), "metadata": _META}),
    "ConfigMap": st.fixed_dictionaries(
        {"apiVersion": st.just("v1"), "kind": st.just("ConfigMap"), "metadata": _META},
        optional={"data": st.dictionaries(S.DNS_LABEL_ST, S.PLAIN_TEXT, max_size=2)},
    ),
    "Service": st.fixed_dictionaries(
        {"apiVersion": st.just("v1"), "kind": st.just("Service"), "metadata": _META,
         "spec": st.fixed_dictionaries({"ports": st.lists(_PORT, max_size=2)}, optional={"selector": _LABELS})},
    ),
    "Pod": st.fixed_dictionaries({"apiVersion": st.just("v1"), "kind": st.just("Pod"), "metadata": _META, "spec": _POD_SPEC}),
    "Deployment": st.fixed_dictionaries(
        {"apiVersion": st.just("apps/v1"), "kind": st.just("Deployment"), "metadata": _META,
         "spec": st.fixed_dictionaries(
             {"selector": st.fixed_dictionaries({"matchLabels": st.just({"app": "a"})}),
              "template": st.fixed_dictionaries({"metadata": st.just({"labels": {"app": "a"}}), "spec": _POD_SPEC})},
             optional={"replicas": st.integers(0, 3)})},
    ),
}
ALL_KINDS = CRD_KINDS + sorted(CORE)


def manifests(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    return CORE[kind] if kind in CORE else S.objects(kind)


def _check(obj_or_docs: Any, *, many: bool = False) -> None:
    docs = obj_or_docs if many else [obj_or_docs]
    try:
        text = "---\n".join(dump(d) for d in docs)
    except (yaml_errors := (UnicodeEncodeError,)):  # noqa: F841 - a lone surrogate cannot be dumped
        return
    result = load(text)
    check_result(result, text, documents=docs)
    check_deterministic(text, result)


# ---------------------------------------------------------------------------------------------------------
# 1. Objects from the schemas, as they are: 21 kinds × 60 = 1,260 examples


@pytest.mark.parametrize("kind", ALL_KINDS)
@fuzz(60)
@given(data=st.data())
def test_generated_objects_load_cleanly(kind, data):
    _check(data.draw(manifests(kind)))


# ---------------------------------------------------------------------------------------------------------
# 2. One field mutated: 21 kinds × 100 = 2,100 examples

_UNICODE = st.sampled_from(
    ["\u202eevil\u202c", "a\x00b", "ünï\u0301cødé", "\U0001f600", "\ufeffbom", "\u200b", "x\u2028y", "\\", "'\"", "a" * 300]
)
WRONG_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.sampled_from([0, -1, 65536, 2**31, 2**63, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    _UNICODE,
    st.just("x" * 20_000),  # huge string
    st.just(list(range(2_000))),  # huge list
    st.just([{"name": "a", "port": 1}] * 300),
    st.integers(50, 300).map(lambda n: _nest(n)),  # deep nesting
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.lists(st.text(max_size=3), max_size=3),
)


def _nest(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = {"a": value} if i % 2 else [value]
    return value


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out.extend(_paths(v, prefix + (k,)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(_paths(v, prefix + (i,)))
    return out


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = obj
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    return obj


def _delete(obj: Any, path: tuple[Any, ...]) -> Any:
    parent = obj
    for part in path[:-1]:
        parent = parent[part]
    del parent[path[-1]]
    return obj


@st.composite
def _mutated(draw, kind: str) -> Any:
    obj = copy.deepcopy(draw(manifests(kind)))
    paths = _paths(obj)
    path = draw(st.sampled_from(paths))
    action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "unknown"]))
    if action == "delete" and path:
        return _delete(obj, path)
    if action == "unknown":
        target = obj
        for part in path:
            target = target[part]
        if isinstance(target, dict):
            target[draw(st.text(max_size=8))] = draw(WRONG_VALUES)
            return obj
    return _set(obj, path, draw(WRONG_VALUES))


_MUTATED: dict[str, Any] = {}


def mutated(kind: str) -> st.SearchStrategy[Any]:
    if kind not in _MUTATED:
        _MUTATED[kind] = _mutated(kind)
    return _MUTATED[kind]


@pytest.mark.parametrize("kind", ALL_KINDS)
@fuzz(100)
@given(data=st.data())
def test_mutated_objects_are_refused_cleanly(kind, data):
    _check(data.draw(mutated(kind)))


# ---------------------------------------------------------------------------------------------------------
# 3. Streams: several documents, one of them bad or not a mapping, the others still load. 700 examples

NON_MAPPINGS = st.one_of(st.integers(), st.text(max_size=10), st.lists(st.integers(), max_size=3), st.booleans(), st.floats())
GOOD = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "good-one"}},
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "good-two", "namespace": "a"}},
]


@fuzz(300)
@given(kind=st.sampled_from(ALL_KINDS), data=st.data())
def test_one_bad_document_in_a_stream_loses_nothing_else(kind, data):
    bad = data.draw(st.one_of(mutated(kind), NON_MAPPINGS))
    try:
        text = "---\n".join([dump(GOOD[0]), dump(bad), dump(GOOD[1])])
    except UnicodeEncodeError:
        return
    result = load(text)
    check_result(result, text)
    loaded = {r.name for r in result.resources}
    assert {"good-one", "good-two"} <= loaded, [d.render() for d in result.diagnostics]


@fuzz(400)
@given(kind=st.sampled_from(ALL_KINDS), data=st.data())
def test_a_syntax_error_is_located(kind, data):
    # Raw-text damage: a line duplicated (often a duplicate key), cut, or re-indented.
    text = dump(data.draw(manifests(kind)))
    lines = text.splitlines()
    i = data.draw(st.integers(0, len(lines) - 1))
    op = data.draw(st.sampled_from(["dup", "cut", "indent", "tab", "junk"]))
    if op == "dup":
        lines.insert(i, lines[i])
    elif op == "cut":
        lines[i] = lines[i][: data.draw(st.integers(0, max(0, len(lines[i]) - 1)))]
    elif op == "indent":
        lines[i] = " " + lines[i]
    elif op == "tab":
        lines[i] = "\t" + lines[i]
    else:
        lines.insert(i, data.draw(st.sampled_from(["{", "]", "- - -", ": :", "&a", "*nope", "!!binary x", "? [a]", "<<: {}", "%YAML 1.1"])))
    text = "\n".join(lines) + "\n"
    result = load(text)
    check_result(result, text)
    check_deterministic(text, result)


# ---------------------------------------------------------------------------------------------------------
# 4. YAML anchors, aliases and alias bombs: 600 examples

HEAD = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bomb\n"


def _bomb(width: int, depth: int, style: str) -> str:
    lines = [HEAD, "spec:\n"]
    lines.append(f"  l0: &l0 [{', '.join(['lol'] * width)}]\n")
    for i in range(1, depth + 1):
        refs = ", ".join([f"*l{i - 1}"] * width)
        lines.append(f"  l{i}: &l{i} " + (f"[{refs}]\n" if style == "seq" else "{" + ", ".join(f"k{j}: *l{i - 1}" for j in range(width)) + "}\n"))
    return "".join(lines)


@fuzz(150)
@given(width=st.integers(2, 12), depth=st.integers(4, 40), style=st.sampled_from(["seq", "map"]))
def test_alias_bombs_are_refused_quickly_with_bounded_memory(width, depth, style):
    text = _bomb(width, depth, style)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = load(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    check_result(result, text)
    if width**depth > 20_000:
        assert result.errors and "excessive aliasing" in result.errors[0].message, [d.render() for d in result.diagnostics]
        assert result.errors[0].kind == "ConfigMap" and result.errors[0].name == "bomb" and result.errors[0].field
    assert elapsed < 1.0, f"{elapsed:.2f}s"
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"


ANCHORED = st.sampled_from([
    HEAD + "data: &d {a: b}\nextra: *d\n",
    HEAD + "data: &d {a: b}\n",
    HEAD + "data:\n  a: &v value\n  b: *v\n",
    HEAD + "data: &d\n  a: *d\n",  # an alias inside its own anchor: a cycle
    HEAD + "data: &d [*d]\n",
    HEAD + "data: *undefined\n",
    HEAD + "data:\n  <<: {a: b}\n",
    HEAD + "data: {&k a: b, *k : c}\n",
    HEAD + "data: {? [a] : b}\n",
    HEAD + "data: {a: !!binary aGk=}\n",
    HEAD + "data: {a: !custom x}\n",
    HEAD + "data: {a: =}\n",
    HEAD + "data: {a: 2001-13-45}\n",
    HEAD + "data: {a: " + "9" * 5000 + "}\n",
    HEAD + "data: {a: 1e999}\n",
    "&a [*a]\n",
    "--- &a\n" + HEAD + "---\n*a\n",
])


@fuzz(450)
@given(text=ANCHORED, suffix=st.sampled_from(["", "---\n", "...\n", "---\n" + HEAD]), junk=st.text(max_size=4))
def test_anchors_aliases_and_tags_are_handled(text, suffix, junk):
    for candidate in (text + suffix, text + suffix + junk):
        result = load(candidate)
        check_result(result, candidate)
        check_deterministic(candidate, result)


# ---------------------------------------------------------------------------------------------------------
# 5. Arbitrary text and deep nesting: 3,000 examples

@fuzz(2700)
@given(text=st.one_of(st.text(max_size=200), st.text(alphabet="{}[]:,-&*!|>'\"#\n ?%@`abc0\t\\", max_size=200)))
def test_arbitrary_text_never_crashes(text):
    result = load(text)
    check_result(result, text)


@fuzz(300)
@given(depth=st.integers(1, 5_000), open_=st.sampled_from(["[", "{a: ", "- "]), where=st.sampled_from(["root", "spec", "label"]))
def test_deep_nesting_is_refused_cleanly(depth, open_, where):
    close = {"[": "]", "{a: ": "}", "- ": ""}[open_]
    if open_ == "- ":
        body = "".join("  " * i + "-\n" for i in range(min(depth, 400))) + "  " * min(depth, 400) + "x\n"
    else:
        body = open_ * depth + "x" + close * depth + "\n"
    if where == "root":
        text = body
    elif where == "spec":
        text = "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata:\n  name: deep\nspec:\n  configPatches:\n  - patch:\n      value: " + (body if open_ != "- " else "\n" + body)
    else:
        text = HEAD + "data:\n  a: " + (body if open_ != "- " else "\n" + body)
    result = load(text)
    check_result(result, text)
