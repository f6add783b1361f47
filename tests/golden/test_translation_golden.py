"""Golden Envoy configs: the translation of a mesh is reviewed in diffs and must be byte-identical on rerun.

Regenerate after an intended change with `make golden` (WAYPOST_UPDATE_GOLDEN=1) and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from waypost.api import load_paths
from waypost.envoy import bootstrap, translate
from waypost.mesh import AddressPlan, build

from tests.conftest import REPO

GOLDEN_ROOT = Path(__file__).parent
EXAMPLES = ["quickstart", "routing", "classic"]
PLAN = AddressPlan(77)


def render_all(resources) -> dict[str, str]:
    snapshot = build(resources, PLAN)
    out = {}
    for proxy_id, config in translate(snapshot).items():
        doc = {
            "bootstrap": bootstrap(proxy_id, config.kind, (config.address, 15000), (PLAN.control_plane, 15010)),
            "listeners": config.listeners,
            "clusters": config.clusters,
            "routes": config.routes,
            "secrets": config.secrets,
        }
        out[proxy_id.replace("~", ".") + ".json"] = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    return out


def example(name: str):
    result = load_paths([REPO / "examples" / name])
    assert not result.errors, [d.render() for d in result.errors]
    return result.resources


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_matches_golden_files(name):
    GOLDEN = GOLDEN_ROOT / name
    rendered = render_all(example(name))
    if os.environ.get("WAYPOST_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        for stale in GOLDEN.glob("*.json"):
            stale.unlink()
        for name, text in rendered.items():
            (GOLDEN / name).write_text(text)
    expected = {p.name: p.read_text() for p in sorted(GOLDEN.glob("*.json"))}
    assert sorted(rendered) == sorted(expected), "proxies differ; run `make golden` and review the diff"
    for name, text in rendered.items():
        assert text == expected[name], f"{name} differs from its golden file; run `make golden` and review the diff"


@pytest.mark.parametrize("name", EXAMPLES)
def test_translation_is_deterministic_regardless_of_input_order(name):
    resources = example(name)
    assert render_all(resources) == render_all(list(reversed(resources)))
