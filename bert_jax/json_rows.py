"""A JSON-lines task file (one JSON object a line) read as the rows of a delimited file."""
from __future__ import annotations

import json
from pathlib import Path

from bert_jax.tasks import Task


def iter_json_records(path: Path, text: str, task: Task, labeled: bool):
    """(header, records) of a JSON-lines file, shaped as `iter_records` gives them: the header
    is the columns the task reads, each record the values of those keys as text (a number as
    written, e.g. `3` or `0.5`)."""
    columns = [c for c in ((task.id,) if task.id else ()) + task.text
               + ((task.label,) if labeled else ())]

    def records():
        for line, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as err:
                yield line, line, [], f"not a JSON object ({err.msg}, column {err.colno})"
                continue
            if not isinstance(obj, dict):
                yield line, line, [], f"a JSON {type(obj).__name__}, not an object"
                continue
            if (absent := [c for c in columns if c not in obj]):
                yield line, line, [], f"no key {', '.join(map(repr, absent))}"
                continue
            yield line, line, [v if isinstance(v, str) else json.dumps(v)
                               for v in (obj[c] for c in columns)], None

    return columns, records()
