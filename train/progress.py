"""The training bar of `python -m train.multitask`: the truth about steps, rate and time left.

- Steps count when their metrics reach the host (at each log point): those steps have
  completed, so the rate is the measured one, not the rate at which JAX queues work.
- The rate is the mean over the run's completed steps (no smoothing, which swung between about
  3 steps/s and 1.2 s/step around each log point), and time spent evaluating is left out of it.
- Before each dev evaluation the bar clears its line, so the evaluation's own bar (or its two
  plain lines) stands alone; afterwards the bar comes back with the evaluation time removed
  from its elapsed time.
- Its postfix shows `eta` with every evaluation still to come (the last one's duration each),
  which tqdm's own remaining time leaves out.
Where no bar can draw (a log file, `--no-progress`) it draws nothing; the loop logs plain lines.

`RunPace` says what neither gives: in a plain log, when a step shape compiles (minutes on a CPU
with no other line) and the first step's loss and time; on any backend, after the first timed
steps, how long the run takes at that pace (a warning when it is hours on the CPU).
"""
from __future__ import annotations

import contextlib
import logging
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from train.step import step_signature


def evaluations_left(step: int, total_steps: int, per_epoch: int) -> int:
    """Dev evaluations still to come after `step`: one at each epoch end in (step, total_steps],
    and one at `total_steps` when it does not end an epoch."""
    ends = total_steps // per_epoch - step // per_epoch
    return ends + (1 if total_steps % per_epoch and step < total_steps else 0)


def format_seconds(seconds: float) -> str:
    """`H:MM:SS` or `MM:SS`, as tqdm writes times."""
    return tqdm.format_interval(max(0.0, seconds))


class TrainProgress:
    """A tqdm bar over training steps; see the module docstring.

    `total_steps`, `start_step`: the run's steps and where it (re)starts; `per_epoch`: steps per
    epoch (an evaluation ends each); `enabled`: draw a bar (a terminal or a notebook); `file`:
    where it draws (default stderr); `clock`: seconds, for the bar and the estimates alike.
    """

    def __init__(self, total_steps: int, start_step: int, per_epoch: int, enabled: bool,
                 file=None, clock=time.perf_counter):
        self.total, self.per_epoch, self.clock = total_steps, per_epoch, clock
        self.first_step = self.n = start_step  # n: the last completed step
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not enabled, unit="step",
                        dynamic_ncols=True, desc="train", smoothing=0, file=file)
        self.eval_seconds: float | None = None  # the last evaluation's duration
        self.paused = 0.0  # seconds spent evaluating since the bar started
        self.started = clock()
        if enabled:
            self.bar._time = clock  # one clock for tqdm's elapsed time and ours
            self.bar.start_t = self.bar.last_print_t = self.started
        self.postfix: dict[str, str] = {}

    @property
    def disabled(self) -> bool:
        return bool(self.bar.disable)

    def step_seconds(self) -> float | None:
        """Mean seconds per completed step since the bar started, evaluations left out."""
        done = self.n - self.first_step
        if done <= 0:
            return None
        return (self.clock() - self.started - self.paused) / done

    def eta_seconds(self) -> float | None:
        """Seconds until the run ends: its remaining steps at the mean step time, plus every
        evaluation still to come at the last one's duration (None before either is known)."""
        per_step = self.step_seconds()
        if per_step is None or self.eval_seconds is None:
            return None
        steps = (self.total - self.n) * per_step
        return steps + evaluations_left(self.n, self.total, self.per_epoch) * self.eval_seconds

    def completed(self, step: int, losses: dict[str, float]) -> None:
        """Steps up to `step` have completed (their metrics are on the host); `losses`: the
        means to show."""
        self.postfix = {k.replace("loss_", ""): f"{v:.3f}" for k, v in losses.items()}
        self.bar.update(step - self.n)
        self.n = step
        self._show()

    def _show(self) -> None:
        eta = self.eta_seconds()
        shown = dict(self.postfix)
        if eta is not None:
            shown["eta"] = f"{format_seconds(eta)} with eval"
        self.bar.set_postfix(shown)

    @contextlib.contextmanager
    def evaluating(self):
        """Around a dev evaluation: clears the bar's line first; afterwards takes the time spent
        out of the bar's elapsed time and rate, and redraws it."""
        self.bar.clear()
        began = self.clock()
        try:
            yield
        finally:
            took = self.clock() - began
            self.eval_seconds, self.paused = took, self.paused + took
            if not self.disabled:  # tqdm's own elapsed, rate and remaining time
                self.bar.start_t += took
                self.bar.last_print_t += took
                self._show()

    def close(self) -> None:
        self.bar.close()


