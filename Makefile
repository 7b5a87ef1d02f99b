PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv demo test lint zoo-slow clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'

demo: $(BIN)/python
	$(BIN)/pip install --quiet -e .
	$(BIN)/python -m fxprune.demo

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

zoo-slow: venv
	$(BIN)/python -m pytest -q -m slow tests/test_zoo.py

clean:
	rm -rf $(VENV) build *.egg-info
