"""The ordinal SST penalty and per-task loss weights (training settings): their maths against
hand computations in numpy."""
from __future__ import annotations

import numpy as np
import pytest

import jax.numpy as jnp

from bert_jax.batch_types import TaskLabels
from bert_jax.errors import ConfigError
from bert_jax.tasks import SST, STS, TaskError
from train.config import TrainConfig
from train.step import squared_emd, task_losses, weighted_sum


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_squared_emd_by_hand():
    logits = np.array([[2.0, 1.0, 0.0, -1.0, -2.0], [0.0, 0.0, 0.0, 0.0, 0.0],
                       [-3.0, 0.5, 4.0, 0.5, -3.0]], np.float32)
    gold = np.array([0, 4, 2], np.int32)
    want = []
    for row, g in zip(_softmax(logits.astype(np.float64)), gold):
        cdf = np.cumsum(row)
        target = np.array([1.0 if k >= g else 0.0 for k in range(5)])
        want.append(((cdf - target) ** 2).sum())
    got = np.asarray(squared_emd(jnp.asarray(logits), jnp.asarray(gold)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)  # float32 CDF differences
    # Uniform prediction, gold 4: CDF 0.2, 0.4, 0.6, 0.8, 1.0 against 0, 0, 0, 0, 1.
    assert got[1] == pytest.approx(0.04 + 0.16 + 0.36 + 0.64, rel=1e-6)


def test_squared_emd_grows_with_the_distance_of_the_wrong_class():
    """All mass on one class: the penalty is the number of classes between it and the gold
    one (cross-entropy cannot tell a near miss from a far one)."""
    big = 30.0
    costs = [float(squared_emd(jnp.asarray(np.eye(5, dtype=np.float32)[[k]] * big),
                               jnp.asarray([0]))[0]) for k in range(5)]
    np.testing.assert_allclose(costs, [0, 1, 2, 3, 4], atol=1e-5)


def test_task_losses_add_the_weighted_ordinal_penalty_and_weights_scale_the_sum():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    gold = rng.integers(0, 5, 6).astype(np.int32)
    scores = rng.uniform(0, 5, 6).astype(np.float32)
    sts_gold = rng.uniform(0, 5, 6).astype(np.float32)
    probs = _softmax(logits.astype(np.float64))
    ce = -np.log(probs[np.arange(6), gold]).mean()
    emd = np.mean([((np.cumsum(p) - (np.arange(5) >= g)) ** 2).sum()
                   for p, g in zip(probs, gold)])
    mse = np.mean((scores - sts_gold) ** 2)
    tasks = (SST.replace(ordinal=0.5, loss_weight=2.0), STS.replace(loss_weight=0.25))
    outputs = {"sst": jnp.asarray(logits), "sts": jnp.asarray(scores)}
    labels = TaskLabels({"sst": jnp.asarray(gold), "sts": jnp.asarray(sts_gold)})
    losses = task_losses(outputs, labels, tasks)
    assert float(losses["sst"]) == pytest.approx(ce + 0.5 * emd, rel=1e-5)
    assert float(losses["sts"]) == pytest.approx(mse, rel=1e-5)
    assert float(weighted_sum(losses, tasks)) == pytest.approx(
        2.0 * (ce + 0.5 * emd) + 0.25 * mse, rel=1e-5)


def test_loss_weights_and_ordinal_are_training_settings():
    cfg = TrainConfig(loss_weights="sst=2, sts=0.5", sst_ordinal=0.3)
    got = {t.name: (t.loss_weight, t.ordinal) for t in cfg.loss_tasks()}
    assert got == {"sst": (2.0, 0.3), "para": (1.0, 0.0), "sts": (0.5, 0.0)}
    assert all(t.loss_weight == 1.0 and t.ordinal == 0.0 for t in cfg.head_config().tasks)
    for bad in ("sst", "sst=0", "sst=-1", "nli=2", "sst=x", "sst=inf"):
        with pytest.raises(ConfigError, match="loss_weights"):
            TrainConfig(loss_weights=bad)
    with pytest.raises(TaskError, match="ordinal"):
        STS.replace(ordinal=1.0)
