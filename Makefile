# Two entry points: `make demo` (set up + train a real model) and `make test` (set up + tests).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
DOCS_STAMP := $(VENV)/.installed-docs
TEST_WORKERS ?= 2

.PHONY: setup demo cifar10 test doctest docs bench lint clean

# What both README commands need: the scripts' extras (scikit-learn, matplotlib, tokenizers,
# sacrebleu) and the test tools; the `test` extra pulls in `scripts`.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[scripts,test]'
	touch $(STAMP)

# The optional competitors of the benchmark (jax, flax, optax, opacus), on top of the above.
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(BENCH_STAMP)

# mkdocs, Material and mkdocstrings, for `make docs`.
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[scripts,test,docs]'
	touch $(DOCS_STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/train_cnn.py --out runs/demo

# CIFAR-10 end to end in one command: torchvision downloads it (about 170 MB, md5-checked) into
# the per-user data folder, then AdvancedCNN (3x3 stem, ResNet-18 widths) trains with crops and
# flips. Untested at full scale: no accuracy is claimed (see scripts/train_cnn.py --help).
cifar10: $(STAMP)
	$(PY) scripts/train_cnn.py --dataset cifar10 --download --augment --out runs/cifar10

# The suite, then the examples in the package's docstrings.
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --durations=15
	$(MAKE) doctest

doctest: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --doctest-modules deepfn

# The site (guides and API reference) into site/; --strict fails on any warning.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: $(BENCH_STAMP)
	$(PY) scripts/bench.py

lint: $(STAMP)
	$(VENV)/bin/ruff check deepfn tests scripts

clean:
	rm -rf runs outputs site .pytest_cache .hypothesis
