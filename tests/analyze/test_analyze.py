"""`waypost analyze`: one fixture per finding, golden output, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
CASES = sorted(p.stem for p in FIXTURES.glob("*.yaml"))
EXPECTED_CODES = {
    "unknown_reference": "IST0101",
    "schema_error": "IST0106",
    "ztunnel_l7_allow": "WPT0001",
    "ztunnel_l7_deny": "WPT0002",
    "targetref_without_waypoint": "WPT0003",
    "route_without_waypoint": "WPT0004",
    "waypoint_for_mismatch": "WPT0005",
    "waypoint_bypass": "WPT0006",
    "custom_provider_unusable": "WPT0007",
    "custom_at_ztunnel": "WPT0008",
    "mixed_routing": "WPT0009",
    "virtualservice_unknown_destination": "IST0101",
}


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "waypost.cli.main", "analyze", *args], cwd=FIXTURES, capture_output=True, text=True, timeout=60)


def test_every_finding_has_a_fixture():
    assert sorted(EXPECTED_CODES) == CASES


@pytest.mark.parametrize("case", CASES)
def test_fixture_output_matches_golden(case):
    proc = analyze("-f", f"{case}.yaml")
    golden = FIXTURES / f"{case}.golden"
    if os.environ.get("WAYPOST_UPDATE_GOLDEN"):
        golden.write_text(proc.stdout)
    assert proc.stdout == golden.read_text()
    assert f"[{EXPECTED_CODES[case]}]" in proc.stdout
    is_error = any(line.startswith("Error ") for line in proc.stdout.splitlines())
    assert proc.returncode == (79 if is_error else 0)


def test_failure_threshold_warning_fails_on_warnings():
    assert analyze("-f", "route_without_waypoint.yaml", "--failure-threshold", "Warning").returncode == 79


def test_clean_manifests_and_json_output():
    quickstart = Path(__file__).parents[2] / "examples" / "quickstart"
    clean = analyze("-f", str(quickstart))
    assert clean.returncode == 0 and "No validation issues found" in clean.stdout
    import json

    (finding,) = json.loads(analyze("-f", "ztunnel_l7_deny.yaml", "-o", "json").stdout)
    assert finding["code"] == "WPT0002" and finding["level"] == "Warning"
