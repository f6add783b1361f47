"""YAML files and directories → typed resources, with every error located at file:line, resource and field.

Each document is validated on its own: one bad resource is reported and skipped, the others still load
(the caller decides whether any error should stop it, as `waypost up` does).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from waypost import collector

from . import core, destinationrule, envoyfilter, extensions, gateway, grpcroute, httproute, l4routes, meshconfig, networking, security, telemetry, virtualservice
from .diagnostics import Diagnostic, error, warning
from .meta import Resource, Source

# Kinds waypost implements, by (group, kind).
KINDS: dict[tuple[str, str], type[Resource]] = {
    (cls.GROUP, cls.KIND): cls
    for cls in (
        core.Namespace,
        core.ServiceAccount,
        core.Service,
        core.ConfigMap,
        core.Pod,
        core.Deployment,
        gateway.GatewayClass,
        gateway.Gateway,
        gateway.ReferenceGrant,
        httproute.HTTPRoute,
        grpcroute.GRPCRoute,
        l4routes.TCPRoute,
        l4routes.TLSRoute,
        networking.WorkloadEntry,
        networking.ServiceEntry,
        networking.WorkloadGroup,
        virtualservice.VirtualService,
        destinationrule.DestinationRule,
        security.AuthorizationPolicy,
        security.RequestAuthentication,
        security.PeerAuthentication,
        extensions.WasmPlugin,
        extensions.TrafficExtension,
        telemetry.Telemetry,
        envoyfilter.EnvoyFilter,
    )
}

# Kinds a later release enforces. Refusing them is the safe choice: an AuthorizationPolicy that loads but
# is not enforced would let through traffic the user meant to deny.
NOT_SUPPORTED_YET: dict[tuple[str, str], str] = {
    ("networking.istio.io", "Sidecar"): "networking",
    ("gateway.networking.k8s.io", "UDPRoute"): "routing",
    ("gateway.networking.k8s.io", "BackendTLSPolicy"): "routing",
}

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")

# API groups whose kinds waypost knows; anything else (another product's CRDs) is skipped with a warning.
# Core and apps kinds we do not model (Secret, StatefulSet...) are skipped with a warning instead.
KNOWN_GROUPS = frozenset({g for g, _ in KINDS} | {g for g, _ in NOT_SUPPORTED_YET}) - {"", "apps"}


@dataclass(frozen=True)
class Refused:
    """A document of a kind waypost knows but does not enforce yet, kept raw for `analyze`."""

    group: str
    kind: str
    namespace: str
    name: str
    data: dict[str, Any]
    source: Source


@dataclass
class LoadResult:
    resources: list[Resource] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    # file -> (its text, what loading it alone gave), for `load_paths(..., reuse=)` (not a result itself).
    per_file: dict[str, tuple[str, "LoadResult"]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity.value == "Error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity.value == "Warning"]

    def extend(self, other: "LoadResult") -> None:
        self.resources.extend(other.resources)
        self.diagnostics.extend(other.diagnostics)
        self.refused.extend(other.refused)


def manifest_files(paths: Iterable[Path]) -> tuple[list[Path], list[Diagnostic]]:
    """Expands files and directories (recursively, sorted) into manifest files."""
    files: list[Path] = []
    problems: list[Diagnostic] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
            )
        elif path.is_file():
            files.append(path)
        else:
            problems.append(error(str(path), 0, "no such file or directory"))
    return files, problems


def load_paths(paths: Sequence[Path | str], reuse: Mapping[str, tuple[str, LoadResult]] | None = None) -> LoadResult:
    """Every manifest under `paths`, validated. `reuse`: the `per_file` of an earlier result; a file whose
    text is unchanged keeps that load (the very resource objects) instead of being parsed again."""
    files, problems = manifest_files(Path(p) for p in paths)
    result = LoadResult(diagnostics=problems)
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            result.diagnostics.append(error(str(file), 0, f"cannot read: {exc}"))
            continue
        hit = reuse.get(str(file)) if reuse is not None else None
        loaded = hit[1] if hit is not None and hit[0] == text else load_text(text, str(file))
        result.per_file[str(file)] = (text, loaded)
        result.extend(loaded)
    result.diagnostics.extend(_duplicates(result.resources))
    result.resources = _dedupe(result.resources)
    return result


def load_text(text: str, filename: str = "<stdin>") -> LoadResult:
    # Composing keeps every node of the file alive; the collector's full passes over that growing heap
    # were more than half of loading a large file (1000 Services: 1.3 s -> 0.55 s).
    with collector.paused():
        return _load_text(text, filename)


def _load_text(text: str, filename: str) -> LoadResult:
    result = LoadResult()
    documents: list[LoadResult] = []
    try:
        # One document's nodes at a time (a file's whole node graph at once was most of the memory that
        # loading a large file left the process holding); a syntax error anywhere still loads nothing.
        for node in yaml.compose_all(text, Loader=_COMPOSER):
            if node is not None:
                documents.append(_load_document(node, filename))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        if isinstance(exc, yaml.reader.ReaderError):  # a forbidden character: it has a position, not a mark
            line = text.count("\n", 0, exc.position) + 1
            char = exc.character if isinstance(exc.character, int) else ord(exc.character)
            problem = f"unacceptable character #x{char:04x}: {exc.reason}"
        else:
            problem = getattr(exc, "problem", None) or str(exc)
        result.diagnostics.append(error(filename, line or 1, f"YAML syntax error: {problem}"))
        return result
    except UnicodeEncodeError as exc:  # a lone surrogate in a str that did not come from a UTF-8 file
        line = text.count("\n", 0, exc.start) + 1
        result.diagnostics.append(error(filename, line, f"YAML syntax error: invalid Unicode character {exc.object[exc.start]!r}"))
        return result
    for document in documents:
        result.extend(document)
    return result


def _load_document(node: yaml.Node, filename: str) -> LoadResult:
    result = LoadResult()
    line = node.start_mark.line + 1
    lines: dict[tuple[Any, ...], int] = {}
    try:
        data = _to_python(node, (), lines, _Budget(node))
    except _DocumentError as exc:
        result.diagnostics.append(error(filename, exc.line, exc.message, field=_render_path(exc.path), **_where_of(node)))
        return result
    except RecursionError:
        result.diagnostics.append(error(filename, line, "the document nests too deeply", **_where_of(node)))
        return result
    if data is None:
        return result
    if not isinstance(data, dict):
        result.diagnostics.append(error(filename, line, "a manifest must be a mapping with apiVersion and kind"))
        return result
    if data.get("kind") == "List" and isinstance(data.get("items"), list):
        for index, item_node in enumerate(_items_nodes(node)):
            result.extend(_load_document(item_node, filename))
        return result

    kind = data.get("kind")
    api_version = data.get("apiVersion")
    meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    where = {
        "kind": kind if isinstance(kind, str) else "",
        "namespace": str(meta.get("namespace") or ""),
        "name": str(meta.get("name") or ""),
    }
    for required in ("apiVersion", "kind"):
        if not isinstance(data.get(required), str) or not data.get(required):
            result.diagnostics.append(
                error(filename, line, "required field is missing or not a string", field=required, **where)
            )
    if result.diagnostics:
        return result
    group, _, version = api_version.rpartition("/")
    cls = KINDS.get((group, kind))
    if cls is None:
        area = NOT_SUPPORTED_YET.get((group, kind))
        if area is not None:
            result.refused.append(Refused(group, kind, where["namespace"], where["name"], data, Source(file=filename, line=line)))
            result.diagnostics.append(
                error(
                    filename,
                    line,
                    f"{kind} ({group}) is not supported yet; waypost refuses it rather than ignoring it",
                    **where,
                )
            )
        elif group in KNOWN_GROUPS or group.endswith(".istio.io"):
            # A kind we do not know in an API group we serve is most likely a typo: refuse it.
            result.diagnostics.append(
                error(filename, line, f"unknown kind {kind!r} in API group {group or 'core'!r}", field="kind", **where)
            )
        else:
            result.diagnostics.append(
                warning(filename, line, f"unknown kind {api_version} {kind}: skipped", **where)
            )
        return result
    if version not in cls.VERSIONS:
        supported = ", ".join(f"{group}/{v}" if group else v for v in cls.VERSIONS)
        result.diagnostics.append(
            error(
                filename,
                lines.get(("apiVersion",), line),
                f"unsupported apiVersion {api_version!r} for {kind} (supported: {supported})",
                field="apiVersion",
                **where,
            )
        )
        return result
    if not cls.NAMESPACED and meta.get("namespace"):
        data = {**data, "metadata": {k: v for k, v in meta.items() if k != "namespace"}}
    try:
        resource = cls.model_validate({**data, "source": Source(file=filename, line=line)}, context={"api_version": api_version})
    except RecursionError:
        result.diagnostics.append(error(filename, line, "the document nests too deeply", field="spec", **where))
        return result
    except ValidationError as exc:
        for problem in exc.errors():
            loc = tuple(problem["loc"])
            field_path = _render_path(loc)
            result.diagnostics.append(
                error(
                    filename,
                    _line_for(lines, loc, line),
                    _message(problem),
                    field=field_path,
                    **where,
                )
            )
        return result
    _share_fields_sets(resource)
    if isinstance(resource, core.ConfigMap):
        problems = _mesh_config_problems(resource, lines)
        if problems:
            result.diagnostics.extend(error(filename, at, message, field=path, **where) for path, at, message in problems)
            return result
    result.resources.append(resource)
    if isinstance(resource, envoyfilter.EnvoyFilter):
        result.diagnostics.extend(
            warning(filename, _line_for(lines, tuple(path.split(".")), line), message, field=path, **where) for path, message in resource.warnings()
        )
    return result


# Pydantic keeps, in every model instance, the set of the fields the input gave (`model_fields_set`): a set
# per instance, 9 MB for the 34,000 models of a 1000-Service mesh, with some thirty distinct values. The
# models are frozen, so nothing adds to those sets (a `model_copy` copies its set before it updates it):
# equal ones are shared.
_FIELDS_SETS: dict[frozenset[str], set[str]] = {}


def _share_fields_sets(value: Any) -> None:
    if isinstance(value, BaseModel):
        fields = value.__pydantic_fields_set__
        shared = _FIELDS_SETS.setdefault(frozenset(fields), fields)
        if shared is not fields:
            object.__setattr__(value, "__pydantic_fields_set__", shared)
        for item in value.__dict__.values():
            if isinstance(item, (BaseModel, list, tuple, dict)):
                _share_fields_sets(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, (BaseModel, list, tuple, dict)):
                _share_fields_sets(item)
    elif isinstance(value, dict):
        for item in value.values():
            if isinstance(item, (BaseModel, list, tuple, dict)):
                _share_fields_sets(item)


def _mesh_config_problems(config_map: core.ConfigMap, lines: dict[tuple[Any, ...], int]) -> list[tuple[str, int, str]]:
    """The mesh ConfigMap is validated as istiod validates its MeshConfig: refused whole when invalid."""
    if (config_map.namespace, config_map.name) != (meshconfig.MESH_CONFIGMAP_NAMESPACE, meshconfig.MESH_CONFIGMAP_NAME):
        return []
    text = config_map.data.get(meshconfig.MESH_CONFIGMAP_KEY)
    if text is None:
        return []
    key_line = lines.get(("data", meshconfig.MESH_CONFIGMAP_KEY), config_map.source.line)
    try:
        meshconfig.parse_mesh_config(text)
    except meshconfig.MeshConfigError as exc:
        # A block scalar (`mesh: |`) starts on the line after its key: inner line n is key_line + n.
        return [
            (f"data.mesh.{path}" if path else "data.mesh", key_line + inner if inner and "\n" in text else key_line, message)
            for path, inner, message in exc.problems
        ]
    return []


class _DocumentError(Exception):
    def __init__(self, line: int, message: str, path: tuple[Any, ...] = ()) -> None:
        super().__init__(message)
        self.line = line
        self.message = message
        self.path = path


# YAML aliases make a document a graph: `&a [*a, *a]` chains ("billion laughs") expand exponentially, and an
# anchor used inside its own node makes a cycle. Like the Kubernetes YAML decoder ("document contains
# excessive aliasing"), a document may expand aliases to at most this many values beyond its own nodes.
MAX_ALIAS_EXPANSION = 10_000
MAX_DEPTH = 256


class _Budget:
    """Tracks alias expansion while a document's node graph is turned into plain data."""

    def __init__(self, root: yaml.Node) -> None:
        self.seen: set[int] = set()
        self.expanded = 0
        self.stack: set[int] = set()

    def enter(self, node: yaml.Node, path: tuple[Any, ...]) -> None:
        ident = id(node)
        if ident in self.stack:
            raise _DocumentError(node.start_mark.line + 1, "YAML alias refers to a node that contains it (a cycle)", path)
        if len(path) > MAX_DEPTH:
            raise _DocumentError(node.start_mark.line + 1, f"the document nests deeper than {MAX_DEPTH} levels", path)
        if ident in self.seen:  # an alias: this node's values are constructed once more
            self.expanded += 1
            if self.expanded > MAX_ALIAS_EXPANSION:
                raise _DocumentError(
                    node.start_mark.line + 1,
                    f"document contains excessive aliasing (more than {MAX_ALIAS_EXPANSION} values through YAML aliases)",
                    path,
                )
        else:
            self.seen.add(ident)
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            self.stack.add(ident)


