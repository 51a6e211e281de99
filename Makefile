# carsite: the words in the README. On a fresh Debian machine, as root, every target installs what
# it needs (apt-get for system packages, pip into .venv).
SHELL := /bin/bash
# The Python the venv is made from: Debian's own python3.11 where it is installed, else python3 from PATH. Debian
# builds its interpreter with profile-guided and link-time optimisation: it took 18% less time than a plain build
# from source (pyenv's default, first on PATH on this project's machines) on a pure-Python loop, and ran
# `make loadtest` 2 to 12% faster in 4 pairs of 5 (docs/performance.md, "Stop 31"). PY=... picks another; an
# existing .venv is kept (delete it to remake it from PY).
PY ?= $(if $(wildcard /usr/bin/python3.11),/usr/bin/python3.11,python3)
VENV := .venv
BIN := $(VENV)/bin
# A .venv made from another interpreter than PY is kept as it is: say so (on every make), since it may be slower.
VENV_PY := $(shell sed -n 's/^executable = //p' $(VENV)/pyvenv.cfg 2>/dev/null)
ifneq ($(and $(VENV_PY),$(strip $(PY))),)
PY_REAL := $(shell $(PY) -c 'import os, sys; print(os.path.realpath(sys.executable))' 2>/dev/null)
ifneq ($(PY_REAL),)
ifneq ($(realpath $(VENV_PY)),$(PY_REAL))
$(info note: .venv was made from $(VENV_PY), not from PY ($(PY_REAL)); delete .venv to remake it from PY)
endif
endif
endif

.PHONY: run test bench train train-default lambda-package lambda-deploy lambda-update lambda-rollback lambda-undeploy lambda-bench lambda-bench-upload postgresql redis-server chromium lint format clean

$(BIN)/python:
	@$(PY) -c 'import ensurepip, venv' 2>/dev/null || $(call apt_install,python3-venv $(if $(filter /usr/bin/python3.%,$(PY)),$(notdir $(PY))-venv))
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Runtime dependencies (web + worker) and the training extras (torch, CPU build from the local disk).
$(VENV)/.installed-train: requirements.txt requirements-train.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements-train.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-train requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

# System packages from Debian, installed when missing (as root; otherwise it says what to run).
apt_install = { if [ "$$(id -u)" != 0 ]; then echo "Please install $(1) first: sudo apt-get install -y $(1)"; exit 1; fi; \
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(1); }

redis-server:
	@command -v redis-server >/dev/null 2>&1 || $(call apt_install,redis-server)

chromium:
	@test -x /usr/bin/chromium || $(call apt_install,chromium)

# The whole local stack on http://127.0.0.1:8000: Redis on loopback, a Celery worker (and a training worker
# when torch is installed), the web server and the shipped model; prints the demo login. Ctrl-C stops it all.
HOST ?= 127.0.0.1
PORT ?= 8000
run: $(VENV)/.installed-train redis-server
	$(BIN)/python manage.py runlocal --host $(HOST) --port $(PORT)

# ruff, then the whole suite (unit, integration with Redis + Celery worker processes + S3 over HTTP,
# browser tests in Debian's Chromium, the Lambda bundle test) on SQLite, then every test that touches the
# database again on PostgreSQL (a throwaway cluster of Debian's server: tests/on_postgres.py).
test: $(VENV)/.installed-dev redis-server chromium postgresql
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(BIN)/python -m tests.on_postgres $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The default model, reproduced from the photos in ../shared/data/cars (see ml/weights/default/MODEL_CARD.md).
DATA ?= ../shared/data/cars
# The shipped default model (issue 10's canonical recipe): train, then export-canonical (below). Resumable.
train: $(VENV)/.installed-train
	$(BIN)/python -m ml.train --data $(DATA_ALL) --out runs/canonical --config ml/configs/canonical.json --resume
	$(BIN)/python -m ml.release runs/canonical/best.pt --out $(OUT) --data $(DATA_ALL) --noncars $(NONCARS) --locator $(LOCATOR)

# The first default model's recipe (cars/ only, random flips), into runs/default and ml/weights/default.
train-default: $(VENV)/.installed-train
	$(BIN)/python -m ml.train --data $(DATA) --out runs/default --config ml/configs/default.json --resume
	$(BIN)/python -m ml.export runs/default/best.pt --out ml/weights/default --data $(DATA)

# Issue 10's recipe: cars/ + cars-more/, every photo turned to face left (ml/labels/facings.csv), config
# ml/configs/canonical.json, into runs/canonical/. Resumable: after an interruption run it again.
DATA_ALL ?= ../shared/data/cars ../shared/data/cars-more
.PHONY: train-canonical orientation
train-canonical: $(VENV)/.installed-train
	nice -n 10 $(BIN)/python -m ml.train --data $(DATA_ALL) --out runs/canonical --config ml/configs/canonical.json --resume

# The canonical run made the default model: export (every folder, faced left, per-view metrics), the car check
# refitted for it (ml/weights/locator/metadata.json too), MODEL_CARD.md; all or nothing (ml/release.py).
CKPT ?= runs/canonical/best.pt
OUT ?= ml/weights/default
NONCARS ?= ../shared/data/noncars
LOCATOR ?= ml/weights/locator
.PHONY: export-canonical
export-canonical: $(VENV)/.installed-train
	$(BIN)/python -m ml.release $(CKPT) --out $(OUT) --data $(DATA_ALL) --noncars $(NONCARS) --locator $(LOCATOR)

