"""Fuzz suite settings. Needs hypothesis and jsonschema (the `test` extras); skipped without them.

CI runs a fixed, derandomized set of examples (reproducible, about a minute on 2 cores). A longer
campaign: `WAYPOST_FUZZ_EXAMPLES=20 .venv/bin/python -m pytest -q -n 2 tests/fuzz` multiplies every
test's example count by 20 and draws fresh random examples (not derandomized) each run.
"""

import pytest

pytest.importorskip("hypothesis")
pytest.importorskip("jsonschema")
