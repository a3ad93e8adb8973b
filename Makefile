# Bramble: `make up` for an all-in-one cloud on this host, `make test` for the whole suite.
# Both run as root on Debian 12 and install what they need.

SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
STATE_DIR ?= /var/lib/bramble

.PHONY: up down test lint deps venv test-venv test-deps demo-image clean-venv

up: deps venv
	@BRAMBLE_STATE_DIR=$(STATE_DIR) scripts/up.sh

down:
	@BRAMBLE_STATE_DIR=$(STATE_DIR) scripts/down.sh

deps:
	@scripts/install-deps.sh runtime

test-deps:
	@scripts/install-deps.sh test

# `make up` installs Bramble alone; `make test` adds the test tools (pytest, hypothesis, atheris, ...).
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py src/bramble/boot/_lockstep.c
	@test -x $(VENV)/bin/python || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check -e .
	@touch $@

test-venv: $(VENV)/.installed-test

$(VENV)/.installed-test: pyproject.toml setup.py src/bramble/boot/_lockstep.c
	@test -x $(VENV)/bin/python || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

lint: test-venv
	$(VENV)/bin/ruff check src tests $(wildcard bench)
	$(VENV)/bin/ruff format --check src tests $(wildcard bench)
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: deps test-deps test-venv lint
	$(VENV)/bin/pytest -p no:cacheprovider $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
