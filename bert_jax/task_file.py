"""A TOML task file (`--tasks-file`) -> a tuple of `Task`: one table per task, named as the
task, with the keys `KEYS` (kind, train, dev, text, label, and classes or range required; see
README "Your own tasks"). Paths, relative to the file, are stored absolute. The data files
must exist and their header (a .csv/.tsv's first line, a .jsonl's first object) must hold the
columns named; their rows (labels, scores, bytes) are the data loader's to check. Every
mistake is one `TaskFileError` line naming the file, the task, the key (or line) and the fix.
Knows nothing of tokenizers, models or JAX.
"""
from __future__ import annotations

import csv
import difflib
import json
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Sequence

from bert_jax.errors import BertJaxError
from bert_jax.tasks import BUILTIN_NAMES, KINDS, Task, TaskError, sha256_file

KEYS = ("kind", "train", "dev", "test", "text", "label", "classes", "range", "encoding", "head",
        "id", "batch_size", "loss_weight", "delimiter", "ordinal")
SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None}  # a file's suffix -> its delimiter
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
OPTIONAL = {"encoding": str, "head": str, "id": str, "delimiter": str, "batch_size": int,
            "loss_weight": (int, float), "ordinal": (int, float)}
EXAMPLE = '[mytask] with kind, train, dev, text, label and classes (or range)'


class TaskFileError(BertJaxError, ValueError):
    """A task file that cannot be used; the message names the file, the task, the key or line,
    and the fix."""


