"""Figures of a run and of its dev predictions, written as PNG files, for any task a run defines.

Uses matplotlib's object-oriented API with the Agg canvas (`matplotlib.figure.Figure`, no
pyplot), so it works headless and leaves a notebook's backend alone. Every function takes an
output path and returns it as a `Path`.

- `training_curves(run_dir, out_png)`: losses per task vs step (train_log.jsonl: `loss`,
  `loss_<task>`) and dev scores per epoch (metrics.jsonl: every `<task>_acc` / `<task>_r` and
  `overall`).
- `confusion(pred, gold, out_png, classes)`: a classification task's dev predictions against its
  gold labels (class indices); `scatter(pred, gold, out_png, value_range)`: a regression task's
  scores; `para_histograms(prob, gold, out_png)`: the built-in paraphrase task's probabilities.
  `sst_confusion` and `sts_scatter` are the first two for the built-ins.
- `write_run_plots(run_dir)`, `write_eval_plots(out_dir, outputs, gold, tasks)`: all of the
  above; `plot_file(task)` names a task's dev plot.

Every figure draws a task in one colour (`task_colors`: the built-ins' `TASK_COLORS`, a user's
tasks the `EXTRA_COLORS` in the order of the run's definitions): its loss, its dev score, its
prediction plot; the sum of the losses and the overall score in `TASK_COLORS["all"]`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from bert_jax.checkpoints import run_configs
from bert_jax.errors import BertJaxError, MissingFileError
from bert_jax.inference import class_probabilities, to_predictions
from bert_jax.metrics import pearson
from bert_jax.tasks import Task, as_task, builtin_tasks

SST_CLASSES = ("very neg", "neg", "neutral", "pos", "very pos")
# One colour per task in every figure; "all": the sum of the task losses and the overall score.
TASK_COLORS = {"sst": "tab:blue", "para": "tab:orange", "sts": "tab:green", "all": "black"}
# A user's tasks, in the order of the run's definitions (cycling after the sixth).
EXTRA_COLORS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
# A confusion matrix in shades of its task's colour.
_CMAPS = {"tab:blue": "Blues", "tab:red": "Reds", "tab:purple": "Purples", "tab:brown": "Oranges",
          "tab:pink": "RdPu", "tab:olive": "YlGn", "tab:cyan": "GnBu"}
logger = logging.getLogger(__name__)
_TASK_CMAPS = {"sst": "Blues"}  # the SST confusion matrix: shades of SST's colour
# The built-ins' (key in the logs, legend label, task)
_TASK_LOSSES = (("loss", "sum of task losses", "all"), ("loss_sst", "SST (cross-entropy)", "sst"),
                ("loss_para", "paraphrase (BCE)", "para"), ("loss_sts", "STS (MSE)", "sts"))
DEV_KEYS = ("step", "epoch")  # what every record of metrics.jsonl holds
_DEV_METRICS = (("sst_acc", "SST accuracy", "sst"), ("para_acc", "paraphrase accuracy", "para"),
                ("sts_r", "STS Pearson r", "sts"), ("overall", "overall", "all"))
_LOSS_NAMES = {"ce": "cross-entropy", "bce": "BCE", "mse": "MSE"}
# The built-ins' dev plots keep their names; a user's task gets <name>_confusion.png or
# <name>_scatter.png.
_BUILTIN_PLOTS = {"sst": "sst_confusion.png", "para": "para_histograms.png",
                  "sts": "sts_scatter.png"}


class LogError(BertJaxError, ValueError):
    """A damaged JSON-lines log of a run (train_log.jsonl, metrics.jsonl, results.jsonl); the
    message names the file, the line (1-based) and the fix."""


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_jsonl(path: str | Path, keys: tuple[str, ...] = ("step",)) -> list[dict]:
    """The records of a JSON-lines log, one JSON object per line holding a number for every key
    of `keys` (blank lines skipped). A last line cut short without its newline (a kill mid-write: the
    normal crash case) is dropped with a warning; any other line that is not such an object
    raises `LogError` naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file; pass the --out folder of a training run")
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # no newline after it: cut short by a kill mid-write
                logger.warning("%s: line %d is cut short (the run was killed while writing "
                               "it); ignoring it", path, number)
                continue
            record = None
        missing = ([k for k in keys if not _is_number(record.get(k))]
                   if isinstance(record, dict) else None)
        if missing is None or missing:
            what = (f"has no number for {', '.join(repr(k) for k in missing)}" if missing
                    else "is not a JSON object")
            raise LogError(f"{path}: line {number} {what} (each line is one record the run "
                           f"wrote, with {', '.join(keys) or 'its fields'}); delete that line "
                           "or restore the file from a copy")
        rows.append(record)
    return rows


