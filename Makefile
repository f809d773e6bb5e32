# The two set-up commands of the README: `make local` and `make test`. Both install what they need first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: install local test ui

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv==0.13.8

install: $(BIN)/uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet -r requirements.lock -e .

# Seed the local EDP products and materialize the whole graph on local Spark.
local: install
	$(BIN)/aiml run-local

test: install
	$(BIN)/pytest

# The Dagster UI on http://127.0.0.1:3000 for the local environment. `dg dev` finds the code location through
# pyproject.toml's [tool.dg] and runs it with this .venv (VIRTUAL_ENV: it is the project's venv, so dg does not warn
# of a mismatch). --no-check-yaml: the project has no component YAML; the check would only scan the installed
# libraries' components (and print a PreviewWarning of dagster-spark's). `dg check defs` still checks it.
ui: install
	$(BIN)/aiml prepare-instance
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/dg dev --no-check-yaml -h 127.0.0.1 -p 3000