def _to_python(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int], budget: _Budget) -> Any:
    """Constructs plain data from a composed node, recording the line of every key and list item."""
    budget.enter(node, path)
    lines.setdefault(path, node.start_mark.line + 1)  # a key's own line wins over its value's first line
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _DocumentError(key_node.start_mark.line + 1, "YAML merge keys ('<<') are not supported", path)
            key = _scalar(key_node, path) if isinstance(key_node, yaml.ScalarNode) else None
            if isinstance(key, int) and not isinstance(key, bool):
                # kubectl (sigs.k8s.io/yaml) turns integer keys into strings: PeerAuthentication's
                # `portLevelMtls: {8080: …}` is written that way in Istio's own documentation.
                key = str(key)
            if not isinstance(key, str):
                shown = repr(key) if isinstance(key_node, yaml.ScalarNode) else f"of kind {key_node.id}"
                raise _DocumentError(key_node.start_mark.line + 1, f"mapping key {shown} is not a string", path)
            if key in out:
                raise _DocumentError(key_node.start_mark.line + 1, f"duplicate key {key!r}", path + (key,))
            lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _to_python(value_node, path + (key,), lines, budget)
        budget.stack.discard(id(node))
        return out
    if isinstance(node, yaml.SequenceNode):
        out_list = [_to_python(item, path + (i,), lines, budget) for i, item in enumerate(node.value)]
        budget.stack.discard(id(node))
        return out_list
    return _scalar(node, path)