def read_tasks_file(path: str | Path) -> tuple[Task, ...]:
    """The tasks a TOML file defines, in the file's order; TaskFileError on any mistake."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            tables = tomllib.load(f)
    except FileNotFoundError:
        raise TaskFileError(f"{path}: no such task file. Check the path given to --tasks-file")
    except IsADirectoryError:
        raise TaskFileError(f"{path}: a folder, not a task file. Give the TOML file's path")
    except OSError as e:
        raise TaskFileError(f"{path}: cannot read it ({e.strerror}). Check its permissions")
    except UnicodeDecodeError as e:
        raise TaskFileError(f"{path}: not a TOML file (not UTF-8 text at byte {e.start}). "
                            f"Give a TOML task file, e.g. {EXAMPLE}")
    except tomllib.TOMLDecodeError as e:
        found = re.search(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$", str(e))
        where = f"line {found[1]}, column {found[2]}" if found and found[1] else "end of file"
        problem = str(e)[:found.start()] if found else str(e)
        raise TaskFileError(f"{path}, {where}: TOML syntax error: {problem}. Fix the TOML "
                            "there (strings in double quotes, one [name] table per task)")
    if not tables:
        raise TaskFileError(f"{path}: no task table. Define each task as a table, e.g. {EXAMPLE}")
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise TaskFileError(f"{path}: top-level key {name!r} is not a task table. Put every "
                                f"key inside a task's table, after a [name] line")
    return tuple(_read_task(path, name, table) for name, table in tables.items())


def _read_task(path: Path, name: str, table: dict[str, Any]) -> Task:
    def bad(key: str, problem: str, fix: str):
        raise TaskFileError(f"{path}: task {name!r}: {key}: {problem}. {fix}")

    if name in BUILTIN_NAMES:
        bad("name", f"{name!r} is a built-in task", "Rename the table, e.g. "
            f"[my_{name}] (the built-ins are {', '.join(BUILTIN_NAMES)})")
    if not NAME.fullmatch(name):
        bad("name", f"{name!r} is not a simple name", "Rename the table: a letter, then "
            "letters, digits or _ (e.g. [my_task])")
    for key, value in table.items():
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            nested = f" ([{name}.{key}] makes a table inside [{name}])" * isinstance(value, dict)
            bad(key, f"unknown key{nested}", (f"Did you mean {close[0]!r}? " if close else "")
                + f"The keys are {', '.join(KEYS)}")
    kind = _get(bad, table, "kind", str)
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, KINDS, n=1)
        bad("kind", f"unknown kind {kind!r}", (f"Did you mean {close[0]!r}? " if close else "")
            + f"Use one of {', '.join(KINDS)}")
    classification = kind.endswith("classification")
    text = _get(bad, table, "text", (str, list))
    text = [text] if isinstance(text, str) else text
    label = _get(bad, table, "label", str)
    for key, column in [("text", c) for c in text] + [("label", label)]:
        if not isinstance(column, str) or not column:
            bad(key, f"{column!r} is not a column name", "Give the column's name as a string")
    values: dict[str, Any] = {}
    has, wrong = ("classes", "range") if classification else ("range", "classes")
    if wrong in table:
        bad(wrong, f"a {kind} task has {has}, not {wrong}", f"Remove {wrong} (or change kind)")
    if classification:
        classes = _get(bad, table, "classes", list, f"A {kind} task lists its label values, "
                       'in class order, e.g. classes = ["negative", "positive"]')
        for c in classes:
            if isinstance(c, bool) or not isinstance(c, (str, int, float)):
                bad("classes", f"{c!r} is not a label value", "Give strings or numbers, as the "
                    'file writes them (quote words: "true")')
        values["classes"] = tuple(classes)
    else:
        low_high = _get(bad, table, "range", list, f"A {kind} task gives the scores' range, "
                        "e.g. range = [0.0, 5.0]")
        if len(low_high) != 2 or not all(_is_number(x) for x in low_high):
            bad("range", f"{low_high!r} is not two numbers", "Give range = [low, high]")
        values["range"] = tuple(float(x) for x in low_high)
    values.update({key: _get(bad, table, key, kinds) for key, kinds in OPTIONAL.items()
                   if key in table})
    for key in ("loss_weight", "ordinal"):
        if key in values:
            values[key] = float(values[key])
    if len(values.get("delimiter", ",")) != 1:
        bad("delimiter", f"{values['delimiter']!r} is not one character",
            'Give one character, e.g. delimiter = ";"')
    folder = Path(os.path.abspath(path)).parent
    files = [(split, os.path.abspath(folder / _get(bad, table, split, str)))
             for split in ("train", "dev", "test") if split != "test" or "test" in table]
    try:
        task = Task(name, kind, text=tuple(text), label=label, files=tuple(files),
                    id=values.pop("id", "id"), **values)
    except TaskError as e:
        raise TaskFileError(f"{path}: {e}") from None
    headers = {split: _header(bad, split, Path(file), task.delimiter) for split, file in files}
    for split, header in headers.items():
        want = list(task.text) + [label] * (split != "test") + [task.id] * ("id" in table)
        for column in dict.fromkeys(c for c in want if c):
            if column not in header:
                key = "id" if column == task.id else "label" if column == label else "text"
                bad(split, f"{task.file(split)}: no column {column!r} (its columns: "
                    f"{', '.join(map(repr, header))})", f"Fix {key} or the file's header"
                    + " (or delimiter)" * (len(header) == 1))
    if "id" not in table and not all("id" in h for h in headers.values()):
        task = task.replace(id="")  # the rows' line numbers
    return task


def _get(bad, table: dict, key: str, kinds, fix: str = ""):
    if key not in table:
        bad(key, "missing", fix or f"Add {key} = ..., e.g. {_EXAMPLES[key]}")
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, kinds):
        bad(key, f"{value!r} is not {_a(kinds)}", f"Give {key} as {_a(kinds)}")
    return value


_EXAMPLES = {"kind": f'kind = "classification" (one of {", ".join(KINDS)})',
             "train": 'train = "mytask/train.csv" (relative to this file)',
             "dev": 'dev = "mytask/dev.csv"', "text": 'text = "sentence" (two for a pair)',
             "label": 'label = "label" (the label column)'}


def _a(kinds) -> str:
    names = {str: "a string", list: "a list", int: "a whole number", (int, float): "a number",
             (str, list): "a string or a list"}
    return names[kinds]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _header(bad, split: str, path: Path, delimiter: str) -> list[str]:
    """The column names of a data file: its first line (.csv/.tsv), its first object (.jsonl)."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        bad(split, f"{path}: a {suffix or 'suffix-less'} file", "Give a .csv, .tsv or .jsonl "
            "file (rename it: a .csv or .tsv file may set its separator with delimiter)")
    if not path.is_file():
        bad(split, f"no file {path}" + (" (a folder)" * path.is_dir()),
            "Fix the path (relative to the task file's folder)")
    line_no = 1
    try:
        with open(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
                if suffix != ".jsonl":
                    header = next(csv.reader([line], delimiter=delimiter or SUFFIXES[suffix]), [])
                    if header:
                        return header
                    break
                if line.strip():
                    first = json.loads(line)
                    if not isinstance(first, dict):
                        bad(split, f"{path}, line {line_no}: not a JSON object", "Write one "
                            'object per line, e.g. {"text": "...", "label": 1}')
                    return list(first)
    except UnicodeDecodeError as e:
        bad(split, f"{path}, line {line_no}: not UTF-8 text (byte {e.start} of the line)",
            "Save the file as UTF-8")
    except json.JSONDecodeError as e:
        bad(split, f"{path}, line {line_no}: not JSON ({e.msg}, column {e.colno})",
            "Write one JSON object per line")
    except csv.Error as e:
        bad(split, f"{path}, line 1: the header cannot be read ({e})", "Fix the header line")
    except OSError as e:
        bad(split, f"{path}: cannot read it ({e.strerror})", "Check its permissions")
    if suffix == ".jsonl":
        bad(split, f"{path}: no JSON object", "Write one object per line")
    bad(split, f"{path}, line 1: no header line", "Begin the file with a line naming its columns")


def describe_tasks(tasks: Sequence[Task]) -> str:
    """A few lines per task for logs: name, kind, encoding and head, classes or range, files."""
    lines = []
    for t in tasks:
        label = (f"{len(t.classes)} classes {', '.join(map(str, t.classes))}"
                 if t.is_classification else f"score in [{t.range[0]:g}, {t.range[1]:g}]")
        encoding = f"{t.encoding}-encoded, " if t.is_pair else ""
        extra = (f", batch size {t.batch_size}" * (t.batch_size != 0)
                 + f", loss weight {t.loss_weight:g}" * (t.loss_weight != 1.0))
        lines.append(f"{t.name}: {t.kind}, {encoding}head {t.head}, {label}{extra}")
        lines.append(f"  text {', '.join(t.text)}; label {t.label}; id {t.id or '(line numbers)'}")
        lines += [f"  {split}: {file}" for split, file in t.files]
    return "\n".join(lines)


def file_digests(task: Task, folder: str | Path | None = None) -> dict[str, str]:
    """{split: sha256 of its file}; relative paths (the built-ins') are taken in `folder`."""
    return {split: sha256_file(Path(folder or ".") / file) for split, file in task.files}
