# baton: the two commands users run are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BATON := $(VENV)/bin/baton
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test unit integration lint binaries clean

# A virtual environment with baton and its worker/dev extras. torch is large: pip's cache
# serves it after the first install on a machine.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[worker,dev]'
	touch $(STAMP)

install: $(STAMP)

# Kubernetes binaries for the sandbox (etcd, kube-apiserver, controller-manager, scheduler,
# kwok, kubectl, helm), built from upstream Go modules into ~/.cache/baton once per version.
binaries: install
	$(BATON) sandbox build

# The main job: the local disaggregated stack serving an OpenAI-compatible endpoint.
demo: install
	$(BATON) up --model builtin://tiny --prefill 1 --decode 1 --port 8000

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

unit: install
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

# Every test: lint, unit, integration (real processes, real gRPC/NIXL) and the sandbox tests.
test: install binaries lint
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

clean:
	rm -rf $(VENV)
