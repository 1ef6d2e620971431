"""The project's error types. Every error a user can act on derives from `BertJaxError`; its
message names the file, line, value or flag and what to do. The command-line tools turn these
(and only these) into one `error: ...` line; anything else is a bug and keeps its traceback."""
from __future__ import annotations


class BertJaxError(Exception):
    """An error the user can act on; the message says where and what to do."""


class ConfigError(BertJaxError, ValueError):
    """A setting that cannot work (a flag, a configuration field, a model's config.json)."""


class ConversionError(BertJaxError, ValueError):
    """A checkpoint that cannot be converted: unreadable, not BERT, or not matching the config."""


class ChecksumError(BertJaxError, ValueError):
    """A model file whose sha256 is not the expected one."""


class ExportError(BertJaxError, ValueError):
    """A source or output folder the export cannot use; the message says which and why."""


class MissingFileError(BertJaxError, FileNotFoundError):
    """A file or folder the user named (or the install should hold) is not there."""


class OutputExistsError(BertJaxError, FileExistsError):
    """An output folder that already holds something and may not be replaced without asking."""


class OutputWriteError(BertJaxError, OSError):
    """An output that cannot be written (permissions, a full disk); the message names it."""


class MissingDependencyError(BertJaxError, ImportError):
    """An optional package this input needs is not installed; the message names the install."""


# What a failed write says (errno's words, as OSError and tensorstore's errors quote them).
_WRITE_FAILURES = ("No space left on device", "Disk quota exceeded", "Read-only file system",
                   "Permission denied", "Operation not permitted")


def write_failure(err: BaseException) -> str | None:
    """Why a write failed when the disk is the cause (full, read-only, permissions), else None.
    Orbax writes arrays through tensorstore, which reports a full disk as a ValueError
    "RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']": the disk's space,
    not the device's memory."""
    if isinstance(err, OSError):
        return err.strerror or str(err)
    text = str(err)
    return next((words for words in _WRITE_FAILURES if words in text), None)
