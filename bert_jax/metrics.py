"""Dev metrics of any task (numpy only): accuracy, Pearson r, and the overall score."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from bert_jax.tasks import BUILTIN_NAMES, Task, as_task, overall


def _pair(pred, gold, name: str) -> tuple[np.ndarray, np.ndarray]:
    pred, gold = np.asarray(pred).reshape(-1), np.asarray(gold).reshape(-1)
    if pred.shape != gold.shape:
        raise ValueError(f"{name}: {pred.size} predictions for {gold.size} gold labels")
    if pred.size == 0:
        raise ValueError(f"{name}: no examples")
    return pred, gold


def accuracy(pred, gold) -> float:
    """Fraction of `pred` equal to `gold` (both [n] class ids)."""
    pred, gold = _pair(pred, gold, "accuracy")
    return float(np.mean(pred == gold))


def pearson(pred, gold) -> float:
    """Pearson correlation of `pred` and `gold` ([n] scores), computed in float64.

    When either input is constant (zero variance, e.g. a model that predicts one value) the
    correlation is undefined; this returns 0.0 instead of nan, without a warning. Non-finite
    inputs give nan. Needs n >= 2.
    """
    pred, gold = _pair(pred, gold, "pearson")
    if pred.size < 2:
        raise ValueError("pearson: needs at least 2 examples")
    x, y = pred.astype(np.float64), gold.astype(np.float64)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return float("nan")
    if np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0
    x, y = x - x.mean(), y - y.mean()
    # Scale first so that the sums of squares neither overflow nor underflow.
    sx, sy = np.abs(x).max(), np.abs(y).max()
    if sx == 0 or sy == 0:
        return 0.0
    x, y = x / sx, y / sy
    den = np.sqrt(np.dot(x, x) * np.dot(y, y))
    if den == 0:
        return 0.0
    return float(np.clip(np.dot(x, y) / den, -1.0, 1.0))


def overall_score(sst_acc: float, para_acc: float, sts_r: float) -> float:
    """CS224N's overall score: (sst_acc + para_acc + (sts_r + 1) / 2) / 3, in [0, 1]."""
    return (sst_acc + para_acc + (sts_r + 1) / 2) / 3


def task_score(task: Task, predictions, gold) -> float:
    """A task's dev metric (`Task.metric`): accuracy of class indices, or Pearson r of scores."""
    if task.metric == "accuracy":
        return accuracy(predictions, gold)
    return pearson(predictions, gold)


def dev_scores(predictions: dict, gold: dict, tasks: Sequence[Task | str] = BUILTIN_NAMES
               ) -> dict[str, float]:
    """Scores of the tasks in `predictions` ({task: [n] predictions}) against `gold` ({task: [n]
    labels}), named by `Task.score_name` (`sst_acc`, `para_acc`, `sts_r`, `<name>_acc`,
    `<name>_r`), in the order of `tasks` (definitions, or built-in names); `overall` (the mean
    of accuracies and (r + 1) / 2, `bert_jax.tasks.overall`) when every task of `tasks` is
    given."""
    tasks = [as_task(t) for t in tasks]
    unknown = set(predictions) - {t.name for t in tasks}
    if unknown:
        raise ValueError(f"predictions for unknown task(s) {sorted(unknown)}")
    scores = {t.score_name: task_score(t, predictions[t.name], gold[t.name])
              for t in tasks if t.name in predictions}
    if len(scores) == len(tasks):
        scores["overall"] = overall(tasks, scores)
    return {k: float(v) for k, v in scores.items()}
