"""The corpus (cases.yaml) and the manifests one conformance test starts its mesh from.

A test's mesh = upstream base manifests + the test's own manifests + our overlay (overlay.yaml). The
upstream files are never modified on disk: the base is rewritten into a per-test directory with the
overlay's Namespace labels merged in (waypost refuses a resource defined twice, so the overlay cannot
simply redefine the Namespaces), the test's manifests are passed from their upstream location (so `up`
errors point at the real file and line), and the overlay's other objects go in a file of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import SHARED

CONFORMANCE = SHARED / "conformance"
CASES_FILE = CONFORMANCE / "cases.yaml"
OVERLAY_FILE = Path(__file__).resolve().parent / "overlay.yaml"


def load_corpus(path: Path = CASES_FILE) -> dict[str, Any]:
    corpus = yaml.safe_load(path.read_text())
    if corpus.get("schema_version") != 1:
        raise ValueError(f"{path}: schema_version {corpus.get('schema_version')!r}, this harness reads 1")
    return corpus


def find_test(corpus: dict[str, Any], name: str) -> dict[str, Any]:
    for test in corpus["tests"]:
        if test["name"] == name:
            return test
    known = ", ".join(t["name"] for t in corpus["tests"])
    raise KeyError(f"no conformance test {name!r} (known: {known})")


def upstream_root(corpus: dict[str, Any], cases_file: Path = CASES_FILE) -> Path:
    # `manifest_root` reads "upstream/ (paths in 'manifests' are relative to it)": the path is its first word.
    return cases_file.parent / corpus["upstream"]["manifest_root"].split()[0]


@dataclass(frozen=True)
class MeshManifests:
    files: list[Path]                    # what `waypost up -f` gets, in order
    documents: list[dict[str, Any]]      # every object of those files (for pod labels)


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _readable_documents(path: Path) -> list[dict[str, Any]]:
    """For pod labels only: a file that cannot be read is left to `waypost up` to report."""
    try:
        return [d for d in _documents(path) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError):
        return []


def build_manifests(corpus: dict[str, Any], test: dict[str, Any], out_dir: Path,
                    cases_file: Path = CASES_FILE, overlay_file: Path = OVERLAY_FILE) -> MeshManifests:
    root = upstream_root(corpus, cases_file)
    base = _documents(root / corpus["upstream"]["base_manifests"])
    overlay = _documents(overlay_file)
    namespace_labels = {
        d["metadata"]["name"]: d["metadata"].get("labels") or {} for d in overlay if d.get("kind") == "Namespace"
    }
    merged: set[str] = set()
    for doc in base:
        name = doc.get("metadata", {}).get("name")
        if doc.get("kind") == "Namespace" and name in namespace_labels:
            doc["metadata"].setdefault("labels", {}).update(namespace_labels[name])
            merged.add(name)
    extra = [d for d in overlay if not (d.get("kind") == "Namespace" and d["metadata"]["name"] in merged)]

    out_dir.mkdir(parents=True, exist_ok=True)
    base_file = out_dir / "base+overlay-namespace-labels.yaml"
    base_file.write_text(
        f"# {root / corpus['upstream']['base_manifests']} with the Namespace labels of {overlay_file} merged in\n"
        + yaml.safe_dump_all(base, sort_keys=False)
    )
    overlay_out = out_dir / "overlay-objects.yaml"
    overlay_out.write_text(f"# the objects of {overlay_file} other than the merged Namespaces\n"
                           + yaml.safe_dump_all(extra, sort_keys=False))
    test_files = [root / m for m in test.get("manifests", [])]
    documents = list(base) + [d for f in test_files for d in _readable_documents(f)] + extra
    return MeshManifests([base_file, *test_files, overlay_out], documents)


def pod_labels(documents: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, str]]:
    """(namespace, owner) → pod labels: Deployment name → template labels; bare Pod name → its labels.

    state.json names each workload's owner (Deployment) but not its labels, which selectors need.
    """
    out: dict[tuple[str, str], dict[str, str]] = {}
    for doc in documents:
        meta = doc.get("metadata") or {}
        namespace = meta.get("namespace", "default")
        if doc.get("kind") == "Deployment":
            template = (doc.get("spec") or {}).get("template") or {}
            out[(namespace, meta["name"])] = dict((template.get("metadata") or {}).get("labels") or {})
        elif doc.get("kind") == "Pod":
            out[(namespace, meta["name"])] = dict(meta.get("labels") or {})
    return out


def parse_selector(selector: str) -> dict[str, str]:
    """`app=echo,version=v2` → {"app": "echo", "version": "v2"} (equality selectors only, as the corpus uses)."""
    out = {}
    for term in selector.split(","):
        key, sep, value = term.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"unsupported selector term {term!r} in {selector!r}")
        out[key.strip()] = value.strip()
    return out
