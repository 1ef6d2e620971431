"""Static shapes and batches: padded-length buckets, seeded epoch order, padded batches.

Knows nothing of models or JAX: numpy and the project's `TaskData` only.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from bert_jax.task_data import TaskData, label_dtype
from bert_jax.tokenizer import pad_ids


# ----------------------------------------------------------------------------------- buckets

def _round_up(n: int, multiple: int) -> int:
    return -(-int(n) // multiple) * multiple


def choose_buckets(lengths, max_length: int, num_buckets: int = 4, multiple: int = 8
                   ) -> tuple[int, ...]:
    """At most `num_buckets` padded lengths, increasing multiples of `multiple`, the last >= the
    longest of `lengths` and <= `max_length` (it is `max_length` itself when rounding up would
    pass it). Chosen by dynamic programming to minimise the padding when each example is padded
    to its bucket (optimal, so at least as good as picking from length quantiles).
    """
    lengths = np.asarray(lengths, np.int64)
    if lengths.size == 0:
        raise ValueError("choose_buckets needs at least one length")
    if num_buckets < 1 or multiple < 1:
        raise ValueError("num_buckets and multiple must be positive")
    longest = int(lengths.max())
    if longest > max_length:
        raise ValueError(f"a length of {longest} is over max_length={max_length}: truncate first")
    top = min(_round_up(longest, multiple), max_length)
    cands = [c for c in range(multiple, top, multiple)] + [top]
    counts = np.bincount(np.searchsorted(cands, lengths), minlength=len(cands)).astype(np.int64)
    m = len(cands)
    prefix = np.concatenate([[0], np.cumsum(counts)])
    inf = np.iinfo(np.int64).max // 4
    # best[b][j]: least padded positions covering candidate intervals 0..j with b buckets, the
    # last of them at cands[j]; choice[b][j]: the start i of that last bucket's intervals.
    best = np.full((num_buckets + 1, m), inf, np.int64)
    choice = np.zeros((num_buckets + 1, m), np.int64)
    for j in range(m):
        best[1, j] = cands[j] * prefix[j + 1]
    for b in range(2, num_buckets + 1):
        for j in range(m):
            best[b, j], choice[b, j] = best[1, j], 0
            for i in range(1, j + 1):
                cost = best[b - 1, i - 1] + cands[j] * (prefix[j + 1] - prefix[i])
                if cost < best[b, j]:
                    best[b, j], choice[b, j] = cost, i
    b = int(np.argmin(best[1:, m - 1])) + 1  # fewest buckets reaching the least padding
    out, j = [], m - 1
    while b >= 1 and j >= 0:
        out.append(cands[j])
        i = int(choice[b, j]) if b > 1 else 0
        j, b = i - 1, b - 1
    used = [c for c in reversed(out)]
    # Drop buckets that no example lands in (they cost nothing but a compile), keep the top.
    idx = np.searchsorted(used, lengths)
    kept = [c for k, c in enumerate(used) if c == top or np.any(idx == k)]
    return tuple(int(c) for c in kept)


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n; ValueError when n is longer than every bucket."""
    for b in sorted(buckets):
        if b >= n:
            return int(b)
    raise ValueError(f"length {n} is longer than the largest bucket {max(buckets)}")


def padding_waste(lengths, buckets: Sequence[int]) -> float:
    """Fraction of padded positions when each example is padded to its bucket."""
    lengths = np.asarray(lengths, np.int64)
    b = np.asarray(sorted(buckets), np.int64)
    idx = np.searchsorted(b, lengths)
    if lengths.size and idx.max() >= len(b):
        raise ValueError(f"a length of {lengths.max()} is longer than the largest bucket {b[-1]}")
    padded = b[idx]
    total = padded.sum()
    return float((padded - lengths).sum() / total) if total else 0.0



# ----------------------------------------------------------------------------------- batches

def epoch_order(num_examples: int, batch_size: int, *, seed: int, epoch: int, lengths=None,
                drop_last: bool = True, sort_window: int = 0) -> np.ndarray:
    """Example indices of one epoch's batches: int64 [num_batches, batch_size].

    A permutation from `np.random.default_rng([seed, epoch])`, so deterministic in
    (seed, epoch). With `lengths` and `sort_window > 0`, examples are sorted by length within
    windows of `sort_window` batches and the batches are then shuffled, so each batch holds
    similar lengths. `drop_last=True` drops the remainder (chosen at random) so every batch is
    full; `drop_last=False` keeps it and fills the last batch's empty slots with -1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, not {batch_size}")
    rng = np.random.default_rng([int(seed), int(epoch)])
    perm = rng.permutation(num_examples)
    if drop_last:
        perm = perm[:(num_examples // batch_size) * batch_size]
    if lengths is not None and sort_window > 0:
        lengths = np.asarray(lengths)
        if len(lengths) != num_examples:
            raise ValueError(f"{len(lengths)} lengths for {num_examples} examples")
        w = sort_window * batch_size
        perm = np.concatenate([c[np.argsort(lengths[c], kind="stable")]
                               for c in np.split(perm, range(w, len(perm), w))]
                              ) if len(perm) else perm
    num_batches = -(-len(perm) // batch_size)
    out = np.full(num_batches * batch_size, -1, np.int64)
    out[:len(perm)] = perm
    out = out.reshape(num_batches, batch_size)
    if lengths is not None and sort_window > 0 and num_batches > 1:
        out = out[rng.permutation(num_batches)]
    return out


def batch_labels(data: TaskData, indices) -> np.ndarray:
    """The labels of examples `indices` ([B]): int32 class indices, float32 scores."""
    return data.labels[np.asarray(indices)].astype(label_dtype(data.spec))


def make_batch(data: TaskData, indices, length: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Padded arrays for the examples `indices` ([B]): `input_ids_1`, `attention_mask_1` int32
    [B, length] (and `_2` for bi-encoded pairs; `token_type_ids_1` for a cross-encoded pair);
    `labels` [B] (int32 class indices, float32 scores) when labeled. Indices of -1 (the empty slots `epoch_order(drop_last=False)` leaves) repeat
    the batch's first example and add `valid` [B] bool, False there.
    """
    indices = np.asarray(indices, np.int64)
    valid = indices >= 0
    if not valid.any():
        raise ValueError("make_batch got no valid index")
    if np.any(indices >= len(data)):
        raise IndexError(f"index {indices.max()} out of range for {len(data)} examples")
    idx = np.where(valid, indices, indices[valid][0])
    batch = {}
    ids, mask = pad_ids([data.ids1[i] for i in idx], length, pad_id)
    batch["input_ids_1"], batch["attention_mask_1"] = ids, mask
    if data.first is not None:
        batch["token_type_ids_1"] = pad_ids([data.type_ids(i) for i in idx], length, 0)[0]
    if data.ids2 is not None:
        ids, mask = pad_ids([data.ids2[i] for i in idx], length, pad_id)
        batch["input_ids_2"], batch["attention_mask_2"] = ids, mask
    if data.labels is not None:
        batch["labels"] = batch_labels(data, idx)
    if not valid.all():
        batch["valid"] = valid
    return batch

