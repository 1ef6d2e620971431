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
