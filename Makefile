# surgery: the README's commands. `make demo` and `make test` set everything up from a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 3
export PYTHONHASHSEED ?= 0

.PHONY: all install demo test test-slow test-interop fuzz bench sample-models clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/surgery demo --out demo-out --overwrite

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not fuzz and not interop"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow and not interop"
	$(PY) -m tests.mutation

fuzz: $(STAMP)
	SURGERY_FUZZ_EXAMPLES=2000 $(PY) -m pytest -q tests/test_fuzz.py tests/test_fuzz_data.py \
	    tests/bad_inputs/test_bad_plans.py::test_fuzzed_plans_only_raise_plan_errors

# The other frameworks themselves, in their own environment (slow, by hand): torch's CPU wheel
# (the exact version: a bare `torch` would fetch a CUDA build of several GB) and safetensors.
INTEROP := .venv-interop
IPY     := $(INTEROP)/bin/python
ISTAMP  := $(INTEROP)/.installed

$(ISTAMP): pyproject.toml
	$(PYTHON) -m venv $(INTEROP)
	$(IPY) -m pip install --quiet --upgrade "pip>=24"
	$(IPY) -m pip install --quiet -e ".[test]" "torch==2.13.0" safetensors
	touch $(ISTAMP)

test-interop: $(ISTAMP)
	$(IPY) -m pytest -q -m interop

bench: $(STAMP)
	$(PY) -m tests.bench

sample-models: $(STAMP)
	$(PY) -m surgery.sample_models.build

clean:
	rm -rf $(VENV) $(INTEROP) demo-out bench-out .pytest_cache .hypothesis
