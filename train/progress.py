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
"""
from __future__ import annotations

import contextlib
import time

from tqdm.auto import tqdm


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
