"""Batched dev/test prediction and dev scores of a `MultitaskBert` over a device mesh: the
`Evaluator` that the training loop and `python -m train.evaluate` use, its jit-compiled predict
step, and its progress display (a bar on a terminal, two plain lines in a log)."""
from __future__ import annotations

import sys
import time
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from bert_jax import metrics
from bert_jax.batch_types import PackedInputs, PaddedInputs
from bert_jax.batching import choose_buckets
from bert_jax.heads import MultitaskBert
from bert_jax.inference import predict_task, to_predictions
from bert_jax.task_data import TaskData
from bert_jax.token_cache import live_progress


class PlainProgress:
    """Stands in for a tqdm bar where a bar cannot draw in place (a log file, a pipe): a line
    when the work starts and one when it ends, on stderr."""

    def __init__(self, total: int, desc: str, unit: str = "ex"):
        self.total, self.desc = total, desc
        self.unit = {"ex": "examples"}.get(unit, unit)
        self.started = time.perf_counter()
        print(f"{desc}: {total:,} {self.unit} ...", file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        if self.started is not None:
            seconds = time.perf_counter() - self.started
            print(f"{self.desc}: {self.total:,} {self.unit} in {seconds:.1f} s", file=sys.stderr,
                  flush=True)
            self.started = None


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "ex"):
    """A tqdm bar where one draws in place (a terminal, a notebook: `live_progress`), else a
    `PlainProgress` (two plain lines); a disabled bar when not `enabled`."""
    if enabled and not live_progress():
        return PlainProgress(total, desc, unit)
    return tqdm(total=total, desc=desc, leave=False, disable=not enabled, unit=unit,
                dynamic_ncols=True)


def make_predict_step(model: MultitaskBert):
    """`predict(params, inputs) -> {task: outputs}` (dropout off), jit-compiled; `inputs`:
    `PaddedInputs` or `PackedInputs`.

    Inputs may be sharded over a mesh; jit partitions the forward pass accordingly.
    """
    @jax.jit
    def predict(params, inputs: PaddedInputs | PackedInputs):
        return model.apply({"params": params}, inputs, deterministic=True)
    return predict


class Evaluator:
    """Batched dev/test prediction for a `MultitaskBert` over a mesh (each batch split over
    every axis of `mesh`).

    Plans its own padded lengths from the lengths of each split it is given (at most
    `num_buckets` per split, the last covering the split's longest example), so a dev or test
    sentence longer than every training sentence still has a shape. The plan depends only on
    the lengths, so evaluating the same split again compiles nothing new; `planned` holds the
    last plan of each task (for run summaries). `predict`: the compiled step to run, as
    `make_predict_step(model)` returns it (the default), e.g. with its outputs gathered for a
    multi-process run.
    """

    def __init__(self, model: MultitaskBert, mesh: Mesh, batch_size: int = 64,
                 num_buckets: int = 4, predict: Callable | None = None):
        self.predict = predict or make_predict_step(model)
        self.sharding = NamedSharding(mesh, P(mesh.axis_names))
        self.batch_size, self.num_buckets = batch_size, num_buckets
        self.planned: dict[str, tuple[int, ...]] = {}

    def buckets_for(self, data: TaskData) -> tuple[int, ...]:
        """At most `num_buckets` padded lengths (multiples of 8) covering every example of `data`."""
        top = -(-int(data.lengths.max()) // 8) * 8
        self.planned[data.task] = choose_buckets(data.lengths, top, self.num_buckets)
        return self.planned[data.task]

    def outputs(self, params, data: TaskData, task: str, progress: bool = False,
                desc: str | None = None) -> np.ndarray:
        """Raw head outputs for every example of `data` (see `predict_task`); `progress`: a bar
        named `desc` (default "eval TASK"), or, written to a file, a line at the start and one
        at the end."""
        bar = progress_bar(len(data), desc or f"eval {task}", progress)
        try:
            return predict_task(self.predict, params, data, task, self.batch_size,
                                self.buckets_for(data),
                                place=lambda b: jax.device_put(b, self.sharding), progress=bar)
        finally:
            bar.close()

    def predictions(self, params, splits: dict[str, TaskData], progress: bool = False
                    ) -> dict[str, np.ndarray]:
        """{task: [n] predictions} (see `to_predictions`) for every split given."""
        return {t: to_predictions(d.spec, self.outputs(params, d, t, progress))
                for t, d in splits.items()}

    def scores(self, params, dev: dict[str, TaskData], progress: bool = False) -> dict:
        """Each task's dev score (`sst_acc`, `para_acc`, `sts_r`, `<name>_acc`, `<name>_r`) and
        `overall` over all of them, for the splits given (in their order)."""
        predictions = self.predictions(params, dev, progress)
        return metrics.dev_scores(predictions, {t: dev[t].labels for t in predictions},
                                  [d.spec for d in dev.values()])
