"""Host-side batching: the seeded order of steps, packing or padding, and prefetching.

A step's batch is a `bert_jax.batch_types.Batch` of numpy arrays: `labels` [B_task] per task
(`TaskLabels`; B_task is the task's own batch size or the run's) beside `inputs` in one of two
layouts (`StepLayout`); the tasks come in the order of their definitions (the `train` dict's):
- packed (the default): every sentence of the step packed into rows (`bert_jax.packing`),
  `PackedInputs`: `input_ids`, `segment_ids`, `position_ids` [R, L], and the examples per task
  of a device's rows as static `sizes`. Rows are packed per device shard (each device's rows
  hold its own examples), L is `pack_length` or, for steps with a longer sentence,
  `max_length`, and R is bucketed per L from a plan of the whole run, so the step compiles once
  per (L, R) and never after the first epoch.
- padded: `PaddedInputs`, per task its sentences' ids and masks ([B, T], one `Sentences` per
  side); every array of a step shares one bucketed length T.
The order of steps is a pure function of (seed, epoch), so a resumed run sees exactly the batches
an uninterrupted run would.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Iterator

import jax
import numpy as np

from bert_jax import packing
from bert_jax.batch_types import Batch, PackedInputs, PaddedInputs, TaskLabels, task_sentences
from bert_jax.batching import (batch_labels, bucket_length, choose_buckets, epoch_order,
                               make_batch)
from bert_jax.errors import ConfigError
from bert_jax.task_data import TaskData
from train.config import TrainConfig

SORT_WINDOW = 50  # batches per window when grouping similar lengths
PLAN_STEPS = 50_000  # steps planned ahead to choose packed row buckets


@dataclasses.dataclass(frozen=True)
class StepLayout:
    """How a step's sentences become arrays.

    padded (`row_buckets` empty): every sentence padded to the smallest of `buckets` that fits
    the step's longest. packed: `row_buckets` maps a row length L to the row counts R a device's
    rows are padded to; a step uses the smallest L that fits its longest sentence. `shards`: the
    number of devices the global batch is split over.
    """
    buckets: tuple[int, ...] = ()
    row_buckets: tuple[tuple[int, tuple[int, ...]], ...] = ()
    shards: int = 1

    @property
    def packed(self) -> bool:
        return bool(self.row_buckets)

    def describe(self) -> str:
        if self.packed:
            return "packed rows " + ", ".join(f"L={length}: R in {list(rows)} per device"
                                              for length, rows in self.row_buckets)
        return f"padded to lengths {list(self.buckets)}"

    def num_shapes(self) -> int:
        return sum(len(r) for _, r in self.row_buckets) if self.packed else len(self.buckets)


@dataclasses.dataclass
class StepBatch:
    """One step's host arrays (a `Batch` of numpy arrays), plus where it came from (for messages
    about bad batches)."""
    arrays: Batch
    example_ids: dict[str, list[str]]
    epoch: int
    index: int  # step within the epoch


def _task_seed(cfg: TrainConfig, task: str) -> int:
    """The seed of a task's order: the run's, and the task's place among the definitions."""
    return cfg.seed * 7 + cfg.task_names().index(task)


def task_batch_size(data: TaskData, cfg: TrainConfig) -> int:
    """A task's examples per step: its definition's batch size, else the run's."""
    return data.spec.batch_size or cfg.batch_size


def _task_order(data: TaskData, cfg: TrainConfig, task: str, epoch: int) -> np.ndarray:
    """[num_batches, batch_size] example indices of one pass over a task."""
    return epoch_order(len(data), task_batch_size(data, cfg), seed=_task_seed(cfg, task),
                       epoch=epoch, lengths=data.lengths if cfg.sorts_by_length else None,
                       sort_window=SORT_WINDOW if cfg.sorts_by_length else 0)


