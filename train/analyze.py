"""Error analysis on dev: `python -m train.analyze CKPT [--data-dir DIR] [--top 10] [--out FILE]`.

Per task, the model's most confident mistakes with their sentences and scores:
- SST-5: wrong predictions with the highest probability on the predicted class;
- paraphrase: false positives (gold 0, highest probability) and false negatives (gold 1, lowest);
- STS: the largest over-estimates (pred - gold) and under-estimates (gold - pred).
Prints a markdown report and writes it to --out (default CKPT/analysis.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from bert_jax import data as data_lib
from bert_jax import metrics
from bert_jax.cli import nonnegative_int, output_file, positive_int

TASK_TITLES = {"sst": "SST-5 sentiment", "para": "Quora paraphrase", "sts": "STS similarity"}


@dataclasses.dataclass
class Table:
    """One ranked list of examples: a title, column names and rows of cell strings."""
    title: str
    columns: list[str]
    rows: list[list[str]]


@dataclasses.dataclass
class TaskAnalysis:
    task: str
    n: int
    score_name: str
    score: float
    tables: list[Table]


def load_dev(task: str, data_dir=None, limit: int | None = None):
    """(ids [n], sentence columns (1 or 2 lists of n), gold labels [n]) of `task`'s dev file,
    skipping bad rows; `limit`: the first N rows."""
    path = data_lib.find_data_dir(data_dir) / data_lib.default_file(task, "dev")
    ds = data_lib.load_split(path, task, skip_bad_rows=True)
    if limit and limit < len(ds):
        ds = ds.select(range(limit))
    cols = ["sentence1"] + (["sentence2"] if data_lib.is_pair_task(task) else [])
    return ds["id"], [ds[c] for c in cols], np.asarray(ds["label"])


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def analyze_task(task: str, ids, sentences, gold, outputs, top: int = 10) -> TaskAnalysis:
    """Ranked mistakes of one task from raw head outputs (SST logits [n, 5], paraphrase
    logits [n], STS scores [n]) and gold labels [n]."""
    gold = np.asarray(gold)
    n = len(gold)
    pair = len(sentences) == 2
    text = lambda i: [sentences[0][i]] + ([sentences[1][i]] if pair else [])
    text_cols = ["sentence1", "sentence2"] if pair else ["sentence"]
    if task == "sst":
        z = outputs - outputs.max(-1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        pred = outputs.argmax(-1)
        wrong = np.flatnonzero(pred != gold)
        wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:top]
        rows = [[_fmt(probs[i, pred[i]]), str(pred[i]), str(int(gold[i])),
                 _fmt(probs[i, int(gold[i])]), ids[i], *text(i)] for i in wrong]
        tables = [Table("Most confident wrong predictions (classes 0 = very negative .. "
                        "4 = very positive)",
                        ["p(pred)", "pred", "gold", "p(gold)", "id", *text_cols], rows)]
        return TaskAnalysis(task, n, "accuracy", metrics.accuracy(pred, gold), tables)
    if task == "para":
        prob = 1.0 / (1.0 + np.exp(-outputs.astype(np.float64)))
        pred = (prob > 0.5).astype(np.int64)
        fp = np.flatnonzero((pred == 1) & (gold == 0))
        fp = fp[np.argsort(-prob[fp], kind="stable")][:top]
        fn = np.flatnonzero((pred == 0) & (gold == 1))
        fn = fn[np.argsort(prob[fn], kind="stable")][:top]
        cols = ["p(paraphrase)", "id", *text_cols]
        tables = [Table("False positives (gold 0, most confident first)", cols,
                        [[_fmt(prob[i]), ids[i], *text(i)] for i in fp]),
                  Table("False negatives (gold 1, most confident first)", cols,
                        [[_fmt(prob[i]), ids[i], *text(i)] for i in fn])]
        return TaskAnalysis(task, n, "accuracy", metrics.accuracy(pred, gold), tables)
    error = outputs.astype(np.float64) - gold
    over = np.argsort(-error, kind="stable")
    over = over[error[over] > 0][:top]
    under = np.argsort(error, kind="stable")
    under = under[error[under] < 0][:top]
    cols = ["pred", "gold", "pred - gold", "id", *text_cols]
    row = lambda i: [_fmt(outputs[i]), _fmt(gold[i]), f"{error[i]:+.3f}", ids[i], *text(i)]
    tables = [Table("Largest over-estimates (predicted more similar than gold)", cols,
                    [row(i) for i in over]),
              Table("Largest under-estimates (predicted less similar than gold)", cols,
                    [row(i) for i in under])]
    r = metrics.pearson(outputs, gold) if n >= 2 else float("nan")
    return TaskAnalysis(task, n, "Pearson r", r, tables)


def _cell(s: str) -> str:
    return " ".join(str(s).split()).replace("|", "\\|")


def to_markdown(analyses: list[TaskAnalysis], title: str) -> str:
    """The report as markdown: a section per task, a table per ranked list."""
    out = [f"# {title}", ""]
    for a in analyses:
        out += [f"## {TASK_TITLES[a.task]}", "",
                f"{a.n} dev examples; {a.score_name} {a.score:.4f}.", ""]
        for t in a.tables:
            out += [f"### {t.title}", ""]
            if not t.rows:
                out += ["(none)", ""]
                continue
            out.append("| " + " | ".join(t.columns) + " |")
            out.append("|" + "|".join("---" for _ in t.columns) + "|")
            out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in t.rows]
            out.append("")
    return "\n".join(out)


def analyze(model, tasks=data_lib.TASKS, data_dir=None, top: int = 10,
            limit: int | None = None) -> list[TaskAnalysis]:
    """Error analysis of a `MultitaskModel` on the dev files of `tasks`."""
    results = []
    for task in tasks:
        ids, sentences, gold = load_dev(task, data_dir, limit)
        outputs = model.raw_outputs(task, *sentences)
        results.append(analyze_task(task, ids, sentences, gold, outputs, top))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.analyze", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", metavar="CKPT", help="a run folder of `python -m train.multitask`")
    parser.add_argument("--which", choices=("best", "last"), default="best",
                        help="checkpoint of the run (default best)")
    parser.add_argument("--data-dir", default=None,
                        help="folder with the CS224N files (default data/, else ../shared/data)")
    parser.add_argument("--top", type=positive_int, default=10, help="examples per list (default 10)")
    parser.add_argument("--tasks", default="sst,para,sts",
                        help="comma-separated tasks (default sst,para,sts)")
    parser.add_argument("--limit", type=nonnegative_int, default=0,
                        help="first N dev examples per task (default 0: all)")
    parser.add_argument("--out", default=None, type=output_file, help="report file (default CKPT/analysis.md)")
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in data_lib.TASKS]
    if bad or not tasks:
        parser.error(f"--tasks: unknown {bad or 'empty'}; choose from sst, para, sts")
    from bert_jax.checkpoints import CheckpointError
    from bert_jax.predict import load_model
    try:
        model = load_model(args.ckpt, args.which)
        results = analyze(model, tasks, args.data_dir, args.top, args.limit or None)
    except (data_lib.DataError, CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    title = f"Error analysis: {args.ckpt}"
    if model.heads_trained:
        title += f" ({args.which} checkpoint)"
    else:
        title += " (untrained heads)"
    report = to_markdown(results, title)
    out = Path(args.out) if args.out else (
        Path(args.ckpt) / "analysis.md" if Path(args.ckpt).is_dir() else Path("analysis.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report + "\n")
    print(report)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