# libyaml's composer when PyYAML was built with it (about 3x faster on large manifests); same nodes.
_COMPOSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# One constructor for every scalar: YAML 1.1 scalar resolution (ints, bools, nulls...) as SafeLoader does.
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
# The scalar types a Kubernetes manifest can hold (JSON's). A timestamp stays the string it was written as
# (the Kubernetes YAML decoder does the same); `=` (YAML 1.1's "value" tag) is a plain string there too.
_SCALAR_TAGS = frozenset(
    "tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null")
)
_AS_STRING_TAGS = frozenset({"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value"})


_STR_TAG = "tag:yaml.org,2002:str"


def _scalar(node: yaml.Node, path: tuple[Any, ...] = ()) -> Any:
    if node.tag == _STR_TAG and isinstance(node, yaml.ScalarNode):
        return node.value  # what SafeConstructor.construct_yaml_str returns, without its call overhead
    if node.tag in _AS_STRING_TAGS:
        return node.value
    if node.tag not in _SCALAR_TAGS:
        raise _DocumentError(node.start_mark.line + 1, f"unsupported YAML tag {node.tag!r}", path)
    try:
        return _CONSTRUCTOR.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, OverflowError) as exc:  # e.g. an integer of more than 4300 digits
        problem = getattr(exc, "problem", None) or str(exc)
        if "integer string conversion" in problem:
            problem = "more than 4300 digits"
        raise _DocumentError(node.start_mark.line + 1, f"invalid {node.tag.rsplit(':', 1)[-1]} value: {problem}", path) from None
    finally:
        _CONSTRUCTOR.constructed_objects.pop(node, None)  # the constructor must not keep every node alive


