# One entry point for people and CI. Every target installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-12)

.PHONY: install demo up down test unit integration lint check clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

## The main job: a demo batch through the whole local stack (writes demo-output/).
demo: install
	$(PY) -m devstack demo

## Start the local stack in the background (writes .devstack/env); stop it with `make down`.
up: install
	$(PY) -m devstack up

down:
	@if [ -x $(PY) ]; then $(PY) -m devstack down; else echo "nothing to stop"; fi

## Lint, type-check, then every test (unit and integration against the local stack).
test: install lint
	$(PY) -m pytest tests -q -p no:cacheprovider

unit: install
	$(PY) -m pytest tests/unit -q -p no:cacheprovider

integration: install
	$(PY) -m pytest tests/integration -q -p no:cacheprovider

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy main.py functions shared devstack

## Before deploying: is the configured model served (GEMINI_MODEL, GEMINI_API_KEY or Vertex) and priced?
check: install
	$(PY) -m tools.preflight

clean:
	rm -rf demo-output .devstack .pytest_cache .mypy_cache .ruff_cache
