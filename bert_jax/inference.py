"""Batched, bucketed prediction over a whole task split, in the original order.

Examples are sorted by length so that each batch pads to a small bucket, the last batch is filled
up to the fixed batch size (so no new shape compiles), and outputs are put back in input order.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from bert_jax.batch_types import PaddedInputs, task_sentences
from bert_jax.batching import bucket_length, make_batch
from bert_jax.task_data import TaskData


def predict_task(predict: Callable, params, data: TaskData, task: str, batch_size: int,
                 buckets: tuple[int, ...], place: Callable | None = None,
                 pad_id: int = 0, progress=None) -> np.ndarray:
    """Raw head outputs for every example of `data`: SST logits [n, 5], paraphrase logits [n],
    STS scores [n].

    predict: `(params, inputs) -> {task: outputs}` for `PaddedInputs` of `task` alone (e.g.
    `make_predict_step`); place: optional host-to-device transfer of the inputs (e.g. sharding
    over a mesh); progress: optional tqdm.
    """
    n = len(data)
    order = np.argsort(data.lengths, kind="stable")
    outputs = None
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        real = len(idx)
        if real < batch_size:  # fill up with copies of the last example; dropped below
            idx = np.concatenate([idx, np.full(batch_size - real, idx[-1])])
        length = bucket_length(int(data.lengths[idx].max()), buckets)
        sentences = task_sentences(make_batch(data, idx, length, pad_id), task)
        inputs = PaddedInputs(**{task: sentences})
        if place is not None:
            inputs = place(inputs)
        out = np.asarray(predict(params, inputs)[task])[:real]
        if outputs is None:
            outputs = np.zeros((n,) + out.shape[1:], out.dtype)
        outputs[order[start:start + real]] = out
        if progress is not None:
            progress.update(real)
    return outputs if outputs is not None else np.zeros((0,))


def to_predictions(task: str, outputs: np.ndarray) -> np.ndarray:
    """Head outputs -> predictions: SST class ids, paraphrase 0/1, STS scores as predicted."""
    if task == "sst":
        return outputs.argmax(-1).astype(np.int64)
    if task == "para":
        return (outputs > 0).astype(np.int64)
    return outputs.astype(np.float32)
