"""The properties every load must have, whatever the input."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Any

import yaml

from waypost.api import load_text
from waypost.api.load import KINDS, LoadResult

# Wall-clock bound on one load_text call (a hang, for our purposes); enforced with SIGALRM so that a real
# infinite loop fails the example instead of stalling CI.
LOAD_SECONDS = 5.0


class Hang(Exception):
    pass


@contextmanager
def time_bound(seconds: float = LOAD_SECONDS):
    def fire(signum, frame):  # pragma: no cover - only on a hang
        raise Hang(f"load_text took more than {seconds}s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def dump(obj: Any) -> str:
    return yaml.safe_dump(obj, allow_unicode=True, sort_keys=False, width=1_000_000)


def load(text: str, filename: str = "fuzz.yaml") -> LoadResult:
    """load_text under the time bound: any exception out of it is a failure of the property."""
    with time_bound():
        return load_text(text, filename)


def signature(result: LoadResult) -> tuple:
    return (
        [d.render() for d in result.diagnostics],
        [(type(r).__name__, r.model_dump(mode="json", by_alias=True)) for r in result.resources],
        [(r.kind, r.namespace, r.name) for r in result.refused],
    )


def check_result(result: LoadResult, text: str, filename: str = "fuzz.yaml", documents: list[Any] | None = None) -> None:
    """Every diagnostic is located and readable; with `documents` (the plain data that was dumped), errors
    about an implemented kind also name the resource and a field."""
    total_lines = text.count("\n") + 1
    for d in result.diagnostics:
        assert d.file == filename, d
        assert d.message and d.message.strip(), d
        assert "Traceback" not in d.message, d
        assert 1 <= d.line <= total_lines + 1, (d, total_lines)
        d.render()
    if documents is None:
        return
    by_name = {}
    for doc in documents:
        if isinstance(doc, dict) and isinstance(doc.get("metadata"), dict):
            by_name[str(doc["metadata"].get("name"))] = doc
    for d in result.errors:
        doc = by_name.get(d.name)
        if doc is None or not _implemented(doc):
            continue
        assert d.kind == doc["kind"], d
        assert d.field, f"an error about {d.kind} {d.name} names no field: {d.render()}"


def _implemented(doc: dict[str, Any]) -> bool:
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return False
    group, _, version = api_version.rpartition("/")
    cls = KINDS.get((group, kind))
    return cls is not None and version in cls.VERSIONS


def check_deterministic(text: str, first: LoadResult) -> None:
    again = load(text)
    assert signature(again) == signature(first), "loading the same text twice gave different results"
