"""A task's split in one call: `load_task` (parse and validate, tokenize with a disk
cache, view as numpy). Each step is its own module, whose names are imported from there:

- `bert_jax.cs224n`: the CS224N files, parsing and validation (`load_split`, `DataError`);
- `bert_jax.token_cache`: tokenization cached on disk (`tokenize_split`);
- `bert_jax.task_data`: the numpy view (`TaskData`, `task_data`);
- `bert_jax.batching`: padded-length buckets, epoch order and batches.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import datasets
import numpy as np

from bert_jax.cs224n import (SKIP_HINT, DataError, data_error, default_file, find_data_dir,
                             load_split_with_report)
from bert_jax.task_data import TaskData, task_data
from bert_jax.tasks import Task, as_task
from bert_jax.token_cache import count_truncated, tokenize_split

logger = logging.getLogger("bert_jax.data")


def load_task(data_dir_or_file: str | os.PathLike | None, task: Task | str, split: str, tokenizer,
              max_length: int = 128, limit: int | None = None, skip_bad_rows: bool = False,
              cache_dir: str | os.PathLike | None | bool = None,
              labeled: bool | None = None) -> TaskData:
    """Load, validate, tokenize (cached) and view one split in one call.

    `task`: a definition (`bert_jax.tasks.Task`) or a built-in's name. `data_dir_or_file`: a
    file, or a folder holding the task's file of `split` (a built-in's CS224N name, or a user
    task's path relative to it), or None for `find_data_dir()`. `labeled`: read the label column
    (default: every split but test). `limit`: keep the first `limit` rows. A cross-encoded pair
    task is tokenized as one joint sequence per pair.
    """
    task = as_task(task)
    name = default_file(task, split)
    path = Path(data_dir_or_file) if data_dir_or_file is not None else find_data_dir()
    if path.is_dir():
        if name is None:
            raise DataError(f"{path}: task {task.name!r} has no {split} file (the CS224N data has no "
                            "Quora test split). Pass a file path instead")
        path = path / name
    labeled = split != "test" if labeled is None else labeled
    ds, skipped = load_split_with_report(path, task, labeled=labeled,
                                         skip_bad_rows=skip_bad_rows)
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    cross = {"cross": True} if task.encoding == "cross" else {}
    tok = tokenize_split(ds, tokenizer, max_length, cache_dir=cache_dir, **cross)
    tok = _drop_empty_after_normalising(tok, path, skip_bad_rows)
    data = task_data(tok, task)
    data.truncated = count_truncated(tok, max_length)
    data.source = str(path)
    return data


def _drop_empty_after_normalising(tok: datasets.Dataset, path: Path, skip_bad_rows: bool
                                  ) -> datasets.Dataset:
    """Rows with a sentence that the tokenizer's normaliser empties (only control, format or
    combining characters: [CLS] [SEP] and nothing between) are bad rows: DataError naming the
    first, or skipped and listed with `skip_bad_rows`."""
    table = tok.with_format("arrow")[:]
    empty = np.zeros(len(tok), bool)
    for col in ("len1", "len2"):
        if col in table.column_names:
            empty |= table.column(col).to_numpy() <= 2
    if not empty.any():
        return tok
    lines = table.column("line").to_numpy()[empty].tolist()
    problem = "a sentence is empty once normalised (only control, format or accent characters)"
    if not skip_bad_rows:
        raise data_error(path, lines[0], problem, SKIP_HINT)
    if empty.all():
        raise data_error(path, None, f"no usable rows: every sentence is empty once normalised "
                   f"(first: line {lines[0]})", "Check the file and its task")
    logger.warning("%s: skipped %d row%s whose sentence is empty once normalised (line%s %s)",
                   path, len(lines), "s" if len(lines) > 1 else "", "s" if len(lines) > 1 else "",
                   ", ".join(map(str, lines[:10])) + (", ..." if len(lines) > 10 else ""))
    return tok.select(np.flatnonzero(~empty))
