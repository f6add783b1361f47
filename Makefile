# Two set-up-free entry points: `make demo` and `make test`. Both build .venv from this project's files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test golden bench clean down

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

# Runs the quickstart mesh in the background and prints what to try.
demo: $(STAMP)
	$(BIN)/waypost up -f examples/quickstart --detach
	@echo
	@echo "Try:"
	@echo "  $(BIN)/waypost request --from quickstart/client http://echo/v1"
	@echo "  $(BIN)/waypost request --from quickstart/client http://echo/v2"
	@echo "Stop it with: $(BIN)/waypost down"

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -rs

# Regenerates the golden Envoy configs after an intended translation change; review the diff.
golden: $(STAMP)
	WAYPOST_UPDATE_GOLDEN=1 $(BIN)/python -m pytest -q tests/golden

# Benchmarks (not part of `make test`): prints tables and ratios measured side by side, writes bench/results/.
bench: $(STAMP)
	$(BIN)/python bench/data_path.py

down: $(STAMP)
	$(BIN)/waypost down

clean:
	rm -rf $(VENV) .waypost
