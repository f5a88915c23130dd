# The two quick-start commands: `make run` (index the sample documents, search and ask them) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
KBQA := $(BIN)/kbqa

.PHONY: run test lint bench-ingest clean

# The virtual environment is rebuilt when pyproject.toml changes. torch is installed first, pinned to
# the CPU build, so that pip does not pull the multi-gigabyte CUDA wheels (see the README for GPU boxes).
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

run: $(BIN)/.installed
	$(KBQA) index build examples/docs --kb demo
	$(KBQA) search --kb demo "报销需要多久到账？" -k 3
	$(KBQA) ask --kb demo "报销需要多久到账？"
	$(KBQA) ask --kb demo "How long do I have to submit an expense claim?"

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

bench-ingest: $(BIN)/.installed
	$(BIN)/python bench/ingest.py --limit 300

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache .hypothesis
