"""The project's error types. Every error a user can act on derives from `BertJaxError`; its
message names the file, line, value or flag and what to do. The command-line tools turn these
(and only these) into one `error: ...` line; anything else is a bug and keeps its traceback."""
from __future__ import annotations


class BertJaxError(Exception):
    """An error the user can act on; the message says where and what to do."""


class ConfigError(BertJaxError, ValueError):
    """A setting that cannot work (a flag, a configuration field, a model's config.json)."""
