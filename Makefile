# One command per job. `make test` works on a fresh machine: it creates .venv, installs the
# pinned packages and runs lint, format check and the whole test suite against the real local
# Google emulators (started by the tests themselves), the container tests included (as root they
# install Debian's docker.io, start its daemon, build the image and stop the daemon again).
# `make image` builds the production image with the tiny weights the same way (tools/image.py).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint fmt demo stack bench soak image image-bench clean

# --no-compile: pip would byte-compile every installed module (about a minute on 2 cores);
# Python compiles the ones a process really imports on first use instead.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --no-compile -r requirements-dev.txt -c constraints.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: $(STAMP)
	$(BIN)/python -m tools.demo

stack: $(STAMP)
	$(BIN)/python -m tools.stack up

bench: $(STAMP)
	$(BIN)/python benchmarks/imaging_bench.py
	$(BIN)/python benchmarks/event_bench.py

image: $(STAMP)
	$(BIN)/python -m tools.image build

image-bench: $(STAMP)
	$(BIN)/python benchmarks/image_bench.py

soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py --jobs 200

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build out *.egg-info
