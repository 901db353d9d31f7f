# Two commands do all setup on a fresh clone:
#   make serve   install into .venv, then serve the CPU profile on http://127.0.0.1:8000
#   make test    install into .venv (with test tools) and, as root with apt, Chromium for the playground's
#                browser tests; then lint and run the test suite
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	touch $@

.PHONY: serve test browser
serve: $(BIN)/.installed
	$(BIN)/serve run configs/local.yaml

# Headless Chromium for tests/test_service.py's playground tests (they skip without it).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null || \
	      { apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null; }; }; } || \
	  echo "Chromium not installed (needs root and apt): the playground's browser tests will skip."

test: $(BIN)/.installed browser
	$(BIN)/ruff check .
	$(BIN)/pytest
