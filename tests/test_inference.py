"""bert_jax/inference.py: bucketed prediction over a whole split gives every example's output in
the file's order, in batches of one fixed size padded to the planned buckets; and head outputs
become predictions as the CS224N files expect. The reference is a per-example numpy
computation on the unpadded token ids."""
from __future__ import annotations

import numpy as np
import pytest

from bert_jax.inference import predict_task, to_predictions
from bert_jax.task_data import TaskData

BUCKETS = (8, 16, 32)


def split(task: str, n: int, seed: int) -> TaskData:
    """n examples of random lengths 2..30 (ids 1..999; 0 is padding)."""
    rng = np.random.default_rng(seed)
    side = lambda: [rng.integers(1, 1000, rng.integers(2, 31)).astype(np.int32)  # noqa: E731
                    for _ in range(n)]
    return TaskData(task, side(), side() if task != "sst" else None, None,
                    [f"id{i}" for i in range(n)])


def fingerprint(ids: np.ndarray) -> float:
    """What the fake model computes from one side's real tokens: their sum and count."""
    return float(ids.sum()) + 1e-3 * len(ids)


class FakeModel:
    """`predict(params, inputs)`: outputs computed from the real tokens of each row (padding
    must not count), recording every call's batch shape."""

    def __init__(self, task):
        self.task, self.shapes = task, []

    def __call__(self, params, inputs):
        sides = inputs[self.task]
        self.shapes.append(sides[0].input_ids.shape)
        per_side = [np.array([fingerprint(row[mask == 1]) for row, mask in
                              zip(np.asarray(s.input_ids), np.asarray(s.attention_mask))])
                    for s in sides]
        if self.task == "sst":
            return {"sst": np.stack([per_side[0] * k for k in range(5)], -1)}
        return {self.task: per_side[0] - per_side[1]}


@pytest.mark.parametrize("task, n, batch_size", [("sst", 37, 8), ("para", 16, 8),
                                                 ("sts", 5, 8), ("sst", 1, 4)])
def test_outputs_come_back_in_the_files_order_in_fixed_batches(task, n, batch_size):
    data = split(task, n, seed=n)
    model = FakeModel(task)
    progress = type("Progress", (), {"n": 0, "update": lambda self, k: setattr(self, "n",
                                                                              self.n + k)})()
    out = predict_task(model, None, data, task, batch_size, BUCKETS, progress=progress)
    first = np.array([fingerprint(x) for x in data.ids1])
    if task == "sst":
        expected = np.stack([first * k for k in range(5)], -1)
    else:
        expected = first - np.array([fingerprint(x) for x in data.ids2])
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert progress.n == n
    # Every call has the fixed batch size and a planned bucket length; as few calls as rows need.
    assert len(model.shapes) == -(-n // batch_size)
    assert all(b == batch_size and t in BUCKETS for b, t in model.shapes), model.shapes
    # Sorted by length: each bucket is the smallest that holds its batch's longest example.
    order = np.sort(data.lengths)
    longest = [order[i:i + batch_size].max() for i in range(0, n, batch_size)]
    assert [t for _, t in model.shapes] == [min(b for b in BUCKETS if b >= m) for m in longest]


def test_an_empty_split_gives_no_outputs():
    data = TaskData("sst", [], None, None, [])
    assert predict_task(FakeModel("sst"), None, data, "sst", 8, BUCKETS).shape == (0,)


def test_predictions_from_head_outputs():
    logits = np.array([[0.1, 2.0, -1.0, 0.0, 0.5], [3.0, 0.0, 0.0, 0.0, 3.5]], np.float32)
    np.testing.assert_array_equal(to_predictions("sst", logits), [1, 4])
    assert to_predictions("sst", logits).dtype == np.int64
    np.testing.assert_array_equal(to_predictions("para", np.array([-0.2, 0.0, 0.3])), [0, 0, 1])
    scores = np.array([4.25, -0.5, 5.5], np.float64)
    np.testing.assert_array_equal(to_predictions("sts", scores), scores.astype(np.float32))
    assert to_predictions("sts", scores).dtype == np.float32
