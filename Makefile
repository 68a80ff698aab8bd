# Two entry points: `make train` (the main job) and `make test` (the whole suite).
# Both build .venv from this project's own files first. torch is pinned to the
# local CPU wheel where the machine has one (pip's find-links), and falls back to
# the registry's torch elsewhere.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mipo-installed
TORCH_PIN ?= torch==2.13.0
RECIPE ?= recipes/ti_dpo.py
ARGS ?=

.PHONY: install train test lint docs

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)" || $(PY) -m pip install --quiet torch
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) -m mipo.train $(RECIPE) $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2 --hypothesis-profile=ci -q --doctest-modules mipo tests