def _where_of(node: yaml.Node) -> dict[str, str]:
    """kind, namespace and name of a document that could not be turned into data, read from its top-level nodes."""
    where = {"kind": "", "namespace": "", "name": ""}
    if not isinstance(node, yaml.MappingNode):
        return where

    def plain(value_node: yaml.Node) -> str:
        return value_node.value if isinstance(value_node, yaml.ScalarNode) and value_node.tag == "tag:yaml.org,2002:str" else ""

    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if key == "kind":
            where["kind"] = plain(value_node)
        elif key == "metadata" and isinstance(value_node, yaml.MappingNode):
            for meta_key, meta_value in value_node.value:
                if isinstance(meta_key, yaml.ScalarNode) and meta_key.value in ("name", "namespace"):
                    where[meta_key.value] = plain(meta_value)
    return where


def _items_nodes(node: yaml.Node) -> list[yaml.Node]:
    for key_node, value_node in node.value:
        if _scalar(key_node) == "items" and isinstance(value_node, yaml.SequenceNode):
            return list(value_node.value)
    return []


def _line_for(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...], default: int) -> int:
    # The deepest prefix of the error location that exists in the document (a missing field points at its parent).
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return default


def _render_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and (part.startswith("function-") or part in ("str", "int")):
            continue  # pydantic union branch names, not user fields
        else:
            out += ("." if out else "") + (str(part) or '""')  # an empty key still names a field
    return out


