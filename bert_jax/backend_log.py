"""JAX's own log records about a GPU/TPU it could not start, each made one line.

When a GPU or TPU build of JAX cannot use its device (no driver, no device visible, a version
mismatch), JAX logs the plugin's exception with its whole traceback (`Jax plugin configuration
error: Exception when calling jax_plugins.xla_cuda12.initialize()` and ten lines of `cuInit(0)
failed ... CUDA error 303`), and on every plain CPU run an INFO line `Unable to initialize backend
'tpu': ... libtpu.so`. `install()` puts a filter on the loggers that emit them, before JAX picks
its backend: the failure becomes one warning line naming the plugin, the error's first line and
the way back to the CPU build; the INFO lines about backends that are simply absent are dropped
(`failures()` still has them). Other records pass untouched.
"""
from __future__ import annotations

import logging

# The loggers that report a backend failing to start: JAX's backend registry, and the CUDA
# plugins' own modules (a failed version check is a WARNING there, in newer JAX).
LOGGERS = ("jax._src.xla_bridge", "jax_plugins.xla_cuda12", "jax_plugins.xla_cuda13")
BACK_TO_CPU = ("JAX runs on the CPU. Check `nvidia-smi` (or the TPU runtime); to go back to the "
               "CPU build: `make install ACCEL=cpu` (or `make clean-venv`)")
MAX_REASON = 240  # characters of the error kept in the line


def one_line(text: str, limit: int = MAX_REASON) -> str:
    """`text` with every run of whitespace (newlines included) made one space, cut to `limit`."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class BackendFailureFilter(logging.Filter):
    """The filter `install()` puts on `LOGGERS`; `failures` holds (what, reason) of each
    backend or plugin that failed to start, and `said` whether a warning line went out."""

    def __init__(self):
        super().__init__()
        self.failures: list[tuple[str, str]] = []
        self.said = False

    def _warn(self, record: logging.LogRecord, what: str, reason: str) -> bool:
        self.failures.append((what, reason))
        if self.said:  # one line per process: JAX reports one failure in up to three records
            return False
        self.said = True
        record.msg, record.args = f"{what} could not start ({reason}). {BACK_TO_CPU}", ()
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Jax plugin configuration error"):
            what = f"the JAX plugin {record.args[0]}" if record.args else "a JAX plugin"
            err = record.exc_info[1] if record.exc_info else None
            reason = f"{type(err).__name__}: {err}" if err is not None else message
            return self._warn(record, what, one_line(reason))
        if message.startswith("CUDA version check failed") or message.startswith(
                "CUDA backend failed to initialize"):
            return self._warn(record, "JAX's CUDA backend", one_line(message.partition(": ")[2]
                                                                     or message))
        if message.startswith("Unable to initialize backend"):
            # A backend tried quietly (the TPU one on every machine): absent is not a failure
            # worth a line; a GPU/TPU build that fell back is said by the one line above.
            name = message.split("'")[1] if message.count("'") >= 2 else "?"
            self.failures.append((f"backend {name}", one_line(message.partition(": ")[2])))
            return False
        return True


FILTER = BackendFailureFilter()


def install() -> BackendFailureFilter:
    """Put `FILTER` on JAX's backend loggers (once; call it before JAX picks its backend:
    before `jax.devices()` or any computation); returns it."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if FILTER not in logger.filters:
            logger.addFilter(FILTER)
    return FILTER


def fallback_said() -> bool:
    """Whether a one-line warning about a GPU/TPU plugin that failed has gone out."""
    return FILTER.said