def batches_per_task(train: dict[str, TaskData], cfg: TrainConfig) -> dict[str, int]:
    return {t: len(d) // task_batch_size(d, cfg) for t, d in train.items()}


def steps_per_epoch(train: dict[str, TaskData], cfg: TrainConfig) -> int:
    counts = batches_per_task(train, cfg)
    if min(counts.values()) == 0:
        small = [t for t, n in counts.items() if n == 0]
        raise ConfigError(f"tasks {small} have fewer examples than one batch of "
                          f"{', '.join(str(task_batch_size(train[t], cfg)) for t in small)}")
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
    if cfg.sorts_by_length:
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


def step_tasks(train: dict[str, TaskData], step: dict[str, np.ndarray]) -> list[str]:
    """The step's tasks in the order of their definitions (the `train` dict's)."""
    return [t for t in train if t in step]


def step_sentence_groups(train: dict[str, TaskData], step: dict[str, np.ndarray]
                         ) -> list[list[np.ndarray]]:
    """The step's sequences per (task, side) in segment order: task by task, each example's
    first sequence (a sentence, a cross-encoded pair), then a bi-encoded pair's second ones; for
    the built-ins the SST sentences, the first and the second sentences of the paraphrase
    pairs, then of the STS pairs."""
    return [[(train[task].ids1 if k == "1" else train[task].ids2)[i] for i in step[task]]
            for task in step_tasks(train, step) for k in train[task].spec.sides]


def _step_types(train: dict[str, TaskData], step: dict[str, np.ndarray]
                ) -> list[np.ndarray] | None:
    """Token types per sequence in segment order when a cross-encoded pair is in the step."""
    if all(train[t].first is None for t in step):
        return None
    return [train[task].type_ids(i) if k == "1" else np.zeros(len(train[task].ids2[i]), np.int32)
            for task in step_tasks(train, step) for k in train[task].spec.sides
            for i in step[task]]


def _step_sentences(train: dict[str, TaskData], step: dict[str, np.ndarray]) -> list[np.ndarray]:
    """A shard's sentences in segment order (the order `MultitaskBert` expects)."""
    return [s for group in step_sentence_groups(train, step) for s in group]


def _split_shards(step: dict[str, np.ndarray], shards: int) -> list[dict[str, np.ndarray]]:
    return [{t: idx[s * (len(idx) // shards):(s + 1) * (len(idx) // shards)]
             for t, idx in step.items()} for s in range(shards)]


def packed_shape(sentence_lengths: list[list[int]], row_lengths: tuple[int, ...]) -> tuple[int, int]:
    """(row length L, rows needed by the fullest shard) for a step's per-shard sentence lengths."""
    longest = max(max(lengths) for lengths in sentence_lengths)
    length = bucket_length(longest, row_lengths)
    return length, max(packing.rows_needed(lengths, length) for lengths in sentence_lengths)


def make_step_batch(train: dict[str, TaskData], step: dict[str, np.ndarray], layout: StepLayout,
                    pad_id: int = 0, epoch: int = 0, index: int = 0,
                    process_index: int = 0, process_count: int = 1) -> StepBatch:
    """One step's arrays in `layout`, keeping this process's rows (and, packed, packing each of
    its devices' shares separately). Shapes are decided from the whole global step, so every
    process builds arrays of the same shape."""
    local = {}
    ids = {}
    for task, idx in step.items():
        rows = len(idx) // process_count
        local[task] = idx[process_index * rows:(process_index + 1) * rows]
        ids[task] = [train[task].example_ids[i] for i in local[task]]
    if layout.packed:
        shards = _split_shards(step, layout.shards)
        sentences = [_step_sentences(train, shard) for shard in shards]
        row_buckets = dict(layout.row_buckets)
        length, needed = packed_shape([[len(s) for s in ss] for ss in sentences],
                                      tuple(row_buckets))
        fitting = [r for r in row_buckets[length] if r >= needed]
        num_rows = fitting[0] if fitting else needed  # past the plan: one more shape compiles
        per_process = layout.shards // process_count
        mine = range(process_index * per_process, (process_index + 1) * per_process)
        parts = [packing.pack(sentences[s], length, num_rows, pad_id,
                              _step_types(train, shards[s])) for s in mine]
        rows = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        sizes = tuple((t, len(step[t]) // layout.shards, len(train[t].spec.sides))
                      for t in step_tasks(train, step))
        inputs = PackedInputs(**rows, sizes=sizes)
        labels = {t: batch_labels(train[t], local[t]) for t in step_tasks(train, step)}
    else:
        longest = max(int(train[t].lengths[idx].max()) for t, idx in step.items())
        length = bucket_length(longest, layout.buckets)
        sentences, labels = {}, {}
        for task in step_tasks(train, step):
            arrays = make_batch(train[task], local[task], length, pad_id)
            sentences[task] = task_sentences(arrays, train[task].spec)
            labels[task] = arrays["labels"]
        inputs = PaddedInputs(sentences)
    return StepBatch(Batch(inputs, TaskLabels(labels)), ids, epoch, index)


def plan_layout(train: dict[str, TaskData], cfg: TrainConfig, total_steps: int,
                shards: int = 1) -> StepLayout:
    """The run's `StepLayout` from its data: length buckets (padded), or row buckets chosen over
    the packed row counts of the run's planned steps (up to `PLAN_STEPS` of them)."""
    if not cfg.pack:
        lengths = np.concatenate([d.lengths for d in train.values()])
        return StepLayout(buckets=choose_buckets(lengths, cfg.max_length, cfg.num_buckets),
                          shards=shards)
    row_lengths = tuple(sorted({min(cfg.pack_length, cfg.max_length), cfg.max_length}))
    per_epoch = steps_per_epoch(train, cfg)
    needed: dict[int, list[int]] = {length: [] for length in row_lengths}
    for step in range(min(total_steps, PLAN_STEPS)):
        epoch, index = divmod(step, per_epoch)
        if index == 0:
            plan = epoch_plan(train, cfg, epoch)
        split = _split_shards(plan[index], shards)
        shape = packed_shape([[len(s) for s in _step_sentences(train, shard)] for shard in split],
                             row_lengths)
        needed[shape[0]].append(shape[1])
    # Steps with a sentence longer than pack_length are few (3% on the CS224N data): half as
    # many shapes for them saves compiles that would each serve a handful of steps.
    count = {length: cfg.num_buckets if length == row_lengths[0] else max(1, cfg.num_buckets // 2)
             for length in row_lengths}
    row_buckets = tuple((length, choose_buckets(rows, max(rows), count[length], multiple=1))
                        for length, rows in needed.items() if rows)
    return StepLayout(row_buckets=row_buckets, shards=shards)


def iterate_steps(train, cfg: TrainConfig, layout: StepLayout, start_step: int,
                  total_steps: int, pad_id: int = 0) -> Iterator[StepBatch]:
    """Host batches for global steps [start_step, total_steps), across epochs, in plan order."""
    per_epoch = steps_per_epoch(train, cfg)
    step = start_step
    while step < total_steps:
        epoch, index = divmod(step, per_epoch)
        plan = epoch_plan(train, cfg, epoch)
        for i in range(index, per_epoch):
            if step >= total_steps:
                return
            yield make_step_batch(train, plan[i], layout, pad_id, epoch, i,
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
