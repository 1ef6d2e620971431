"""bert_jax.backend_log: JAX's records about a GPU/TPU it could not start become one line.

The records are made as JAX makes them (jax/_src/xla_bridge.py, `_discover_and_register_pjrt_
plugins`: `logger.exception(...)` inside the `except` around a plugin's `initialize()`; `backends`:
`logger.info("Unable to initialize backend ...")` for a backend that fails quietly)."""
from __future__ import annotations

import importlib.metadata
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bert_jax import backend_log
from train import backend as backend_lib

CUDA_303 = ("operation cuInit(0) failed: Unknown CUDA error 303; cuGetErrorName failed. This "
            "probably means that JAX was unable to load the CUDA libraries.")
TPU_ABSENT = ("Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so: "
              "libtpu.so: cannot open shared object file: No such file or directory")


@pytest.fixture
def jax_logger(monkeypatch):
    """(JAX's backend logger with a fresh filter installed as `install()` does, what it prints:
    a StringIO read after logging, in the format train.multitask logs with)."""
    fresh = backend_log.BackendFailureFilter()
    monkeypatch.setattr(backend_log, "FILTER", fresh)
    printed = io.StringIO()
    handler = logging.StreamHandler(printed)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logger = logging.getLogger("jax._src.xla_bridge")
    for name in backend_log.LOGGERS:  # the filter the tools installed on import goes aside
        monkeypatch.setattr(logging.getLogger(name), "filters", [])
    monkeypatch.setattr(logger, "level", logging.INFO)
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(handler)
    assert backend_log.install() is fresh
    yield logger, printed
    logger.removeHandler(handler)


def cuda_plugin_fails(logger: logging.Logger) -> None:
    """What JAX logs when the CUDA plugin's initialize() raises (no usable driver)."""
    try:
        raise RuntimeError(CUDA_303 + "\n(further detail on a second line)")
    except RuntimeError:
        logger.exception("Jax plugin configuration error: Exception when calling %s.initialize()",
                         "jax_plugins.xla_cuda12")


def test_a_cuda_plugin_that_cannot_start_is_one_line_naming_it_and_the_way_back(jax_logger):
    logger, printed = jax_logger
    cuda_plugin_fails(logger)
    lines = printed.getvalue().splitlines()
    assert len(lines) == 1, lines  # JAX's own record is the message and a 10-line traceback
    assert "Traceback" not in lines[0]
    assert "the JAX plugin jax_plugins.xla_cuda12 could not start" in lines[0]
    assert "RuntimeError: operation cuInit(0) failed: Unknown CUDA error 303" in lines[0]
    assert "`make install ACCEL=cpu` (or `make clean-venv`)" in lines[0]
    assert backend_log.fallback_said()


def test_the_same_failure_told_again_adds_no_line(jax_logger):
    """JAX may report one failure in several records (the plugin's exception, then the backend
    it could not create): one line in all."""
    logger, printed = jax_logger
    cuda_plugin_fails(logger)
    logger.warning("CUDA backend failed to initialize: %s.(Set TF_CPP_MIN_LOG_LEVEL=0 and rerun "
                   "for more info.)", CUDA_303)
    assert len(printed.getvalue().splitlines()) == 1
    assert len(backend_log.FILTER.failures) == 2


def test_a_plain_cpu_run_logs_nothing_about_the_absent_tpu(jax_logger):
    logger, printed = jax_logger
    logger.info(TPU_ABSENT)
    logger.info("some other line")  # anything else passes
    assert printed.getvalue().splitlines() == ["jax._src.xla_bridge: some other line"]
    assert backend_log.FILTER.failures == [("backend tpu", TPU_ABSENT.partition(": ")[2])]
    assert not backend_log.fallback_said()


def test_train_adds_no_second_warning_once_the_line_went_out(jax_logger, monkeypatch):
    real = importlib.metadata.version

    def with_cuda_plugin(name):
        return "0.10.2" if name == "jax-cuda12-plugin" else real(name)
    monkeypatch.setattr(importlib.metadata, "version", with_cuda_plugin)
    assert backend_lib.backend_report()[1].startswith("jax-cuda12-plugin 0.10.2 is installed")
    cuda_plugin_fails(jax_logger[0])
    assert backend_lib.backend_report()[1] is None


@pytest.mark.slow
def test_a_tool_started_on_the_cpu_prints_no_backend_line():
    """The real JAX in a fresh process, logging at INFO as train.multitask does: its TPU probe's
    INFO line does not show."""
    code = ("import logging; logging.basicConfig(level=logging.INFO); import bert_jax.cli; "
            "import jax; print(jax.devices())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={"JAX_PLATFORMS": "", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "CpuDevice" in done.stdout
    assert "Unable to initialize backend" not in done.stderr, done.stderr


@pytest.mark.slow
def test_train_full_where_the_cuda_plugin_fails_says_two_lines(tmp_path):
    """JAX's real plugin discovery, with a CUDA plugin whose initialize() fails as it does with
    no usable driver: `make train-full`'s command says that in one line, then refuses the CPU
    in one more (no traceback)."""
    plugin = tmp_path / "plugins" / "jax_plugins" / "xla_cuda12"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text(
        f"def initialize():\n    raise RuntimeError({CUDA_303!r})\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "plugins"), "JAX_PLATFORMS": ""}
    done = subprocess.run([sys.executable, "-m", "train.multitask", "--no-allow-cpu", "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                          env=env, cwd=Path(__file__).resolve().parents[1])
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 2, done.stderr
    assert "the JAX plugin jax_plugins.xla_cuda12 could not start (RuntimeError: operation " \
           "cuInit(0) failed: Unknown CUDA error 303" in lines[0]
    assert lines[1].startswith("error: JAX runs on the CPU here")
