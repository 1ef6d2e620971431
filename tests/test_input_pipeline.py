"""train.input_pipeline's epoch plan: how many steps an epoch has (`--epoch-steps max|min`), and
tasks with fewer batches starting another seeded pass within the epoch."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from bert_jax.task_data import TaskData
from train.config import TrainConfig
from train.input_pipeline import epoch_plan, steps_per_epoch

SIZES = {"sst": 40, "para": 100, "sts": 24}  # 10, 25 and 6 batches of 4


def task_data(task: str, n: int, rng) -> TaskData:
    ids = [rng.integers(1000, 2000, rng.integers(3, 30)).astype(np.int32) for _ in range(n)]
    pair = [rng.integers(1000, 2000, rng.integers(3, 30)).astype(np.int32) for _ in range(n)]
    labels = rng.integers(0, 2, n).astype(np.int32)
    return TaskData(task, ids, None if task == "sst" else pair, labels,
                    [f"{task}{i}" for i in range(n)])


@pytest.fixture(scope="module")
def train():
    rng = np.random.default_rng(0)
    return {t: task_data(t, n, rng) for t, n in SIZES.items()}


def config(**kw) -> TrainConfig:
    return TrainConfig(batch_size=4, **kw)


def seen(plan, task):
    return collections.Counter(int(i) for step in plan for i in step[task])


@pytest.mark.parametrize("pack", [True, False])  # padded steps also sort by length
def test_epoch_steps_min_sees_no_example_twice(train, pack):
    cfg = config(epoch_steps="min", pack=pack)
    plan = epoch_plan(train, cfg, epoch=0)
    assert steps_per_epoch(train, cfg) == len(plan) == 6  # the smallest task's 6 batches
    for task, n in SIZES.items():
        counts = seen(plan, task)
        assert max(counts.values()) == 1 and len(counts) == 24, task  # 6 batches of 4
    assert set(seen(plan, "sts")) == set(range(24))  # the smallest task: all of it, once


@pytest.mark.parametrize("pack", [True, False])
def test_epoch_steps_max_restarts_smaller_tasks_with_new_seeded_passes(train, pack):
    cfg = config(epoch_steps="max", pack=pack)
    plan = epoch_plan(train, cfg, epoch=0)
    assert steps_per_epoch(train, cfg) == len(plan) == 25  # the largest task's 25 batches
    assert sorted(seen(plan, "para").values()) == [1] * 100  # the largest: one pass
    # sts: 25 batches = 4 whole passes (24 batches) and one batch of a fifth
    sts = seen(plan, "sts")
    assert set(sts) == set(range(24)) and sorted(sts.values()) == [4] * 20 + [5] * 4
    sst = seen(plan, "sst")  # 2 whole passes (20 batches) and half of a third
    assert set(sst) == set(range(40)) and sorted(sst.values()) == [2] * 20 + [3] * 20
    again = epoch_plan(train, cfg, epoch=0)  # seeded: the same plan again
    assert all(np.array_equal(a[t], b[t]) for a, b in zip(plan, again) for t in a)
    other = epoch_plan(train, cfg, epoch=1)
    assert any(not np.array_equal(a["sts"], b["sts"]) for a, b in zip(plan, other))


def test_each_restarted_pass_is_a_new_order(train):
    """Without length grouping the passes of a small task follow each other in the plan: each
    holds every example once, in an order of its own."""
    cfg = config(epoch_steps="max", pack=True)
    steps = [s["sts"] for s in epoch_plan(train, cfg, epoch=0)]
    passes = [np.concatenate(steps[k:k + 6]) for k in range(0, 24, 6)]
    for p in passes:
        assert sorted(p.tolist()) == list(range(24))
    assert len({tuple(p.tolist()) for p in passes}) == 4  # no pass repeats another's order
