# The two commands of the README. Each sets up everything it needs on a fresh machine:
# a virtualenv with kubus, then every binary the dev stack runs (found, or built with Go).
PYTHON ?= python3
VENV   ?= .venv
KUBUS  := $(VENV)/bin/kubus

.PHONY: dev test setup binaries lint clean

dev: setup binaries  ## start the dev stack in the foreground (Ctrl-C stops it)
	$(KUBUS) dev up $(ARGS)

test: setup binaries  ## run the whole test suite against a real dev stack
	$(VENV)/bin/python -m pytest $(ARGS)

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $@

binaries: setup
	$(KUBUS) dev binaries --with kube-controller-manager

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV)
