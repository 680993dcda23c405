# The README's two commands:
#   make pipeline   set up .venv, then run the main job: train the quick model, evaluate it, export
#                   it to ONNX with parity proven, register it in the BentoML store, verify it, and
#                   serve it in the foreground (`make model` does everything but the serving)
#   make test       set up .venv, then check style (ruff) and run the test suite (what .ci/run calls)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# GPU=1 on a host where nvidia-smi lists a GPU (override either way: make pipeline GPU=0 / GPU=1).
# GPU=0: torch from PyTorch's CPU wheel index (TORCH_CPU_INDEX), so no CUDA package is ever resolved;
#        where that index is out of reach (our machines reach only PyPI, which holds a local CPU wheel
#        for them), the plain pin from the configured index instead, saying so. Installing torch
#        first keeps the project's `torch>=2.4` from resolving to PyPI's multi-GB CUDA build.
# GPU=1: the same pin from PyPI, whose Linux wheel is the CUDA 13 build, plus the `gpu` extra
#        (onnxruntime-gpu[cuda,cudnn]: the CUDA 13 / cuDNN 9 libraries ONNX Runtime loads); set-up
#        ends with capsnet check-gpu, which fails unless training and ONNX Runtime use the GPU.
GPU ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
TORCH_SPEC ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
ifeq ($(GPU),1)
EXTRAS := dev,gpu
else
EXTRAS := dev
endif
INSTALLED := $(VENV)/.installed-$(if $(filter 1,$(GPU)),gpu,cpu)
# Expanded once (:=), so training, evaluation and export all land in the same folder.
ifndef RUN_DIR
RUN_DIR := runs/quick-$(shell date +%Y%m%d-%H%M%S)
endif
PORT ?= 3000
GRPC_PORT ?= $(or $(CAPSNET_GRPC_PORT),8001)
OIP_HTTP_PORT ?= $(or $(CAPSNET_OIP_HTTP_PORT),8000)

