"""Sequence packing: several sentences per row of a fixed length, so a step computes on few pad
tokens.

Padding every sentence of a batch to a shared length wastes 40-55% of the positions on the
CS224N data (short SST phrases beside long Quora questions). Packing places whole sentences into
rows of `row_length` tokens (first-fit decreasing) and marks each with a segment id; the encoder
keeps attention inside a segment and restarts positions at each sentence, so every sentence's
hidden states equal those of an unpadded pass (`bert_jax.model.BertModel`, `segment_ids`).

A packed batch is `input_ids`, `segment_ids`, `position_ids`, int32 [rows, row_length]; segment
k (1-based) is the k-th sentence given to `pack`, 0 marks padding.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def assign_rows(lengths: Sequence[int], row_length: int) -> list[list[int]]:
    """First-fit decreasing: indices of `lengths` per row, each row's total <= `row_length`.

    Deterministic (ties keep input order). Raises ValueError for a sentence longer than a row.
    """
    lengths = [int(n) for n in lengths]
    too_long = [i for i, n in enumerate(lengths) if n > row_length]
    if too_long:
        i = too_long[0]
        raise ValueError(f"sentence {i} has {lengths[i]} tokens, more than the row length "
                         f"{row_length}: truncate to max_length first")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        for r, space in enumerate(free):
            if space >= n:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(row_length - n)
    return rows


def rows_needed(lengths: Sequence[int], row_length: int) -> int:
    """How many rows `pack` fills for sentences of these lengths."""
    return len(assign_rows(lengths, row_length))


def pack(sentences: Sequence[np.ndarray], row_length: int, num_rows: int | None = None,
         pad_id: int = 0, type_ids: Sequence[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Pack unpadded id arrays into `num_rows` rows (default: as many as needed).

    Returns `input_ids`, `segment_ids` (sentence k -> k + 1; padding 0) and `position_ids` (0 at
    each sentence's first token; 0 on padding), int32 [num_rows, row_length], and with
    `type_ids` (per sentence its token types, e.g. a cross-encoded pair's 0s then 1s) their
    `token_type_ids` placed the same way (0 on padding). Raises ValueError when the sentences
    need more than `num_rows` rows.
    """
    rows = assign_rows([len(s) for s in sentences], row_length)
    num_rows = len(rows) if num_rows is None else num_rows
    if len(rows) > num_rows:
        raise ValueError(f"{len(sentences)} sentences need {len(rows)} rows of {row_length} "
                         f"tokens, more than the {num_rows} given")
    ids = np.full((num_rows, row_length), pad_id, np.int32)
    segments = np.zeros((num_rows, row_length), np.int32)
    positions = np.zeros((num_rows, row_length), np.int32)
    types = np.zeros((num_rows, row_length), np.int32) if type_ids is not None else None
    for r, members in enumerate(rows):
        start = 0
        for i in sorted(members):  # sentence order within a row (any order would do)
            n = len(sentences[i])
            ids[r, start:start + n] = sentences[i]
            segments[r, start:start + n] = i + 1
            positions[r, start:start + n] = np.arange(n)
            if types is not None:
                types[r, start:start + n] = type_ids[i]
            start += n
    out = {"input_ids": ids, "segment_ids": segments, "position_ids": positions}
    if types is not None:
        out["token_type_ids"] = types
    return out
