"""Gateway API mesh (GAMMA) conformance: one pytest test per upstream test of ../shared/conformance/cases.yaml,
each on a fresh local mesh, judged in strict mode (conformance README §3).

A test that fails today must be listed in EXPECTED_FAILURES with the reason. It then runs as a strict
xfail: the suite stays green, and the day it passes it fails as XPASS, so it gets removed from the list.

Two choices keep the verdicts deterministic and the run short (see harness.Options):
- the cases of a test run one at a time (`parallel_cases=False`): with round-robin balancing over a wrong
  endpoint set, whether a case sees three good answers in a row otherwise depends on how concurrent
  cases interleave, and a strict xfail must not pass by luck;
- a test expected to fail stops at its first failed case (`fail_fast`): its verdict is all pytest needs.
The time to consistency is WAYPOST_CONFORMANCE_TIMEOUT seconds (default 5, not upstream's 30: `waypost up
--detach` returns only once every proxy has ACKed its config, so there is nothing left to converge).
`python -m tests.conformance` gives the full per-case report in both modes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import shared_path
from tests.conformance.harness import Options, run_test
from tests.conformance.judge import STRICT
from tests.conformance.manifests import CASES_FILE, load_corpus

pytestmark = [pytest.mark.e2e, pytest.mark.conformance]

TIMEOUT = float(os.environ.get("WAYPOST_CONFORMANCE_TIMEOUT", "5"))

# test name → why it fails today, e.g. "GRPCRoute is not supported yet: `up` refuses the manifests", or for a
# product bug "PRODUCT BUG: <what is wrong>; failing: <case id> <field> expected … got …". Remove an entry as
# soon as its test passes (the strict xfail then reports XPASS and fails the run).
EXPECTED_FAILURES: dict[str, str] = {}


def _test_names() -> list[str]:
    return [t["name"] for t in load_corpus()["tests"]] if CASES_FILE.exists() else []


def _params() -> list:
    names = _test_names()
    if not names:
        # Collected without ../shared: one test that skips (or fails under CI) through shared_path().
        return [pytest.param(None, id="corpus-absent")]
    return [
        pytest.param(name, id=name, marks=[pytest.mark.xfail(strict=True, reason=EXPECTED_FAILURES[name])]
                     if name in EXPECTED_FAILURES else [])
        for name in names
    ]


@pytest.mark.parametrize("test_name", _params())
def test_mesh_conformance(test_name: str | None, tmp_path: Path) -> None:
    corpus = load_corpus(shared_path("conformance", "cases.yaml"))
    assert test_name is not None
    options = Options(timeout=TIMEOUT, modes=(STRICT,), parallel_cases=False,
                      fail_fast=test_name in EXPECTED_FAILURES)
    result = run_test(corpus, test_name, options, tmp_path)
    assert result.passed(STRICT), (
        f"{test_name}: {result.count(STRICT)}/{len(result.cases)} cases pass (strict mode)\n"
        + result.describe_failures(STRICT)
    )


def test_expected_failures_name_tests_of_the_corpus() -> None:
    corpus = load_corpus(shared_path("conformance", "cases.yaml"))
    unknown = sorted(set(EXPECTED_FAILURES) - {t["name"] for t in corpus["tests"]})
    assert not unknown, f"EXPECTED_FAILURES names tests that cases.yaml does not have: {unknown}"
