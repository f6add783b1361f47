"""Registers the `conformance` marker here, since pyproject.toml (where `e2e` is registered) is not ours to edit."""

from __future__ import annotations


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "conformance: runs a Gateway API mesh conformance test (../shared/conformance) against a live local mesh",
    )
