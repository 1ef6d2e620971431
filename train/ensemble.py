"""Several training runs as one predictor: an ensemble or a uniform weight soup.

`python -m train.evaluate RUN1 RUN2 ... --combine ensemble|soup --out DIR` uses these.

- **ensemble**: every run predicts every row with its own model; per task, the class
  probabilities (SST's five, the paraphrase probability, a user task's classes) and the
  scores (STS, a user regression task) are averaged. The runs must define the same tasks
  (names and labels; their heads may differ). It costs one forward pass per run, and gains
  most where the runs disagree, which for the 22M-parameter encoder is SST-5 (the three seeds
  of RESULTS.md section 6 differ by up to 0.013 in SST accuracy but by 0.002 in STS r).
- **soup**: the runs' parameters are averaged element-wise into one model ("Model soups",
  Wortsman et al. 2022), which costs one forward pass. It needs runs fine-tuned from the same
  pre-trained weights with the same architecture and heads (the runs of one configuration
  with different seeds are), whose weights stay in one basin of the loss.

Both are parameter-free: nothing is fitted on dev.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax.errors import BertJaxError
from bert_jax.tasks import Task, as_task

COMBINE_METHODS = ("ensemble", "soup")


class CombineError(BertJaxError, ValueError):
    """Runs that cannot be combined; the message names the run and the difference."""


def _log_mean_softmax(logits: np.ndarray) -> np.ndarray:
    """[models, n, classes] logits -> [n, classes] log of the mean class probabilities."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    top = log_probs.max(0)
    return top + np.log(np.exp(log_probs - top).mean(0))


def combine_outputs(task: Task | str, outputs: Sequence[np.ndarray]) -> np.ndarray:
    """Raw head outputs of several models for the same rows -> the raw outputs of their ensemble,
    in the same form, so `bert_jax.inference.to_predictions` and `train.analyze` read them as
    one model's. `task`: a definition or a built-in's name:
    - K > 2 classes (SST): [n, K] logits per model -> [n, K] log of the mean softmax
      probabilities;
    - two classes (paraphrase): [n] logits per model -> [n] logit of the mean sigmoid
      probability;
    - a score (STS): [n] scores per model -> [n] mean score.
    """
    task = as_task(task)
    stacked = np.stack([np.asarray(o) for o in outputs])
    if not task.is_classification:
        return stacked.astype(np.float64).mean(0).astype(np.float32)
    if task.num_outputs > 1:
        return _log_mean_softmax(stacked).astype(np.float32)
    # log p and log (1 - p) of each model, averaged in probability space, stably.
    both = np.stack([np.zeros_like(stacked), stacked.astype(np.float64)], -1)  # [m, n, 2]
    log_mean = _log_mean_softmax(both)  # [n, 2]: log mean (1 - p), log mean p
    return (log_mean[:, 1] - log_mean[:, 0]).astype(np.float32)


def _label_signature(task: Task) -> tuple:
    """What members must share for their outputs of a task to be averaged: its kind, classes
    (in order) or range, and so its outputs' shape and meaning (not its head or encoding)."""
    return task.kind, tuple(str(c) for c in task.classes), task.range


def check_same_tasks(tasks: Sequence[Sequence[Task]], names: Sequence[str]) -> None:
    """CombineError unless every member (`tasks[k]`: the definitions of run `names[k]`) defines
    the tasks of the first, with the same labels; the message names the run and the tasks that
    differ."""
    first = {t.name: _label_signature(t) for t in tasks[0]}
    for defined, name in zip(tasks[1:], names[1:]):
        own = {t.name: _label_signature(t) for t in defined}
        differ = sorted(set(first) ^ set(own)) + sorted(
            n for n in set(first) & set(own) if first[n] != own[n])
        if differ:
            raise CombineError(
                f"{name}: its tasks differ from {names[0]}'s ({', '.join(differ)}: defined in "
                "one run only, or with other classes, range or kind); an ensemble or soup needs "
                "runs that define the same tasks")


def uniform_soup(params: Sequence[Any], names: Sequence[str]) -> Any:
    """The element-wise mean of several parameter trees of one architecture (computed in
    float32, stored in each leaf's own dtype); `names` name the runs for errors."""
    first = jax.tree.structure(params[0])
    first_shapes = [np.shape(x) for x in jax.tree.leaves(params[0])]
    for tree, name in zip(params[1:], names[1:]):
        if jax.tree.structure(tree) != first or [np.shape(x) for x in
                                                 jax.tree.leaves(tree)] != first_shapes:
            raise CombineError(
                f"{name}: its parameters differ in names or shapes from {names[0]}'s; a soup "
                "needs runs of one architecture and head configuration (use --combine ensemble "
                "for runs of different configurations)")

    def mean(*leaves):
        total = sum(jnp.asarray(x, jnp.float32) for x in leaves)
        return (total / len(leaves)).astype(jnp.asarray(leaves[0]).dtype)

    return jax.tree.map(mean, *params)
