"""The batch a step computes on, as typed pytrees (`flax.struct` dataclasses), keyed by task name.

`MultitaskBert` takes the inputs only, in one of two layouts:
- `PaddedInputs`: per task present, its sentences padded (`Sentences`: ids and mask [B, T], one
  per encoder sequence of an example: `Task.sides`);
- `PackedInputs`: every sentence of the step packed into rows [R, L] (`bert_jax.packing`), with
  the examples per task as a static field.
The loss reads the labels (`TaskLabels`), which travel beside the inputs in a `Batch`. Arrays
are numpy on the host and `jax.Array` on the devices (`jax.device_put` and `jax.tree.map` see
the arrays as leaves). Fields marked static (`pytree_node=False`) are not leaves but part of the
tree's structure: `jax.jit` compiles once per value (as it does per shape) and
`jax.shard_map` hands every device the same value, so the sizes a packed batch needs are read
from its inputs, never from label arrays. A dict's keys come back sorted from a pytree: the
order of the tasks is the model's (its task definitions'), never a dict's.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import flax.struct

from bert_jax.tasks import Task, builtin_tasks

Array = Any  # np.ndarray on the host, jax.Array on the devices


@flax.struct.dataclass
class Sentences:
    """Sentences padded to a shared length: `input_ids` and `attention_mask` int32 [B, T]
    (mask 1 on tokens, 0 on padding); `token_type_ids` int32 [B, T] for cross-encoded pairs
    (0 for `[CLS] a [SEP]`, 1 for `b [SEP]`), None (all 0) otherwise."""
    input_ids: Array
    attention_mask: Array
    token_type_ids: Array | None = None


@flax.struct.dataclass
class PaddedInputs:
    """Padded inputs of the tasks present: `by_task[task]` is a tuple of `Sentences`, one per
    encoder sequence of the task's examples (`Task.sides`: one for a single sentence or a
    cross-encoded pair, two for a bi-encoded pair), each [B_task, T]; every array of a batch
    shares T."""
    by_task: dict[str, tuple[Sentences, ...]]

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.by_task)

    def __getitem__(self, task: str) -> tuple[Sentences, ...]:
        return self.by_task[task]

    def sides(self, tasks: Sequence[Task] = builtin_tasks()) -> Iterator[tuple[str, str, Sentences]]:
        """(task, side, sentences) in encoder order: the tasks present in the order of `tasks`
        (the model's definitions; default the built-ins: SST, then each pair task's two
        sides), each task's sequences in `Task.sides` order."""
        for task in tasks:
            if task.name not in self.by_task:
                continue
            given = self.by_task[task.name]
            if len(given) != len(task.sides):
                raise ValueError(f"{task.name} needs {len(task.sides)} Sentences, "
                                 f"not {len(given)}")
            yield from ((task.name, k, s) for k, s in zip(task.sides, given))


@flax.struct.dataclass
class PackedInputs:
    """Sentences packed into rows (`bert_jax.packing.pack`): `input_ids`, `segment_ids`,
    `position_ids` int32 [R, L], and `token_type_ids` [R, L] when a cross-encoded pair is among
    them (None: all 0).

    `sizes` (static): ((task, B_task, sides), ...), the examples of each task present in one
    packing group and their encoder sequences each, in the order of the segments: segment ids
    number a group's sentences from 1, task by task, a task's first sequences of its B_task
    examples, then (bi-encoded pairs) its second ones (0 marks padding). Under data parallelism
    each device's rows are one group (packed separately), so `sizes` are per device and a
    device's program sees the same static sizes as a one-device one.
    """
    input_ids: Array
    segment_ids: Array
    position_ids: Array
    token_type_ids: Array | None = None
    sizes: tuple[tuple[str, int, int], ...] = flax.struct.field(pytree_node=False, default=())

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t, _, _ in self.sizes)

    @property
    def num_segments(self) -> int:
        """Sequences in a packing group: the sum of B_task x sides."""
        return sum(n * sides for _, n, sides in self.sizes)


@flax.struct.dataclass
class TaskLabels:
    """Labels of the tasks present, `by_task[task]` [B_task]: int32 class indices or float32
    scores."""
    by_task: dict[str, Array]

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.by_task)

    def __getitem__(self, task: str) -> Array:
        return self.by_task[task]


@flax.struct.dataclass
class Batch:
    """A training step's batch: what the forward pass reads (`inputs`) and what the loss
    compares its outputs with (`labels`)."""
    inputs: PaddedInputs | PackedInputs
    labels: TaskLabels


def task_sentences(arrays: Mapping[str, Array], task: Task) -> tuple[Sentences, ...]:
    """One task's `Sentences` per encoder sequence from a `bert_jax.batching.make_batch` dict
    (`input_ids_1`, `attention_mask_1`, `token_type_ids_1` when cross-encoded, and `_2` for
    bi-encoded pairs)."""
    return tuple(Sentences(arrays[f"input_ids_{k}"], arrays[f"attention_mask_{k}"],
                           arrays.get(f"token_type_ids_{k}"))
                 for k in task.sides)
