# The two commands of the README: `make run` and `make test`. Both set everything up first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup system venv run test test-sqlite lint bench clean-test-resources

system:
	bash scripts/setup-system.sh

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

setup: system venv
	mkdir -p -m 0700 var

run: setup
	bash scripts/run.sh

test: setup
	bash scripts/test.sh

lint: venv
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) -m tests.bench.run

clean-test-resources: venv
	$(PY) scripts/clean-test-resources.py
