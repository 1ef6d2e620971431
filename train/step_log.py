"""The training loop's log points: step metrics pulled to the host (the loop's only sync),
checked for non-finite losses and divergence, shown on the bar or as a plain line, and written
to train_log.jsonl and TensorBoard."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import jax
import numpy as np

from train.config import TrainConfig
from train.errors import TrainingError
from train.progress import TrainProgress
from train.run_folder import write_json_line
from train.tensorboard_log import TensorBoardLog

log = logging.getLogger("train.multitask")  # the loop's lines carry the tool's name


def nonfinite_message(record: dict, ids: dict[str, list[str]]) -> str:
    tasks = [k[len("loss_"):] for k, v in record.items()
             if k.startswith("loss_") and not np.isfinite(v)]
    shown = {t: ids.get(t, [])[:8] for t in tasks or ids}
    return (f"non-finite loss at step {record['step']} (tasks {tasks or 'unknown'}; example ids "
            f"{shown}). The update was skipped and the last good checkpoint kept. Lower --lr, set "
            "--grad-clip, use float32, or pass --nonfinite skip to skip such steps")


class LossWatch:
    """Warns once when the logged loss grows by orders of magnitude over its first value (a
    diverging run: too high a learning rate) even while it stays finite."""

    def __init__(self, factor: float = 100.0):
        self.factor, self.first, self.warned = factor, None, False

    def check(self, step: int, loss: float) -> None:
        if not np.isfinite(loss):
            return
        if self.first is None:
            self.first = (step, loss)
        elif not self.warned and loss > self.factor * max(self.first[1], 1e-3):
            self.warned = True
            log.warning("the loss grew from %.4g at step %d to %.4g at step %d: the run is "
                        "diverging. Lower --lr or set --grad-clip", self.first[1], self.first[0],
                        loss, step)


def flush_step_metrics(pending: list, cfg: TrainConfig, bar: TrainProgress, path: Path,
                       watch: LossWatch, board: TensorBoardLog) -> None:
    """Pull the pending step metrics to the host (the only sync in the loop); log and check.
    `pending`: (step, the train step's metrics, the step's example ids per task) per step. The
    log line holds the mean losses and gradient norm of the finite steps and the learning
    rates of the last step (the optimiser's own: `train.optimizer.learning_rates`)."""
    if not pending:
        return
    fetched = jax.device_get([m for _, m, _ in pending])
    records = []
    for (step, _, ids), values in zip(pending, fetched):
        record = {"step": step, **{k: float(v) for k, v in values.items()}}
        if record["finite"] < 1:
            if cfg.nonfinite == "stop":
                pending.clear()
                raise TrainingError(nonfinite_message(record, ids))
            log.warning("skipped step %d: %s", step, nonfinite_message(record, ids))
        records.append(record)
    finite = [r for r in records if r["finite"] >= 1] or records
    mean = {k: float(np.mean([r[k] for r in finite if k in r]))
            for k in finite[-1] if k.startswith("loss")}
    if "loss" in mean:
        watch.check(pending[-1][0], mean["loss"])
    bar.completed(pending[-1][0], mean)
    if bar.disabled:  # no bar (a log file, --no-progress): a plain line
        log.info("step %d: %s", pending[-1][0],
                 ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
    rates = {k: v for k, v in records[-1].items() if k == "lr" or k.startswith("lr_")}
    record = {"step": pending[-1][0], **mean, "grad_norm": float(np.mean(
        [r["grad_norm"] for r in finite])), **rates, "time": time.time()}
    write_json_line(path, record)
    board.train(record)
    pending.clear()