def score_task(key: str) -> str | None:
    """The task a dev score key names (`<task>_acc`, `<task>_r`), None for any other key."""
    for suffix in ("_acc", "_r"):
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[:-len(suffix)]
    return None


def score_keys(record: dict) -> list[str]:
    """The dev score keys of a metrics.jsonl / summary.json record, in its order: every
    `<task>_acc` / `<task>_r` holding a number, then `overall` when it has one."""
    keys = [k for k, v in record.items() if score_task(k) and _is_number(v)]
    return keys + (["overall"] if _is_number(record.get("overall")) else [])


def task_colors(names: Sequence[str]) -> dict[str, str]:
    """{task: colour} for task names in the order of a run's definitions: a built-in's of
    `TASK_COLORS`, every other task the next of `EXTRA_COLORS` (cycling); "all" black."""
    extra = [n for n in dict.fromkeys(names) if n not in TASK_COLORS]
    return {**TASK_COLORS, **{n: EXTRA_COLORS[i % len(EXTRA_COLORS)] for i, n in enumerate(extra)}}


def _save(fig: Figure, out_png: str | Path) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110, bbox_inches="tight")
    return out_png


def _vectors(pred, gold, name: str) -> tuple[np.ndarray, np.ndarray]:
    pred, gold = np.asarray(pred).reshape(-1), np.asarray(gold).reshape(-1)
    if pred.shape != gold.shape:
        raise ValueError(f"{name}: {pred.size} predictions for {gold.size} gold labels")
    return pred, gold


def training_curves(run_dir: str | Path, out_png: str | Path) -> Path:
    """Left: each task's training loss (and their sum) vs step; right: dev scores vs epoch.

    Reads `run_dir/train_log.jsonl` (required) and `run_dir/metrics.jsonl` (optional: a run
    stopped before its first evaluation has none). Tasks a run did not train are left out.
    """
    return _save(training_curves_figure(run_dir), out_png)


def _last_epoch(log: list[dict], dev: list[dict]) -> float:
    """The epoch the run reached: its last logged step in epochs (steps per epoch from a dev
    record's step and epoch), or its last evaluation's epoch, whichever is later."""
    last = max(r["epoch"] for r in dev)
    rates = [r["epoch"] / r["step"] for r in dev if r.get("step") and r.get("epoch")]
    steps = [r["step"] for r in log if "step" in r]
    if rates and steps:
        last = max(last, max(steps) * rates[-1])
    return last if last > 0 else 1.0


def _run_tasks(run_dir: Path) -> tuple[Task, ...]:
    """The run's task definitions (train_config.json), () when it has none to read."""
    try:
        return run_configs(run_dir)[1].tasks
    except (BertJaxError, OSError, ValueError, KeyError):
        return ()


