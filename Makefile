# Two commands do all the set-up: `make serve` runs the product, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

CLAUDE_CODE_VERSION ?= 2.1.197
CLAUDE := .e2e/node_modules/.bin/claude
CODEX_VERSION ?= 0.171.0
CODEX := .e2e-codex/node_modules/.bin/codex

.PHONY: serve test lint unit check bench bench-docs clean system-deps

PIP := $(BIN)/python -m pip install --disable-pip-version-check --progress-bar on

# What the product needs to run (said once, the first time; pip shows its progress).
$(BIN)/.installed: pyproject.toml
	@echo "cachelayer: first run: creating $(VENV) and installing what the proxy and its MLX backend need to run (aiohttp, diskcache, mlx, mlx-lm, ...) ..."
	$(PYTHON) -m venv $(VENV)
	$(PIP) --quiet --upgrade pip
	$(PIP) -e .
	@echo "cachelayer: installed into $(VENV)"
	touch $@

# What the tests need on top (pytest, hypothesis, both SDKs, ruff, mypy): only for
# `make test`, `make unit` and `make lint`.
$(BIN)/.test-installed: $(BIN)/.installed
	@echo "cachelayer: installing the test tools (pytest, hypothesis, openai, anthropic, ruff, mypy) ..."
	$(PIP) -e ".[test]"
	touch $@

serve: $(BIN)/.installed  ## create the virtualenv, install, run the proxy (embedded demo model by default)
	$(BIN)/cachelayer serve $(ARGS)

lint: $(BIN)/.test-installed
	$(BIN)/ruff check cachelayer tests tools
	$(BIN)/mypy cachelayer

# The end-to-end test drives the real Claude Code CLI from npm.
$(CLAUDE):
	npm install --prefix .e2e --no-audit --no-fund --loglevel=error \
		@anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION)

# The Codex end-to-end tests drive the real Codex CLI from npm (a native binary per
# platform, pulled in as an optional dependency of @openai/codex).
$(CODEX):
	npm install --prefix .e2e-codex --no-audit --no-fund --loglevel=error \
		@openai/codex@$(CODEX_VERSION)

# The scale-out tests run a real redis-server (TLS certificates made with openssl) and its
# benchmark uses wrk; the dashboard test loads the page in Debian's headless chromium
# (chromium-driver for WebDriver use). All Debian packages.
system-deps:
	@if ! command -v redis-server >/dev/null || ! command -v wrk >/dev/null \
			|| ! command -v openssl >/dev/null; then \
		SUDO=""; [ "$$(id -u)" -ne 0 ] && SUDO="sudo"; \
		$$SUDO apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server wrk openssl \
			>/dev/null; \
	fi
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		echo "cachelayer: installing Debian's chromium for the dashboard test ..."; \
		SUDO=""; [ "$$(id -u)" -ne 0 ] && SUDO="sudo"; \
		$$SUDO apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
			chromium chromium-driver >/dev/null; \
	fi

test: $(BIN)/.test-installed $(CLAUDE) $(CODEX) system-deps lint  ## create the virtualenv, install, lint, run every test
	$(BIN)/pytest

# The quick loop spreads test files over the cores (pytest-xdist, a file per worker at a
# time so a module's servers start once); the full run stays serial for the timing-bound
# slow tests.
unit: $(BIN)/.test-installed  ## the quick loop (under a minute): lint, then every test not marked slow
	$(BIN)/ruff check cachelayer tests tools
	$(BIN)/pytest -m "not slow" -q -n auto --dist loadfile

check: unit

bench: $(BIN)/.test-installed  # the benchmarks drive the proxy with the openai/anthropic SDKs
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python tools/bench $(ARGS)
	$(BIN)/python tools/render_docs.py

# Re-render the benchmark tables in docs/ from docs/benchmarks/*.json (no benchmark runs).
bench-docs: $(BIN)/.installed
	$(BIN)/python tools/render_docs.py

clean:
	rm -rf $(VENV) .e2e .e2e-codex .pytest_cache .mypy_cache .ruff_cache
