"""`TaskData`: a tokenized split as numpy (ragged token ids, labels, ids), what batching reads."""
from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

import numpy as np

from bert_jax.cs224n import check_task, is_pair_task

if TYPE_CHECKING:  # annotations only: `TaskData` needs no `datasets`
    import datasets


@dataclasses.dataclass
class TaskData:
    """A tokenized split as numpy, for the batcher.

    `ids1`/`ids2`: per example an unpadded int32 array of token ids; `labels`: [n] int32 (sst,
    para) or float32 (sts), None when unlabeled; `example_ids`: the file's ids; `truncated`:
    sentences cut to max_length.
    """

    task: str
    ids1: list[np.ndarray]
    ids2: list[np.ndarray] | None
    labels: np.ndarray | None
    example_ids: list[str]
    truncated: int = 0
    source: str = ""

    def __len__(self) -> int:
        return len(self.ids1)

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        """[n] int32: token length of each example (the longer of the pair)."""
        n1 = np.fromiter((len(r) for r in self.ids1), np.int32, len(self.ids1))
        if self.ids2 is None:
            return n1
        return np.maximum(n1, np.fromiter((len(r) for r in self.ids2), np.int32, len(self.ids2)))

    @property
    def is_pair(self) -> bool:
        return self.ids2 is not None


def _ragged(column) -> list[np.ndarray]:
    arr = column.combine_chunks()
    offsets = arr.offsets.to_numpy()
    values = np.array(arr.values.to_numpy(zero_copy_only=False), np.int32)  # one writable copy
    return [values[offsets[i]:offsets[i + 1]] for i in range(len(arr))]


def task_data(ds: datasets.Dataset, task: str) -> TaskData:
    """Numpy view of a tokenized dataset (see `tokenize_split`)."""
    check_task(task)
    table = ds.with_format("arrow")[:]
    if "ids1" not in table.column_names:
        raise ValueError("task_data needs a tokenized dataset: call tokenize_split first")
    pair = is_pair_task(task)
    if pair and "ids2" not in table.column_names:
        raise ValueError(f"task {task!r} is a pair task but the dataset has no ids2 column")
    labels = None
    if "label" in table.column_names:
        labels = table.column("label").to_numpy().astype(np.float32 if task == "sts" else np.int32)
    return TaskData(task=task, ids1=_ragged(table.column("ids1")),
                    ids2=_ragged(table.column("ids2")) if pair else None, labels=labels,
                    example_ids=table.column("id").to_pylist())
