# baton: the two commands users run are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BATON := $(VENV)/bin/baton
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test unit chart integration lint binaries system-packages images e2e clean

# Debian packages of the images and the sandbox's real node: podman builds the images from a
# Debian rootfs made by mmdebstrap (gcc compiles the pause binary); containerd, runc, the CNI
# plugins, iptables and conntrack run the real node, skopeo hands it the images.
DEBIAN_PACKAGES := podman skopeo mmdebstrap gcc libc6-dev containerd runc containernetworking-plugins iptables conntrack

# A virtual environment with baton and its worker/dev extras, at the versions constraints.txt
# pins (tools/lock.py writes it; the images install the same). torch is large: pip's cache
# serves it after the first install on a machine.
# dev/ holds the development tools (sandbox, benchmarks, profiler), a package of its own so the
# images carry only what runs in production.
$(STAMP): pyproject.toml dev/pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[worker,dev]'
	$(PY) -m pip install -q --no-deps -e ./dev
	touch $(STAMP)

install: $(STAMP)

# Kubernetes binaries for the sandbox (etcd, kube-apiserver, controller-manager, scheduler,
# kwok, kubectl, helm), built from upstream Go modules into ~/.cache/baton once per version.
binaries: install
	$(BATON) sandbox build

# Installs the missing ones with apt (needs root; otherwise says which are missing).
system-packages:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || printf '%s ' $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages (install as root): $$missing" >&2; exit 1; fi; \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# baton-operator:dev, baton-worker:dev and the real node's baton-pause:dev, built with podman
# (layers cached: a code change rebuilds only the top layer).
images: install system-packages
	$(BATON) sandbox images

# The main job: the local disaggregated stack serving an OpenAI-compatible endpoint.
demo: install
	$(BATON) up --model builtin://tiny --prefill 1 --decode 1 --port 8000

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Needs none of the sandbox's binaries (helm, kubectl, ...): the chart tests are `make chart`.
unit: install
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

# The Helm chart rendered and linted by the sandbox's helm.
chart: binaries
	$(PY) -m pytest -q tests/chart $(PYTEST_ARGS)

# Every test: lint, unit, integration (real processes, real gRPC/NIXL), the sandbox tests and the
# end-to-end tier (the images, and an InferencePool served by real pods on the real node).
test: install system-packages binaries images lint
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

# The end-to-end tier alone.
e2e: install system-packages binaries images
	$(PY) -m pytest -q -ra e2e $(PYTEST_ARGS)

clean:
	rm -rf $(VENV)