def _curve_labels(log: list[dict], dev: list[dict], tasks: Sequence[Task]
                  ) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(key, label, task) of the loss lines and of the dev lines to draw: the built-ins' of
    `_TASK_LOSSES` / `_DEV_METRICS`, then every other task's `loss_<task>` and score key in
    the logs."""
    defined = {t.name: t for t in tasks}
    losses, scores = list(_TASK_LOSSES), list(_DEV_METRICS[:-1])
    known = {key for key, _, _ in _TASK_LOSSES + _DEV_METRICS}
    for key in dict.fromkeys(k for r in log for k in r):
        name = key[len("loss_"):] if key.startswith("loss_") else ""
        if name and key not in known:
            how = _LOSS_NAMES[defined[name].loss] if name in defined else ""
            losses.append((key, f"{name} ({how})" if how else name, name))
    for key in dict.fromkeys(k for r in dev for k in score_keys(r)):
        if key not in known and key != "overall":
            metric = "accuracy" if key.endswith("_acc") else "Pearson r"
            scores.append((key, f"{score_task(key)} {metric}", score_task(key)))
    return losses, scores + [_DEV_METRICS[-1]]


def training_curves_figure(run_dir: str | Path) -> Figure:
    """The figure of `training_curves`, not yet saved."""
    run_dir = Path(run_dir)
    log = read_jsonl(run_dir / "train_log.jsonl")
    metrics_path = run_dir / "metrics.jsonl"
    dev = read_jsonl(metrics_path, DEV_KEYS) if metrics_path.is_file() else []
    tasks = _run_tasks(run_dir)
    losses, scores = _curve_labels(log, dev, tasks)
    colors = task_colors([t.name for t in tasks] + [task for _, _, task in losses + scores])
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_dev = fig.subplots(1, 2)
    for key, label, task in losses:
        points = [(r["step"], r[key]) for r in log if _is_number(r.get(key))
                  and np.isfinite(r[key])]
        if points:
            x, y = zip(*points)
            ax_loss.plot(x, y, marker="." if len(points) < 30 else None, label=label,
                         color=colors[task], linestyle="--" if key == "loss" else "-")
    ax_loss.set(xlabel="step", ylabel="training loss", title="Training loss")
    ax_loss.grid(alpha=0.3)
    if log:
        ax_loss.legend(fontsize="small")
    for key, label, task in scores:
        points = [(r["epoch"], r[key]) for r in dev if _is_number(r.get(key))]
        if points:
            x, y = zip(*points)
            ax_dev.plot(x, y, marker="o", label=label, color=colors[task],
                        linestyle="--" if task == "all" else "-")
    best = [r for r in dev if r.get("best")]
    if best and "overall" in best[-1]:
        ax_dev.axvline(best[-1]["epoch"], color="grey", linestyle=":", label="best checkpoint")
    ax_dev.set(xlabel="epoch", ylabel="dev score", title="Dev metrics")
    if dev:  # from 0 to the run's end, also when one evaluation is a single point
        ax_dev.set_xlim(0, 1.04 * _last_epoch(log, dev))
    ax_dev.grid(alpha=0.3)
    if dev:
        ax_dev.legend(fontsize="small")
    else:
        ax_dev.text(0.5, 0.5, "no dev evaluation yet", ha="center", va="center",
                    transform=ax_dev.transAxes)
    fig.suptitle(run_dir.name)
    return fig


def confusion(pred, gold, out_png: str | Path, classes: Sequence, title: str = "",
              cmap: str = "Blues") -> Path:
    """Confusion matrix of class indices pred [n] vs gold [n] (each in 0..K-1, K =
    len(classes)), ticks labelled with `classes` in class order: rows = gold, colour = share
    of the row, text = counts; the title gets the accuracy and n."""
    pred, gold = _vectors(pred, gold, title or "confusion")
    k = len(classes)
    for name, values in (("predictions", pred), ("gold labels", gold)):
        if values.size and not (np.all(values == np.round(values)) and values.min() >= 0
                                and values.max() < k):
            raise ValueError(f"{title or 'confusion'}: {name} are not class indices 0..{k - 1}")
    counts = np.zeros((k, k), np.int64)
    np.add.at(counts, (gold.astype(np.int64), pred.astype(np.int64)), 1)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(max(5.5, 0.6 * k + 2.5), max(4.8, 0.6 * k + 1.8)))
    ax = fig.subplots()
    image = ax.imshow(share, cmap=cmap, vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center",
                    fontsize="medium" if k <= 8 else "x-small",
                    color="white" if share[i, j] > 0.5 else "black")
    labels = [str(c) for c in classes]
    ax.set_xticks(range(k), labels, rotation=30, ha="right" if k > 5 else "center")
    ax.set_yticks(range(k), labels)
    acc = float(np.mean(pred == gold)) if pred.size else float("nan")
    ax.set(xlabel="predicted", ylabel="gold", title=f"{title} (accuracy {acc:.3f}, n={pred.size})")
    fig.colorbar(image, ax=ax, label="share of gold class")
    return _save(fig, out_png)


def scatter(pred, gold, out_png: str | Path, value_range: tuple[float, float] = (0.0, 5.0),
            title: str = "", what: str = "score", color: str = "tab:green") -> Path:
    """Predicted vs gold scores ([n] each) with the diagonal over `value_range` (low, high) and
    Pearson r in the title; the gold axis spans the range, the predicted axis the range and
    every prediction."""
    pred, gold = _vectors(pred, gold, title or "scatter")
    r = pearson(pred, gold) if pred.size >= 2 else float("nan")
    low, high = value_range
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.scatter(gold, pred, s=8, alpha=0.5, color=color)
    ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1)
    finite = pred[np.isfinite(pred)].astype(np.float64)
    bottom, top = min(low, finite.min(initial=low)), max(high, finite.max(initial=high))
    pad = 0.04 * (high - low)
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(bottom - pad, top + pad)
    ax.set(xlabel=f"gold {what}", ylabel=f"predicted {what}",
           title=f"{title} (Pearson r {r:.3f}, n={pred.size})")
    ax.grid(alpha=0.3)
    return _save(fig, out_png)


def sst_confusion(pred, gold, out_png: str | Path) -> Path:
    """`confusion` of SST-5 class ids pred [n] vs gold [n]."""
    return confusion(pred, gold, out_png, SST_CLASSES, "SST-5", _TASK_CMAPS["sst"])


def sts_scatter(pred, gold, out_png: str | Path) -> Path:
    """`scatter` of predicted vs gold STS similarity ([n] each, 0..5 scale)."""
    return scatter(pred, gold, out_png, (0.0, 5.0), "STS", "similarity", TASK_COLORS["sts"])


def para_histograms(prob, gold, out_png: str | Path) -> Path:
    """Histograms of the predicted paraphrase probability ([n], 0..1) for gold 0 and gold 1
    pairs; the 0.5 threshold marked."""
    prob, gold = _vectors(prob, gold, "para_histograms")
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    bins = np.linspace(0, 1, 26)
    for value, label, color in ((0, "not paraphrase (gold 0)", "tab:gray"),
                                (1, "paraphrase (gold 1)", TASK_COLORS["para"])):
        count = int((gold == value).sum())
        ax.hist(prob[gold == value], bins=bins, alpha=0.6, label=f"{label}: {count}",
                color=color)
    ax.axvline(0.5, color="grey", linestyle=":")
    acc = float(np.mean((prob > 0.5) == (gold == 1))) if prob.size else float("nan")
    ax.set(xlabel="predicted probability of paraphrase", ylabel="pairs",
           title=f"Quora paraphrase (accuracy {acc:.3f})")
    ax.legend(fontsize="small")
    return _save(fig, out_png)


def plot_file(task: Task | str) -> str:
    """The file name of a task's dev plot: `sst_confusion.png`, `para_histograms.png`,
    `sts_scatter.png` for the built-ins; `<name>_confusion.png` (classification) or
    `<name>_scatter.png` (regression) for any other task."""
    task = as_task(task)
    if task.name in _BUILTIN_PLOTS:
        return _BUILTIN_PLOTS[task.name]
    return f"{task.name}_{'confusion' if task.is_classification else 'scatter'}.png"


def task_plot(task: Task, outputs, gold, out_png: str | Path, color: str | None = None
              ) -> Path:
    """A task's dev plot from its raw head outputs (logits [n, K], one logit [n] or scores [n],
    as `bert_jax.inference.predict_task` returns them) and gold labels [n] (class indices or
    scores): the paraphrase histograms for the built-in `para`, a confusion matrix over
    `task.classes` for a classification task, a scatter over `task.range` for a regression
    task."""
    outputs, gold = np.asarray(outputs), np.asarray(gold)
    color = color or task_colors([task.name])[task.name]
    if task.name == "sst":
        return sst_confusion(to_predictions(task, outputs), gold, out_png)
    if task.name == "para":
        return para_histograms(class_probabilities(task, outputs)[:, 1], gold, out_png)
    if task.name == "sts":
        return sts_scatter(outputs, gold, out_png)
    if task.is_classification:
        return confusion(to_predictions(task, outputs), gold, out_png, task.classes, task.name,
                         _CMAPS.get(color, "Greys"))
    return scatter(outputs, gold, out_png, task.range, task.name, task.label, color)


def write_run_plots(run_dir: str | Path) -> list[Path]:
    """`run_dir/plots/training_curves.png`; returns the paths written."""
    run_dir = Path(run_dir)
    return [training_curves(run_dir, run_dir / "plots" / "training_curves.png")]


def write_eval_plots(out_dir: str | Path, outputs: dict[str, np.ndarray],
                     gold: dict[str, np.ndarray | None],
                     tasks: Sequence[Task | str] | None = None) -> list[Path]:
    """Each task's dev plot (`task_plot`) into `out_dir/plot_file(task)`, in the order of `tasks`.

    outputs: raw head outputs per task name; gold: labels [n] per task name; tasks: the run's
    definitions in their order (`HeadConfig.tasks`; names of built-ins allowed; default the
    three built-ins). Tasks missing from either dict (e.g. test splits without labels) are
    skipped; outputs of a task `tasks` does not define raise ValueError.
    """
    out_dir = Path(out_dir)
    tasks = builtin_tasks() if tasks is None else tuple(as_task(t) for t in tasks)
    unknown = [name for name in outputs if name not in {t.name for t in tasks}]
    if unknown:
        raise ValueError(f"write_eval_plots: outputs of {', '.join(unknown)} but no definition "
                         f"(tasks= has {', '.join(t.name for t in tasks)}): pass the run's "
                         "definitions as tasks=")
    colors = task_colors([t.name for t in tasks])
    return [task_plot(t, outputs[t.name], gold[t.name], out_dir / plot_file(t), colors[t.name])
            for t in tasks if t.name in outputs and gold.get(t.name) is not None]