def _message(problem: dict[str, Any]) -> str:
    kind = problem.get("type", "")
    msg = str(problem.get("msg", "invalid value"))
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "int_type" and isinstance(problem.get("input"), str):
        # Strict types, as the API server's: a quoted number is a string. Same words as before strictness.
        msg = "Input should be a valid integer, unable to parse string as an integer"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind not in ("value_error", "assertion_error") and "input" in problem and not isinstance(
        problem["input"], (dict, list)
    ):
        msg = f"{msg} (got {problem['input']!r})"
    return msg


def _dedupe(resources: list[Resource]) -> list[Resource]:
    seen: set[tuple[str, str, str]] = set()
    out: list[Resource] = []
    for r in resources:
        if r.key not in seen:
            seen.add(r.key)
            out.append(r)
    return out


def _duplicates(resources: list[Resource]) -> list[Diagnostic]:
    first: dict[tuple[str, str, str], Resource] = {}
    out: list[Diagnostic] = []
    for r in resources:
        if r.key in first:
            prev = first[r.key]
            out.append(
                error(
                    r.source.file,
                    r.source.line,
                    f"defined twice; first at {prev.source.file}:{prev.source.line}",
                    kind=r.KIND,
                    namespace=r.namespace if r.NAMESPACED else "",
                    name=r.name,
                )
            )
        else:
            first[r.key] = r
    return out