def describe_shape(arrays) -> str:
    """A step batch's array shapes, as its log lines name them: the distinct 2-D shapes
    ([rows, length] packed, [batch, length] padded) as `RxL`, comma-separated."""
    shapes = {np.shape(leaf) for leaf in jax.tree.leaves(arrays) if np.ndim(leaf) == 2}
    return ", ".join("x".join(map(str, shape)) for shape in sorted(shapes)) or "scalar"


def format_hours(seconds: float) -> str:
    """`2.4 h`, `35 min` or `40 s`."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


class RunPace:
    """Around each train step of the loop (`before(arrays)`, `after(step, metrics)`): see the
    module docstring. `plain`: no bar draws (a log file, --no-progress), so the compile and
    first-step lines go to `log`; `bar`: the TrainProgress to clear before a line; `timed`:
    steps after the first that the estimate is measured over (time compiling them left out);
    `long_seconds`: from this length on, a run on the CPU is a warning."""

    def __init__(self, total_steps: int, start_step: int, backend: str, plain: bool,
                 log: logging.Logger, bar: TrainProgress | None = None, timed: int = 20,
                 long_seconds: float = 3600.0, clock=time.perf_counter):
        self.total, self.first, self.backend, self.plain = total_steps, start_step, backend, plain
        self.log, self.bar, self.timed, self.long = log, bar, timed, long_seconds
        self.clock = clock
        self.shapes: set = set()
        self.started = clock()
        self.compiling = 0.0  # seconds spent compiling since the timing began
        self.timing_from: float | None = None  # when the first step completed
        self.began: float | None = None  # when the current step was called, if it compiles

    def _say(self, level: int, message: str, *args) -> None:
        if self.bar is not None and not self.bar.disabled:
            self.bar.bar.clear()
        self.log.log(level, message, *args)
        if self.bar is not None and not self.bar.disabled:
            self.bar.bar.refresh()

    def before(self, arrays, signature: tuple | None = None) -> None:
        """Before a step is called on `arrays` (a step batch's host arrays); `signature`: what
        the step compiles once per (`train.step.step_signature`, as the loop counts compiles;
        default: computed from `arrays`)."""
        key = signature if signature is not None else step_signature(arrays)
        self.began = None
        if key not in self.shapes:
            self.shapes.add(key)
            self.began = self.clock()
            if self.plain:
                self._say(logging.INFO, "compiling the train step for shape %s (once per shape)",
                          describe_shape(arrays))

    def after(self, step: int, metrics: dict) -> None:
        """After step `step` was called and returned `metrics` (device arrays)."""
        if self.began is not None:  # the call traced and compiled before it returned
            self.compiling += self.clock() - self.began
        if step == self.first + 1:
            losses = jax.device_get({k: v for k, v in metrics.items() if k.startswith("loss")})
            self.timing_from, self.compiling = self.clock(), 0.0
            if self.plain:
                self._say(logging.INFO, "step %d: %s (%.1f s, compiling included)", step,
                          ", ".join(f"{k} {float(v):.4f}" for k, v in losses.items()),
                          self.timing_from - self.started)
        elif step == self.first + 1 + self.timed and step < self.total:
            jax.block_until_ready(metrics)
            per_step = (self.clock() - self.timing_from - self.compiling) / self.timed
            self.estimate(per_step, self.total - step)

    def estimate(self, per_step: float, steps_left: int) -> None:
        """The line that says how long `steps_left` steps take at `per_step` seconds each."""
        seconds = per_step * steps_left
        where = f" on the {self.backend.upper()}" if self.backend == "cpu" else ""
        message = (f"at this pace ({per_step:.2f} s/step, compiling left out) the run's "
                   f"{steps_left:,} remaining steps take about {format_hours(seconds)}{where}, "
                   "evaluations not included")
        if self.backend == "cpu" and seconds >= self.long:
            self._say(logging.WARNING, "%s: this run is meant for a GPU or TPU (README: GPU, "
                      "TPU and Colab)", message)
        else:
            self._say(logging.INFO, message)
