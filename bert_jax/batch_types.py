"""The batch a step computes on, as typed pytrees (`flax.struct` dataclasses).

`MultitaskBert` takes the inputs only, in one of two layouts:
- `PaddedInputs`: per task present, its sentences padded (`Sentences`: ids and mask [B, T]);
- `PackedInputs`: every sentence of the step packed into rows [R, L] (`bert_jax.packing`), with
  the number of examples per task as a static field.
The loss reads the labels (`TaskLabels`), which travel beside the inputs in a `Batch`. Arrays
are numpy on the host and `jax.Array` on the devices (`jax.device_put` and `jax.tree.map` see
the arrays as leaves). Fields marked static (`pytree_node=False`) are not leaves but part of the
tree's structure: `jax.jit` compiles once per value (as it does per shape) and
`jax.shard_map` hands every device the same value, so the sizes a packed batch needs are read
from its inputs, never from label arrays.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping

import flax.struct

Array = Any  # np.ndarray on the host, jax.Array on the devices

# Per task: its sentences' sides in encoder order ("1", and "2" for pair tasks).
TASK_SENTENCES = {"sst": ("1",), "para": ("1", "2"), "sts": ("1", "2")}


@flax.struct.dataclass
class Sentences:
    """Sentences padded to a shared length: `input_ids` and `attention_mask` int32 [B, T]
    (mask 1 on tokens, 0 on padding)."""
    input_ids: Array
    attention_mask: Array


@flax.struct.dataclass
class PaddedInputs:
    """Padded inputs of the tasks present (None: absent): per task a tuple of `Sentences`, one
    per side of `TASK_SENTENCES` (`sst`: (sentences,); `para`, `sts`: (first, second)), each
    [B_task, T]; every array of a batch shares T."""
    sst: tuple[Sentences, ...] | None = None
    para: tuple[Sentences, ...] | None = None
    sts: tuple[Sentences, ...] | None = None

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t in TASK_SENTENCES if getattr(self, t) is not None)

    def sides(self) -> Iterator[tuple[str, str, Sentences]]:
        """(task, side, sentences) in encoder order: SST, then each pair task's two sides."""
        for task in self.tasks:
            sides = getattr(self, task)
            if len(sides) != len(TASK_SENTENCES[task]):
                raise ValueError(f"{task} needs {len(TASK_SENTENCES[task])} Sentences, "
                                 f"not {len(sides)}")
            yield from ((task, k, s) for k, s in zip(TASK_SENTENCES[task], sides))


@flax.struct.dataclass
class PackedInputs:
    """Sentences packed into rows (`bert_jax.packing.pack`): `input_ids`, `segment_ids`,
    `position_ids` int32 [R, L].

    `sizes` (static): ((task, B_task), ...) in `TASK_SENTENCES` order, the examples of each task
    present in one packing group. Segment ids number a group's sentences from 1 in
    `TASK_SENTENCES` order: the B_sst SST sentences, then the first and the second sentences of
    the B_para pairs, then those of the B_sts pairs (0 marks padding). Under data parallelism
    each device's rows are one group (packed separately), so `sizes` are per device and a
    device's program sees the same static sizes as a one-device one.
    """
    input_ids: Array
    segment_ids: Array
    position_ids: Array
    sizes: tuple[tuple[str, int], ...] = flax.struct.field(pytree_node=False, default=())

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t, _ in self.sizes)

    @property
    def num_segments(self) -> int:
        """Sentences in a packing group: B_sst + 2 B_para + 2 B_sts (for the tasks present)."""
        return sum(n * len(TASK_SENTENCES[t]) for t, n in self.sizes)


@flax.struct.dataclass
class TaskLabels:
    """Labels of the tasks present (None: absent), each [B_task]: `sst` int32 classes 0..4,
    `para` int32 0/1, `sts` float32 similarity 0..5."""
    sst: Array | None = None
    para: Array | None = None
    sts: Array | None = None

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t in TASK_SENTENCES if getattr(self, t) is not None)


@flax.struct.dataclass
class Batch:
    """A training step's batch: what the forward pass reads (`inputs`) and what the loss
    compares its outputs with (`labels`)."""
    inputs: PaddedInputs | PackedInputs
    labels: TaskLabels


def task_sentences(arrays: Mapping[str, Array], task: str) -> tuple[Sentences, ...]:
    """One task's `Sentences` per side from a `bert_jax.batching.make_batch` dict
    (`input_ids_1`, `attention_mask_1`, and `_2` for pair tasks)."""
    return tuple(Sentences(arrays[f"input_ids_{k}"], arrays[f"attention_mask_{k}"])
                 for k in TASK_SENTENCES[task])
