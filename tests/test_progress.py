"""train.progress: the training bar counts completed steps, leaves evaluations out of its rate
and elapsed time, and its eta includes the evaluations still to come."""
from __future__ import annotations

import io

import pytest

from train import progress


@pytest.mark.parametrize("total, per_epoch", [(30, 10), (25, 10), (7, 10), (10, 1)])
def test_evaluations_left_counts_epoch_ends_and_the_last_step(total, per_epoch):
    for step in range(total + 1):
        want = sum(1 for s in range(step + 1, total + 1) if s % per_epoch == 0 or s == total)
        assert progress.evaluations_left(step, total, per_epoch) == want, step


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_evaluation_time_is_left_out_of_rate_and_elapsed_and_counted_in_eta():
    clock, out = Clock(), io.StringIO()
    bar = progress.TrainProgress(total_steps=30, start_step=0, per_epoch=10, enabled=True,
                                 file=out, clock=clock)
    clock.now += 5.0  # 10 steps in 5 s
    bar.completed(10, {"loss": 2.0, "loss_sst": 1.5})
    assert bar.step_seconds() == pytest.approx(0.5)
    assert bar.eta_seconds() is None  # no evaluation measured yet
    with bar.evaluating():
        clock.now += 40.0
    assert bar.eval_seconds == pytest.approx(40.0)
    assert bar.bar.format_dict["elapsed"] == pytest.approx(5.0)  # the evaluation left out
    assert bar.step_seconds() == pytest.approx(0.5)
    # 20 steps at 0.5 s and two more evaluations (at steps 20 and 30) of 40 s
    assert bar.eta_seconds() == pytest.approx(20 * 0.5 + 2 * 40.0)
    clock.now += 10.0
    bar.completed(20, {"loss": 1.0})
    assert bar.bar.n == 20 and bar.bar.format_dict["elapsed"] == pytest.approx(15.0)
    assert bar.eta_seconds() == pytest.approx(10 * 0.75 + 1 * 40.0)  # 20 steps in 15 s
    text = out.getvalue()
    assert "1.33step/s" in text.split("\r")[-1]  # 20 steps in 15 s of training
    assert "eta=00:47 with eval" in text and "loss=1.000" in text and "sst=1.500" in text
    bar.close()


def test_a_resumed_bar_measures_only_its_own_steps():
    clock = Clock()
    bar = progress.TrainProgress(total_steps=100, start_step=60, per_epoch=50, enabled=True,
                                 file=io.StringIO(), clock=clock)
    clock.now += 8.0
    bar.completed(70, {})
    assert bar.step_seconds() == pytest.approx(0.8)
    bar.close()


def test_without_a_bar_nothing_is_drawn_and_evaluations_still_time():
    clock, out = Clock(), io.StringIO()
    bar = progress.TrainProgress(total_steps=20, start_step=0, per_epoch=10, enabled=False,
                                 file=out, clock=clock)
    clock.now += 2.0
    bar.completed(10, {"loss": 1.0})
    with bar.evaluating():
        clock.now += 3.0
    assert bar.disabled and out.getvalue() == ""
    assert bar.eta_seconds() == pytest.approx(10 * 0.2 + 1 * 3.0)
    bar.close()
