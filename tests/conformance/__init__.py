"""Gateway API mesh (GAMMA) conformance: every case of ../shared/conformance/cases.yaml against a live local mesh.

`python -m tests.conformance` prints a report; `pytest tests/conformance` runs one test per upstream test.
"""
