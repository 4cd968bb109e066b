# Two entry points (see README): `make train` and `make test`. Both set up .venv first.
# torch is installed on its own, pinned, before the package: a plain `pip install torch`
# would pull the CUDA build; 2.13.0 is the CPU wheel these machines carry.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: setup browser train test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $@

train: setup
	$(BIN)/aevb train

# The browser test drives Debian's chromium through Playwright; installing it needs apt
# (root). Best effort here: without it that one test skips (and fails under CI=true).
browser: setup
	-bash scripts/install-browser.sh $(BIN)/python

test: setup browser
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
