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
from bert_jax.tasks import Task, as_task


def predict_task(predict: Callable, params, data: TaskData, task: Task | str, batch_size: int,
                 buckets: tuple[int, ...], place: Callable | None = None,
                 pad_id: int = 0, progress=None) -> np.ndarray:
    """Raw head outputs for every example of `data`: logits [n, K] (K > 2 classes), one logit
    [n] (two classes) or scores [n]; the built-ins: SST [n, 5], paraphrase [n], STS [n].

    predict: `(params, inputs) -> {task: outputs}` for `PaddedInputs` of `task` alone (e.g.
    `make_predict_step`); place: optional host-to-device transfer of the inputs (e.g. sharding
    over a mesh); progress: optional tqdm.
    """
    name = task.name if isinstance(task, Task) else task
    n = len(data)
    order = np.argsort(data.lengths, kind="stable")
    outputs = None
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        real = len(idx)
        if real < batch_size:  # fill up with copies of the last example; dropped below
            idx = np.concatenate([idx, np.full(batch_size - real, idx[-1])])
        length = bucket_length(int(data.lengths[idx].max()), buckets)
        sentences = task_sentences(make_batch(data, idx, length, pad_id), data.spec)
        inputs = PaddedInputs({name: sentences})
        if place is not None:
            inputs = place(inputs)
        out = np.asarray(predict(params, inputs)[name])[:real]
        if outputs is None:
            outputs = np.zeros((n,) + out.shape[1:], out.dtype)
        outputs[order[start:start + real]] = out
        if progress is not None:
            progress.update(real)
    return outputs if outputs is not None else np.zeros((0,))


def to_predictions(task: Task | str, outputs: np.ndarray) -> np.ndarray:
    """Head outputs -> predictions: class indices (int64; the argmax of K > 2 logits, a logit
    above 0 for two classes) or scores as predicted (float32)."""
    task = as_task(task)
    if not task.is_classification:
        return outputs.astype(np.float32)
    if task.num_outputs > 1:
        return outputs.argmax(-1).astype(np.int64)
    return (outputs > 0).astype(np.int64)


def class_probabilities(task: Task | str, outputs: np.ndarray) -> np.ndarray:
    """float64 [n, K] class probabilities of a classification task's head outputs, in class
    order: the softmax of K > 2 logits, [1 - p, p] with p = sigmoid(logit) for two classes."""
    task = as_task(task)
    outputs = np.asarray(outputs, np.float64)
    if task.num_outputs > 1:
        z = np.exp(outputs - outputs.max(-1, keepdims=True))
        return z / z.sum(-1, keepdims=True)
    p = 1.0 / (1.0 + np.exp(-outputs))
    return np.stack([1 - p, p], -1).reshape(len(p), 2)


def class_values(task: Task | str, predictions: np.ndarray) -> list:
    """Class indices -> the task's label values (as its files write them: `3`, `NEUTRAL`);
    scores as they are."""
    task = as_task(task)
    if not task.is_classification:
        return [float(p) for p in predictions]
    return [task.classes[int(i)] for i in predictions]
