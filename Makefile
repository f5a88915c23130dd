# The two quick-start commands: `make run` (the web service with a sample knowledge base) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
KBQA := $(BIN)/kbqa

.PHONY: run test docker-check bench-ingest clean

# The virtual environment is rebuilt when pyproject.toml changes. torch is installed first, pinned to
# the CPU build, so that pip does not pull the multi-gigabyte CUDA wheels (see docs/deploy.md for GPU boxes).
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,bench,ocr]'
	touch $@

# Starts the web service on the offline defaults; the knowledge base "demo" is built from examples/docs
# on the first start. Stop it with Ctrl-C.
run: $(BIN)/.installed
	$(KBQA) serve --sample-kb demo

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports  # the package layers, cycles and private names ([tool.importlinter] in pyproject.toml)
	$(BIN)/pytest

# Builds the CPU image and runs the compose stack for real: upload, ask, stop, restart; then the cluster
# profile: two replicas and two workers on PostgreSQL behind HAProxy, a worker killed, the database
# restarted (docker/check.sh; as root it installs Docker's engine and Compose plugin when they are missing).
docker-check:
	bash docker/check.sh

bench-ingest: $(BIN)/.installed
	$(BIN)/python bench/ingest.py --limit 300

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache .hypothesis .grimp_cache .import_linter_cache
