"""Host-side batching: the seeded order of steps, length buckets, padding, and prefetching.

A step's batch is a dict of numpy arrays named `{task}_input_ids_{k}`, `{task}_attention_mask_{k}`
([B, T], k = "1", and "2" for pair tasks) and `{task}_labels` ([B]); every array of a step shares
one bucketed length T, so the step compiles once per bucket. The order of steps is a pure function
of (seed, epoch), so a resumed run sees exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Iterator

import jax
import numpy as np

from bert_jax.data import TaskData, bucket_length, epoch_order, make_batch
from train.config import TASKS, TrainConfig

SORT_WINDOW = 50  # batches per window when grouping similar lengths


@dataclasses.dataclass
class StepBatch:
    """One step's host arrays, plus where it came from (for messages about bad batches)."""
    arrays: dict[str, np.ndarray]
    example_ids: dict[str, list[str]]
    epoch: int
    index: int  # step within the epoch

    @property
    def length(self) -> int:
        return next(iter(self.arrays.values())).shape[-1] if self.arrays else 0


def _task_seed(cfg: TrainConfig, task: str) -> int:
    return cfg.seed * 7 + TASKS.index(task)


def _task_order(data: TaskData, cfg: TrainConfig, task: str, epoch: int) -> np.ndarray:
    """[num_batches, batch_size] example indices of one pass over a task."""
    return epoch_order(len(data), cfg.batch_size, seed=_task_seed(cfg, task), epoch=epoch,
                       lengths=data.lengths if cfg.group_by_length else None,
                       sort_window=SORT_WINDOW if cfg.group_by_length else 0)


def batches_per_task(train: dict[str, TaskData], cfg: TrainConfig) -> dict[str, int]:
    return {t: len(d) // cfg.batch_size for t, d in train.items()}


def steps_per_epoch(train: dict[str, TaskData], cfg: TrainConfig) -> int:
    counts = batches_per_task(train, cfg)
    if min(counts.values()) == 0:
        small = [t for t, n in counts.items() if n == 0]
        raise ValueError(f"tasks {small} have fewer examples than one batch of {cfg.batch_size}")
    if cfg.mode == "sequential":
        return sum(counts.values())
    return max(counts.values()) if cfg.epoch_steps == "max" else min(counts.values())


def epoch_plan(train: dict[str, TaskData], cfg: TrainConfig, epoch: int) -> list[dict[str, np.ndarray]]:
    """The epoch's steps: each a {task: [batch_size] example indices} dict.

    multitask: every step holds one batch of every task; tasks with fewer batches than the epoch
    has steps start another seeded pass. sequential: all of one task's batches, then the next's.
    """
    n_steps = steps_per_epoch(train, cfg)
    if cfg.mode == "sequential":
        return [{t: idx} for t in cfg.tasks for idx in _task_order(train[t], cfg, t, epoch)]
    orders = {}
    for t in cfg.tasks:
        passes, total = [], 0
        while total < n_steps:
            order = _task_order(train[t], cfg, t, epoch * 1000 + len(passes))
            passes.append(order)
            total += len(order)
        orders[t] = np.concatenate(passes)[:n_steps]
    if cfg.group_by_length:
        # Pair each task's batches of similar length in the same step, so the step's shared
        # length T wastes little padding; then shuffle the steps.
        for t in cfg.tasks:
            lengths = train[t].lengths[orders[t]].max(axis=1)
            for start in range(0, n_steps, SORT_WINDOW):
                window = slice(start, start + SORT_WINDOW)
                orders[t][window] = orders[t][window][np.argsort(lengths[window], kind="stable")]
        perm = np.random.default_rng([cfg.seed, epoch, 99]).permutation(n_steps)
        orders = {t: o[perm] for t, o in orders.items()}
    return [{t: orders[t][i] for t in cfg.tasks} for i in range(n_steps)]


def make_step_batch(train: dict[str, TaskData], step: dict[str, np.ndarray],
                    buckets: tuple[int, ...], pad_id: int = 0, epoch: int = 0, index: int = 0,
                    process_index: int = 0, process_count: int = 1) -> StepBatch:
    """Pad every task's batch of a step to one bucketed length; keep this process's rows."""
    longest = max(int(train[t].lengths[idx].max()) for t, idx in step.items())
    length = bucket_length(longest, buckets)
    arrays, ids = {}, {}
    for task, idx in step.items():
        rows = len(idx) // process_count
        idx = idx[process_index * rows:(process_index + 1) * rows]
        for key, value in make_batch(train[task], idx, length, pad_id).items():
            arrays[f"{task}_{key}"] = value
        ids[task] = [train[task].example_ids[i] for i in idx]
    return StepBatch(arrays, ids, epoch, index)


def iterate_steps(train, cfg: TrainConfig, buckets, start_step: int, total_steps: int,
                  pad_id: int = 0) -> Iterator[StepBatch]:
    """Host batches for global steps [start_step, total_steps), across epochs, in plan order."""
    per_epoch = steps_per_epoch(train, cfg)
    step = start_step
    while step < total_steps:
        epoch, index = divmod(step, per_epoch)
        plan = epoch_plan(train, cfg, epoch)
        for i in range(index, per_epoch):
            if step >= total_steps:
                return
            yield make_step_batch(train, plan[i], buckets, pad_id, epoch, i,
                                  jax.process_index(), jax.process_count())
            step += 1


class Prefetcher:
    """Runs `transfer(batch)` (e.g. device_put) on a background thread, `depth` steps ahead.

    Iterating yields `(host_batch, device_arrays)`. Errors in the producer re-raise here.
    """
    _DONE = object()

    def __init__(self, batches: Iterator[StepBatch], transfer, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.wait_seconds = 0.0  # time the consumer spent waiting for input
        self._thread = threading.Thread(target=self._run, args=(batches, transfer), daemon=True)
        self._thread.start()

    def _run(self, batches, transfer):
        try:
            for batch in batches:
                if self._stop.is_set():
                    return
                self._queue.put((batch, transfer(batch.arrays)))
            self._queue.put(self._DONE)
        except BaseException as err:  # surfaced in the consumer
            self._queue.put(err)

    def __iter__(self):
        import time
        while True:
            start = time.perf_counter()
            item = self._queue.get()
            self.wait_seconds += time.perf_counter() - start
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self):
        self._stop.set()
        while not self._queue.empty():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
