# ctloop: two commands do all the set-up on a fresh machine.
#   make run   - the continuous-training demo, end to end
#   make test  - the test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench images compile lint clean serve

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

run: $(STAMP)
	$(BIN)/ctloop demo

serve: $(STAMP)
	$(BIN)/ctloop serve

clean:
	rm -rf runs build *.egg-info .pytest_cache
