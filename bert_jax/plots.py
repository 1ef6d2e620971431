"""Figures of a run and of its dev predictions, written as PNG files.

Uses matplotlib's object-oriented API with the Agg canvas (`matplotlib.figure.Figure`, no
pyplot), so it works headless and leaves a notebook's backend alone. Every function takes an
output path and returns it as a `Path`.

- `training_curves(run_dir, out_png)`: losses per task vs step (train_log.jsonl) and dev metrics
  per epoch (metrics.jsonl).
- `sst_confusion(pred, gold, out_png)`, `para_histograms(prob, gold, out_png)`,
  `sts_scatter(pred, gold, out_png)`: one task's dev predictions against gold labels.
- `write_run_plots(run_dir)`, `write_eval_plots(out_dir, outputs, gold)`: all of the above.

Every figure draws a task in its colour of `TASK_COLORS` (its loss, its dev metric, its
prediction plot), and the sum of the losses / the overall score in `TASK_COLORS["all"]`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from bert_jax.errors import BertJaxError, MissingFileError
from bert_jax.metrics import pearson

SST_CLASSES = ("very neg", "neg", "neutral", "pos", "very pos")
# One colour per task in every figure; "all": the sum of the task losses and the overall score.
TASK_COLORS = {"sst": "tab:blue", "para": "tab:orange", "sts": "tab:green", "all": "black"}
logger = logging.getLogger(__name__)
_TASK_CMAPS = {"sst": "Blues"}  # the SST confusion matrix: shades of SST's colour
# (key in the logs, legend label, task)
_TASK_LOSSES = (("loss", "sum of task losses", "all"), ("loss_sst", "SST (cross-entropy)", "sst"),
                ("loss_para", "paraphrase (BCE)", "para"), ("loss_sts", "STS (MSE)", "sts"))
DEV_KEYS = ("step", "epoch")  # what every record of metrics.jsonl holds
_DEV_METRICS = (("sst_acc", "SST accuracy", "sst"), ("para_acc", "paraphrase accuracy", "para"),
                ("sts_r", "STS Pearson r", "sts"), ("overall", "overall", "all"))


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
    """Left: each task's training loss (and their sum) vs step; right: dev metrics vs epoch.

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


def training_curves_figure(run_dir: str | Path) -> Figure:
    """The figure of `training_curves`, not yet saved."""
    run_dir = Path(run_dir)
    log = read_jsonl(run_dir / "train_log.jsonl")
    metrics_path = run_dir / "metrics.jsonl"
    dev = read_jsonl(metrics_path, DEV_KEYS) if metrics_path.is_file() else []
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_dev = fig.subplots(1, 2)
    for key, label, task in _TASK_LOSSES:
        points = [(r["step"], r[key]) for r in log if key in r and np.isfinite(r[key])]
        if points:
            x, y = zip(*points)
            ax_loss.plot(x, y, marker="." if len(points) < 30 else None, label=label,
                         color=TASK_COLORS[task], linestyle="--" if key == "loss" else "-")
    ax_loss.set(xlabel="step", ylabel="training loss", title="Training loss")
    ax_loss.grid(alpha=0.3)
    if log:
        ax_loss.legend(fontsize="small")
    for key, label, task in _DEV_METRICS:
        points = [(r["epoch"], r[key]) for r in dev if key in r]
        if points:
            x, y = zip(*points)
            ax_dev.plot(x, y, marker="o", label=label, color=TASK_COLORS[task],
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


def sst_confusion(pred, gold, out_png: str | Path) -> Path:
    """Confusion matrix of SST-5 class ids pred [n] vs gold [n]: rows = gold, colour = share of
    the row, text = counts."""
    pred, gold = _vectors(pred, gold, "sst_confusion")
    counts = np.zeros((5, 5), np.int64)
    np.add.at(counts, (gold.astype(np.int64), pred.astype(np.int64)), 1)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(5.5, 4.8))
    ax = fig.subplots()
    image = ax.imshow(share, cmap=_TASK_CMAPS["sst"], vmin=0, vmax=1)
    for i in range(5):
        for j in range(5):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(5), SST_CLASSES, rotation=30)
    ax.set_yticks(range(5), SST_CLASSES)
    acc = float(np.mean(pred == gold)) if pred.size else float("nan")
    ax.set(xlabel="predicted", ylabel="gold", title=f"SST-5 (accuracy {acc:.3f}, n={pred.size})")
    fig.colorbar(image, ax=ax, label="share of gold class")
    return _save(fig, out_png)


def sts_scatter(pred, gold, out_png: str | Path) -> Path:
    """Predicted vs gold STS similarity ([n] each, 0..5 scale), with the diagonal and Pearson r."""
    pred, gold = _vectors(pred, gold, "sts_scatter")
    r = pearson(pred, gold) if pred.size >= 2 else float("nan")
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.scatter(gold, pred, s=8, alpha=0.5, color=TASK_COLORS["sts"])
    ax.plot([0, 5], [0, 5], color="grey", linestyle="--", linewidth=1)
    ax.set(xlabel="gold similarity", ylabel="predicted similarity",
           title=f"STS (Pearson r {r:.3f}, n={pred.size})")
    ax.grid(alpha=0.3)
    return _save(fig, out_png)


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


def write_run_plots(run_dir: str | Path) -> list[Path]:
    """`run_dir/plots/training_curves.png`; returns the paths written."""
    run_dir = Path(run_dir)
    return [training_curves(run_dir, run_dir / "plots" / "training_curves.png")]


def write_eval_plots(out_dir: str | Path, outputs: dict[str, np.ndarray],
                     gold: dict[str, np.ndarray]) -> list[Path]:
    """Dev plots into `out_dir`: `sst_confusion.png`, `para_histograms.png`, `sts_scatter.png`.

    outputs: raw head outputs per task (SST logits [n, 5], paraphrase logits [n], STS scores
    [n], as `bert_jax.inference.predict_task` returns them); gold: labels [n] per task. Tasks
    missing from either dict (e.g. test splits without labels) are skipped.
    """
    out_dir = Path(out_dir)
    paths = []
    for task in ("sst", "para", "sts"):
        if task not in outputs or gold.get(task) is None:
            continue
        out, labels = np.asarray(outputs[task]), np.asarray(gold[task])
        if task == "sst":
            paths.append(sst_confusion(out.argmax(-1), labels, out_dir / "sst_confusion.png"))
        elif task == "para":
            prob = 1.0 / (1.0 + np.exp(-out.astype(np.float64)))
            paths.append(para_histograms(prob, labels, out_dir / "para_histograms.png"))
        else:
            paths.append(sts_scatter(out, labels, out_dir / "sts_scatter.png"))
    return paths
