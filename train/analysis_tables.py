"""The tables of an error analysis (`train.analyze`): a ranked or summary table of one task's
dev predictions, and its markdown."""
from __future__ import annotations

import dataclasses

import numpy as np

from bert_jax.tasks import Task

BINS = 5  # a regression task's gold-score bins


@dataclasses.dataclass
class Table:
    """One table of a task's analysis (a ranked list of examples, or a summary): a title,
    column names and rows of cell strings."""
    title: str
    columns: list[str]
    rows: list[list[str]]


def fmt(x: float) -> str:
    return f"{x:.3f}"


def ratio(a: int, b: int) -> str:
    return fmt(a / b) if b else "-"


def class_tables(task: Task, pred: np.ndarray, gold: np.ndarray, top: int) -> list[Table]:
    """Per class (in class order): gold and predicted counts, correct, precision, recall, F1;
    then the `top` most frequent confusions gold -> predicted (count, share of the gold
    class)."""
    k = len(task.classes)
    counts = np.zeros((k, k), np.int64)
    np.add.at(counts, (gold, pred), 1)
    rows = []
    for c, value in enumerate(task.classes):
        right, n_gold, n_pred = int(counts[c, c]), int(counts[c].sum()), int(counts[:, c].sum())
        f1 = ratio(2 * right, n_gold + n_pred)
        rows.append([str(value), str(n_gold), str(n_pred), str(right), ratio(right, n_pred),
                     ratio(right, n_gold), f1])
    per_class = Table("Per class", ["class", "gold", "predicted", "correct", "precision",
                                    "recall", "F1"], rows)
    pairs = sorted(((-counts[g, p], g, p) for g in range(k) for p in range(k)
                    if g != p and counts[g, p]))[:top]
    confusions = Table("Most frequent confusions", ["gold", "predicted", "count",
                                                    "share of gold"],
                       [[str(task.classes[g]), str(task.classes[p]), str(-c),
                         ratio(-c, int(counts[g].sum()))] for c, g, p in pairs])
    return [per_class, confusions]


def error_bins(task: Task, pred: np.ndarray, gold: np.ndarray, bins: int = BINS) -> Table:
    """The error by gold score: `bins` equal bins over the task's range (the last one closed),
    each with its examples, mean gold, mean prediction, mean pred - gold and mean |pred - gold|."""
    low, high = task.range
    edges = np.linspace(low, high, bins + 1)
    which = np.clip(np.searchsorted(edges, gold, side="right") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        err = pred[inside] - gold[inside]
        shown = [fmt(gold[inside].mean()), fmt(pred[inside].mean()), f"{err.mean():+.3f}",
                 fmt(np.abs(err).mean())] if n else ["-"] * 4
        close = "]" if b == bins - 1 else ")"
        rows.append([f"[{edges[b]:.2f}, {edges[b + 1]:.2f}{close}", str(n), *shown])
    return Table("Error by gold score", ["gold score", "n", "mean gold", "mean pred",
                                         "mean pred - gold", "mean \\|pred - gold\\|"], rows)


def _cell(s: str) -> str:
    return " ".join(str(s).split()).replace("|", "\\|")


def table_markdown(table: Table) -> list[str]:
    """The lines of `table` under its `### title` heading ("(none)" for no rows)."""
    out = [f"### {table.title}", ""]
    if not table.rows:
        return out + ["(none)", ""]
    out.append("| " + " | ".join(table.columns) + " |")
    out.append("|" + "|".join("---" for _ in table.columns) + "|")
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in table.rows]
    return out + [""]