# Default data root (one folder per dataset: mnist/, fashion-mnist/): the shared datasets folder beside
# the checkout when there is one; otherwise the loader uses ~/.cache/capsnet/<dataset> and downloads the
# four files there with SHA-256 checks.
ifeq ($(CAPSNET_DATA_DIR),)
ifneq ($(wildcard ../shared/datasets/mnist/*.gz),)
export CAPSNET_DATA_DIR := $(abspath ../shared/datasets)
endif
endif

export BENTOML_DO_NOT_TRACK ?= True

.DEFAULT_GOAL := help
help:  ## list the targets (this)
	@grep -E '^[a-z-]+:.*## ' $(firstword $(MAKEFILE_LIST)) | \
	  sed -E 's/^([a-z-]+):.*## (.*)$$/\1\t\2/' | awk -F'\t' '{printf "  make %-17s %s\n", $$1, $$2}'

.PHONY: help setup model pipeline serve test lint claims pretrained pretrained-model weights-present
setup: $(INSTALLED)  ## create .venv and install the project (CPU torch; GPU=1: CUDA build + onnxruntime-gpu)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
ifeq ($(GPU),1)
	$(BIN)/python -m pip install "$(TORCH_SPEC)"
else
	@if $(BIN)/python -c "import urllib.request; urllib.request.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=15)" \
	    2>/dev/null; then \
	  echo "$(BIN)/python -m pip install --index-url $(TORCH_CPU_INDEX) \"$(TORCH_SPEC)\""; \
	  $(BIN)/python -m pip install --index-url $(TORCH_CPU_INDEX) "$(TORCH_SPEC)"; \
	else \
	  echo "set-up: PyTorch's CPU wheel index ($(TORCH_CPU_INDEX)) is out of reach; installing $(TORCH_SPEC)" \
	    "from the configured index instead (the CPU build only where that index holds it, as on our machines)"; \
	  $(BIN)/python -m pip install "$(TORCH_SPEC)"; \
	fi
endif
	$(BIN)/python -m pip install -e '.[$(EXTRAS)]'
ifeq ($(GPU),1)
	$(BIN)/capsnet check-gpu
endif
	touch $@

# What follows training, for a run folder holding best.pt ($(1)): evaluate, export with the explorer's
# graphs and parity (which registers it), verify. `model` and `pretrained-model` both end with it.
# INT8=1 also exports and registers each model's INT8 graph (capsnet export --int8; docs/export.md)
# and verifies it.
define evaluate_export_verify
	$(BIN)/capsnet evaluate $(1)/best.pt
	$(BIN)/capsnet export $(1)/best.pt -o $(1)/export$(if $(filter 1,$(INT8)), --int8)
	$(BIN)/capsnet verify $(1)/export/model.onnx $(1)/best.pt
	$(if $(filter 1,$(INT8)),$(BIN)/capsnet verify $(1)/export/model.int8.onnx $(1)/best.pt)
endef

model: setup  ## train the quick model, evaluate, export with parity, register, verify (no serving)
	$(BIN)/capsnet train --profile quick --out $(RUN_DIR)
	$(call evaluate_export_verify,$(RUN_DIR))

# Serving starts only after the model is registered, also under `make -j`.
pipeline: model  ## `model`, then serve it (HTTP :3000, OIP REST :8000, gRPC :8001) until Ctrl-C
	$(MAKE) --no-print-directory serve

# Trained models from float16 weights files instead of training (training/weights_file.py): each file's
# SHA-256 is checked against the manifest beside it, then evaluate, export with parity, register and
# verify as `model` does, one run folder per file ($(PRETRAINED_RUNS)/NAME); `pretrained` serves them
# all. Default: every weights file shipped in weights/ (the cpu-best MNIST model, and each further
# task's model once it is shipped); WEIGHTS="A.safetensors B.safetensors" for others (NAME.json beside each).
WEIGHTS ?= $(sort $(wildcard weights/*.safetensors))
PRETRAINED_RUNS ?= runs
INT8 ?= 0
pretrained_run = $(PRETRAINED_RUNS)/$(basename $(notdir $(1)))
# The blank line before endef ends each file's commands with a newline, so `foreach` keeps them apart.
define unpack_evaluate_export_verify
	$(BIN)/capsnet weights unpack $(1) -o $(call pretrained_run,$(1))/best.pt
	$(call evaluate_export_verify,$(call pretrained_run,$(1)))

endef
# Checked before any set-up, so a missing file costs no install.
weights-present:
	@test -n "$(strip $(WEIGHTS))" || { echo "no weights files: weights/ holds none and WEIGHTS is empty; pass WEIGHTS=NAME.safetensors" >&2; exit 2; }
	@for w in $(WEIGHTS); do test -f "$$w" || { echo "$$w: no such weights file. Pass" \
	  "WEIGHTS=NAME.safetensors with NAME.json beside it (capsnet weights pack -o NAME makes one from a run's" \
	  "best.pt; the repository ships weights/capsnet-mnist-cpu-best.safetensors)." >&2; exit 2; }; done

pretrained-model: weights-present setup  ## the shipped weights files instead of training: unpack, evaluate, export, register, verify each
	$(foreach w,$(WEIGHTS),$(call unpack_evaluate_export_verify,$(w)))

pretrained: pretrained-model  ## `pretrained-model`, then serve them until Ctrl-C
	$(MAKE) --no-print-directory serve

# Serve the registered models until Ctrl-C: every capsnet-* model, each in the version its policy picks
# (CAPSNET_VERSION_POLICY, default best: the highest validation accuracy, so `make pipeline`'s quick model
# does not displace the shipped one `make pretrained` registered); CAPSNET_MODEL_TAG=NAME:VERSION,... pins
# versions. It prints what will serve before starting; capsnet-mnist answers requests that name none.
serve: setup  ## serve every registered capsnet-* model (the best version of each, or CAPSNET_MODEL_TAG's) until Ctrl-C
	@$(BIN)/python -c "import serving.service as s; print(*s.store.selection_lines(s.selection, s.settings), sep='\n')" \
	  > /tmp/capsnet-serve-check.$$$$ 2>/tmp/capsnet-serve-error.$$$$ || { \
	  grep -v "^\s*$$" /tmp/capsnet-serve-error.$$$$ | tail -6 >&2; rm -f /tmp/capsnet-serve-*.$$$$; exit 2; }; \
	  echo; cat /tmp/capsnet-serve-check.$$$$; rm -f /tmp/capsnet-serve-*.$$$$
	@echo "Pin others with CAPSNET_MODEL_TAG=NAME:VERSION (bentoml models list shows them). Ctrl-C stops."
	@echo "  HTTP  http://localhost:$(PORT)   (API docs: http://localhost:$(PORT)/docs, spec: /docs.json)"
	@echo "  gRPC  localhost:$(GRPC_PORT)   (Open Inference Protocol v2, by model name, e.g. capsnet-mnist)"
	@echo "  REST  http://localhost:$(OIP_HTTP_PORT)/v2   (Open Inference Protocol v2 over HTTP: JSON or binary tensors)"
	@echo "Try, from another shell:"
	@echo "  curl -s -F images=@serving/examples/seven.png http://localhost:$(PORT)/classify_image"
	@echo "  curl -s http://localhost:$(PORT)/metadata"
	@echo
	CAPSNET_GRPC_PORT=$(GRPC_PORT) CAPSNET_OIP_HTTP_PORT=$(OIP_HTTP_PORT) $(BIN)/bentoml serve --port $(PORT)

# The talk's claims, measured against a CNN (benchmarks/capsule_claims.py): 49 min on this 2-core CPU,
# resumable (runs in runs/claims/), the report in docs/claims/<scale>/. CLAIMS_SCALE=cpu-long: the affine claim
# at 99.0 % validation over 3 seeds against two CNNs (~4.5 h here in 90-min pieces, each resuming); CLAIMS_SCALE=paper: the paper's scale, for a GPU, in 13-minute pieces.
# CLAIMS_ARGS passes more options, e.g. on a fresh clone
# CLAIMS_ARGS="--from-report docs/claims/cpu-long" (only what the committed report lacks trains).
CLAIMS_SCALE ?= cpu
CLAIMS_ARGS ?=
claims: setup  ## the talk's claims against a CNN (49 min on a 2-core CPU, resumable)
	$(BIN)/python benchmarks/capsule_claims.py --scale $(CLAIMS_SCALE) $(CLAIMS_ARGS)

# pytest in two workers: the server tests mostly wait on their servers (timings: docs/testing.md)
test: setup  ## ruff, then the test suite (what CI runs)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --durations=15

lint: setup  ## ruff only
	$(BIN)/ruff check .
