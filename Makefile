# The two commands: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pair installed before the project; override for another platform or CUDA build,
# e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# The demo needs only the package; the tests, lint and extras (ONNX, nuclei, web app) add the dev extra.
BASE_STAMP := $(VENV)/.bridgeseg-base-installed
STAMP := $(VENV)/.bridgeseg-installed

# Debian's Chromium drives the browser tests; Playwright's own browser download is never used.
CHROMIUM ?= /usr/bin/chromium
BROWSER_STAMP := $(VENV)/.bridgeseg-browser-installed

.PHONY: demo test test-slow test-browser test-wheel lint format cost clean

$(BASE_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing $(TORCH_SPEC) into $(VENV) (a few GB; the longest step of the set-up)"
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	@echo "Installing bridgeseg and its dependencies"
	$(PY) -m pip install --quiet -e .
	@touch $@

$(STAMP): $(BASE_STAMP)
	@echo "Installing the test, lint, ONNX, nuclei and web-app extras"
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

# `make demo` again retrains and replaces outputs/demo, as make rebuilds a target; `bridgeseg demo` alone refuses.
demo: $(BASE_STAMP)
	$(VENV)/bin/bridgeseg demo --overwrite

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

# The built wheel in a fresh virtualenv outside the checkout: `bridgeseg demo --quick` and a shipped config by name.
test-wheel: $(BASE_STAMP)
	.ci/test_wheel.sh

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

$(CHROMIUM):
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

$(BROWSER_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,app]" "playwright>=1.40"
	@touch $@

test-browser: $(CHROMIUM) $(BROWSER_STAMP)
	BRIDGESEG_CHROMIUM=$(CHROMIUM) $(PY) -m pytest -q -m browser

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

cost: $(BASE_STAMP)
	$(VENV)/bin/bridgeseg cost --backbone efficientnet_lite0 --size 512 --num-classes 150

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
