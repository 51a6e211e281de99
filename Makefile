# carsite: the words in the README. On a fresh Debian machine, as root, every target installs what
# it needs (apt-get for system packages, pip into .venv).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench train lambda-package lint format clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Runtime dependencies (web + worker) and the training extras (torch, CPU build from the local disk).
$(VENV)/.installed-train: requirements.txt requirements-train.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements-train.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-train requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The default model, reproduced from the photos in ../shared/data/cars (see ml/weights/default/MODEL_CARD.md).
DATA ?= ../shared/data/cars
train: $(VENV)/.installed-train
	$(BIN)/python -m ml.train --data $(DATA) --out runs/default --config ml/configs/default.json --resume
	$(BIN)/python -m ml.export runs/default/best.pt --out ml/weights/default

# ONNX Runtime vs torch eager (same weights) vs this CPU's FLOP bound, cold start, memory; last line JSON.
MODEL ?= ml/weights/default
bench: $(VENV)/.installed-train
	@$(BIN)/python -m ml.bench --model $(MODEL)

clean:
	rm -rf .pytest_cache .ruff_cache build dist staticfiles
