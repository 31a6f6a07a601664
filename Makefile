# The README's commands. Everything runs from a virtual environment this Makefile creates (.venv).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# constraints.txt pins the exact versions tested here (torch: the CPU build, found on this machine's disk).
PIP    := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install test test-fast lint typecheck pytest demo image-test protos check-protos bench-train clean

help:
	@echo "make demo      train, export, serve and classify the digits end to end (< 5 min)"
	@echo "make test      install the dev dependencies, then ruff, mypy and pytest"
	@echo "make test-fast ruff, mypy and the tests not marked slow (for iterating; CI runs make test)"
	@echo "make image-test  build the CPU image with a real engine and test the running container (root, Debian)"
	@echo "make protos    regenerate the gRPC code from protos/*.proto"
	@echo "make check-protos  regenerate, then fail if the committed generated code differs (CI)"
	@echo "make clean     remove the virtual environment, artifacts/ and build outputs"

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e '.[dev]'
	# tensorrt-stubs declares a dependency on tensorrt, which cannot be installed here: stubs only.
	$(PIP) --no-deps tensorrt-stubs
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy
	VENV=$(VENV) bash scripts/typecheck_tensorrt.sh

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# For iterating: everything but the tests marked slow (real servers, training, Prometheus, wheel builds).
test-fast: lint typecheck
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/resnet-serve demo

# Installs Docker (Debian's packages) when missing, starts dockerd for the run, builds ./Dockerfile with buildah
# and runs tests/test_image_cpu.py against the container (scripts/image_test.sh; docs/deploy.md).
image-test: $(STAMP)
	PYTHON=$(BIN)/python bash scripts/image_test.sh

protos: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH bash protos/generate.sh

# The committed generated code must be exactly what the generator writes (no hand patches): on a fresh clone
# (CI) any difference, or a generated file that was never committed, fails here.
check-protos: protos
	git diff --exit-code -- protos/
	@untracked="$$(git ls-files --others --exclude-standard -- protos/)"; \
	if [ -n "$$untracked" ]; then echo "generated but not committed: $$untracked"; exit 1; fi

clean:
	rm -rf $(VENV) artifacts build dist *.egg-info
