# Two commands do all setup on a fresh clone:
#   make serve   install into .venv, then serve the CPU profile on http://127.0.0.1:8000
#   make test    install into .venv (with test tools), then lint and run the test suite
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	touch $@

.PHONY: serve test
serve: $(BIN)/.installed
	$(BIN)/serve run configs/local.yaml

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/pytest
