"""`TaskData`: a tokenized split as numpy (ragged token ids, labels, ids), what batching reads."""
from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

import numpy as np

from bert_jax.tasks import Task, as_task

if TYPE_CHECKING:  # annotations only: `TaskData` needs no `datasets`
    import datasets


@dataclasses.dataclass
class TaskData:
    """A tokenized split as numpy, for the batcher.

    `task`: the task's name, `spec` its definition (`bert_jax.tasks.Task`; default: the
    built-in of that name). `ids1`/`ids2`: per example an unpadded int32 array of token ids (a
    cross-encoded pair: the joint `[CLS] a [SEP] b [SEP]` in `ids1`, and `first` [n] int32 its
    tokens of type 0); `labels`: [n] int32 class indices or float32 scores, None when
    unlabeled; `example_ids`: the file's ids; `truncated`: sentences cut to max_length.
    """

    task: str
    ids1: list[np.ndarray]
    ids2: list[np.ndarray] | None
    labels: np.ndarray | None
    example_ids: list[str]
    truncated: int = 0
    source: str = ""
    spec: Task | None = None
    first: np.ndarray | None = None

    def __post_init__(self):
        if self.spec is None:
            self.spec = as_task(self.task)

    def type_ids(self, i: int) -> np.ndarray:
        """int32 [len(ids1[i])]: example i's token types (0 throughout but for the second
        sentence of a cross-encoded pair)."""
        types = np.zeros(len(self.ids1[i]), np.int32)
        if self.first is not None:
            types[self.first[i]:] = 1
        return types

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
        """Two encoder sequences per example (a bi-encoded pair)."""
        return self.ids2 is not None


def _ragged(column) -> list[np.ndarray]:
    arr = column.combine_chunks()
    offsets = arr.offsets.to_numpy()
    values = np.array(arr.values.to_numpy(zero_copy_only=False), np.int32)  # one writable copy
    return [values[offsets[i]:offsets[i + 1]] for i in range(len(arr))]


def task_data(ds: datasets.Dataset, task: Task | str) -> TaskData:
    """Numpy view of a tokenized dataset (see `tokenize_split`; a cross-encoded task's with
    `cross=True`)."""
    spec = as_task(task)
    table = ds.with_format("arrow")[:]
    if "ids1" not in table.column_names:
        raise ValueError("task_data needs a tokenized dataset: call tokenize_split first")
    two = len(spec.sides) == 2
    if two and "ids2" not in table.column_names:
        raise ValueError(f"task {spec.name!r} is a pair task but the dataset has no ids2 column")
    cross = spec.encoding == "cross"
    if cross and "first1" not in table.column_names:
        raise ValueError(f"task {spec.name!r} is cross-encoded but the dataset was tokenized "
                         "a sentence at a time: tokenize_split(..., cross=True)")
    labels = None
    if "label" in table.column_names:
        labels = table.column("label").to_numpy().astype(label_dtype(spec))
    return TaskData(task=spec.name, spec=spec, ids1=_ragged(table.column("ids1")),
                    ids2=_ragged(table.column("ids2")) if two else None, labels=labels,
                    example_ids=table.column("id").to_pylist(),
                    first=(table.column("first1").to_numpy().astype(np.int32)
                           if cross else None))


def label_dtype(task: Task) -> type:
    """int32 class indices, float32 scores."""
    return np.int32 if task.is_classification else np.float32
