"""The training tools' error types: each one a `BertJaxError`, so the command line prints it as
one `error: ...` line."""
from __future__ import annotations

from bert_jax.errors import BertJaxError


class TrainingError(BertJaxError, RuntimeError):
    """A run stopped for a reason the user must act on (message says what to do)."""


class Interrupted(TrainingError):
    """SIGINT/SIGTERM: a checkpoint was saved and the run can continue with --resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
