"""train.progress: the training bar counts completed steps, leaves evaluations out of its rate
and elapsed time, and its eta includes the evaluations still to come; RunPace's lines (a new
shape compiling, step 1, the run's length at the measured pace)."""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest

from train import progress
from train.progress import RunPace, describe_shape, format_hours
from train.step import step_signature


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


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def step_arrays(rows: int, length: int) -> dict:
    return {"input_ids": np.zeros((rows, length), np.int32),
            "segment_ids": np.zeros((rows, length), np.int32), "labels": np.zeros(rows)}


def test_run_pace_says_compiles_step_one_and_the_runs_length_without_compiling(caplog):
    """A plain log: one line per new shape, step 1's losses and time, then after 20 timed steps
    the remaining steps at their pace (the 100 s a new shape took to compile left out): on the
    CPU and over an hour, a warning."""
    clock, log = Clock(), logging.getLogger("test.pace")
    pace = RunPace(total_steps=10_021, start_step=0, backend="cpu", plain=True, log=log,
                   timed=20, clock=clock)
    metrics = {"loss": np.float32(2.5), "loss_sst": np.float32(1.5), "grad_norm": np.float32(9)}
    with caplog.at_level(logging.INFO, logger="test.pace"):
        for step in range(1, 22):
            shape = (32, 128) if step == 5 else (16, 64)
            clock.now += 2.0  # the previous step computing, while the host prepares this one
            pace.before(step_arrays(*shape))
            clock.now += 30.0 if step == 1 else 100.0 if step == 5 else 0.0  # the call compiles
            pace.after(step, metrics)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines[0] == ("INFO", "compiling the train step for shape 16x64 (once per shape)")
    assert lines[1] == ("INFO", "step 1: loss 2.5000, loss_sst 1.5000 (32.0 s, compiling "
                                "included)")
    assert lines[2] == ("INFO", "compiling the train step for shape 32x128 (once per shape)")
    # 20 timed steps of 2 s (plus 100 s compiling, left out): 2.00 s/step, 10,000 steps left
    assert lines[3][0] == "WARNING" and lines[3][1].startswith(
        "at this pace (2.00 s/step, compiling left out) the run's 10,000 remaining steps take "
        "about 5.6 h on the CPU")
    assert len(lines) == 4


def test_run_pace_with_a_bar_or_on_a_gpu_logs_only_the_estimate(caplog):
    clock, log = Clock(), logging.getLogger("test.pace")
    pace = RunPace(total_steps=100, start_step=40, backend="gpu", plain=False, log=log,
                   timed=5, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.pace"):
        for step in range(41, 50):
            pace.before(step_arrays(8, 64))
            clock.now += 0.5
            pace.after(step, {"loss": np.float32(1.0)})
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "at this pace (0.50 s/step, compiling left out) the run's 54 remaining steps "
                 "take about 27 s, evaluations not included")]


def test_shape_names_and_hours():
    assert describe_shape(step_arrays(16, 64)) == "16x64"
    assert step_signature(step_arrays(16, 64)) != step_signature(step_arrays(16, 128))
    assert [format_hours(s) for s in (40, 600, 9000)] == ["40 s", "10 min", "2.5 h"]