# The facing classifier from the hand labels (ml/weights/orientation/), then every photo's facing for training.
orientation: $(VENV)/.installed-train
	$(BIN)/python -m ml.train_orientation --labels ml/labels/orientation.csv --data $(DATA_ALL) --out ml/weights/orientation \
		--framed 2 --backgrounds $(NONCARS) --epochs 15 --height 48
	$(BIN)/python -m ml.orientation --data $(DATA_ALL) --labels ml/labels/orientation.csv --out ml/labels/facings.csv

# ONNX Runtime vs torch eager (same weights) vs this CPU's FLOP bound, cold start, memory; last line JSON.
MODEL ?= ml/weights/default
bench: $(VENV)/.installed-train
	@$(BIN)/python -m ml.bench --model $(MODEL)

# USERS simulated users for SECONDS s (Locust, headless) against the real local stack (manage.py runlocal on a free
# loopback port, its own database and media in a temporary folder: in LOADTEST_TMPDIR if given, else in /dev/shm
# when it has room, else in the system's temporary folder), uploading the photos in IMAGES; waits for the queue to
# drain and checks every upload. Last line JSON (loadtest/__main__.py). MODE: how a user waits for the result,
# upload-wait (POST ?wait=, default), status-wait (the status URL's ?wait=) or poll (every 1 s; POLL=1 too).
USERS ?= 20
SECONDS ?= 60
IMAGES ?= $(DATA)
.PHONY: loadtest
loadtest: $(VENV)/.installed-dev redis-server
	@$(BIN)/python -m loadtest --users $(USERS) --seconds $(SECONDS) --images $(IMAGES) $(if $(MODE),--mode $(MODE)) $(if $(filter 1,$(POLL)),--poll) $(if $(LOADTEST_TMPDIR),--tmpdir $(LOADTEST_TMPDIR))

# Peak memory of every decoding path (upload, worker, dataset checks, flip, training loader) for the worst
# accepted files (100-megapixel PNG/GIF/JPEG...), each in a fresh process; JSON last (tests/measure_decode_memory.py).
.PHONY: bench-memory
bench-memory: $(VENV)/.installed-dev
	@$(BIN)/python -m tests.measure_decode_memory

# The AWS Lambda bundle (README: Deploy to AWS): build/lambda-$(STAGE).zip made by `zappa package` from
# requirements-lambda.txt (manylinux2014 wheels), then checked: glibc <= 2.26, size, no torch/boto3/tests/secrets.
# The tooling is the deploy/ package (`python -m deploy --help`), which never goes into the bundle.
STAGE ?= dev
lambda-package: $(VENV)/.installed-dev
	$(BIN)/python -m deploy build --stage $(STAGE)

# Deploy (first time) or update the stage on AWS: the bundle is built and checked once, uploaded to the stage's
# s3_bucket, and zappa deploys that very zip (`zappa deploy|update --zip s3://...`; README: Deploy to AWS). Plain
# `zappa deploy` in the repository would zip .venv (torch). Rollback runs the zip of the version N back again;
# undeploy removes the function, its API, its execution role and its zips (the buckets stay).
lambda-deploy: $(VENV)/.installed-dev
	$(BIN)/python -m deploy zappa deploy $(STAGE)

lambda-update: $(VENV)/.installed-dev
	$(BIN)/python -m deploy zappa update $(STAGE)

N ?= 1
lambda-rollback: $(VENV)/.installed-dev
	$(BIN)/python -m deploy zappa rollback $(STAGE) -n $(N)

lambda-undeploy: $(VENV)/.installed-dev
	$(BIN)/python -m deploy zappa undeploy $(STAGE)

# Cold start and per-request latency inside the bundle's own interpreter (JSON in build/).
lambda-bench: $(VENV)/.installed-dev
	$(BIN)/python -m deploy measure --stage $(STAGE) --out build/lambda-bench-$(STAGE).json

# An upload request on Lambda, warm (UPLOADS=20) and cold (COLD=3 fresh containers): the bundle under zappa's
# handler, PostgreSQL and a local S3 server, as in the Lambda tests (tests/lambda/bench_upload.py; JSON last).
lambda-bench-upload: $(VENV)/.installed-dev postgresql
	@$(BIN)/python -m pytest tests/lambda/bench_upload.py -q -s -p no:cacheprovider

# Debian's PostgreSQL server binaries: the tests start their own throwaway clusters with them.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; }

# The latent-space features end to end on loopback: slider round trip in Chromium and over HTTP, morph files;
# last line JSON (reconstruct/explore/bench.py).
.PHONY: bench-explore bench-browser
# How soon a reconstruction shows in Chromium after its upload completes (20 uploads through the form; JSON last).
bench-browser: $(VENV)/.installed-dev redis-server chromium
	@$(BIN)/python -m loadtest.browser --images $(IMAGES)

bench-explore: $(VENV)/.installed-dev chromium
	@$(BIN)/python -m reconstruct.explore.bench

clean:
	rm -rf .pytest_cache .ruff_cache build dist staticfiles
