"""Error analysis on dev: `python -m train.analyze RUN [--data-dir DIR] [--top 10] [--out FILE]`.

Per task, the model's most confident mistakes with their sentences and scores:
- SST-5: wrong predictions with the highest probability on the predicted class;
- paraphrase: false positives (gold 0, highest probability) and false negatives (gold 1, lowest);
- STS: the largest over-estimates (pred - gold) and under-estimates (gold - pred).
Prints a markdown report and writes it to --out (default RUN/analysis.md): a new file or an
earlier report of this tool (another file only with --overwrite; never a file it reads, nor one
inside a run or data folder but RUN/analysis.md).

When `python -m train.evaluate RUN` has scored the same checkpoint (same --which, same step) on
the same dev files, its `RUN/predictions/dev-outputs.npz` is read and the model is not run;
otherwise the model predicts the dev sets (with a progress bar).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from bert_jax import metrics
from bert_jax.checkpoints import newest_checkpoint
from bert_jax.cli import add_data_dir, nonnegative_int, output_file, positive_int, prog
from bert_jax.cs224n import (TASKS, DataError, default_file, find_data_dir, is_pair_task,
                             load_split)
from bert_jax.errors import BertJaxError
from bert_jax.evaluation import progress_bar
from bert_jax.inference import predict_task
from bert_jax.outputs import OutputFile, check_output_file
from bert_jax.predict import load_model
from train.evaluate import DEV_OUTPUTS_FILE, SCORES_FILE, _sha256, closing_block

# An earlier report of this tool (replaced without --overwrite); RUN/analysis.md is its job.
REPORT = OutputFile("train.analyze --out", lambda head: head.startswith("# Error analysis: "),
                    allowed_in_run=("analysis.md",))


def _dev_files(data_dir) -> list[Path]:
    """The dev files the analysis reads (none when there is no data folder: that error comes
    with the reading)."""
    try:
        base = find_data_dir(data_dir)
    except BertJaxError:
        return []
    return [base / default_file(t, "dev") for t in TASKS]


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
    source: str = "model"  # where the outputs came from: "model", or the file they were read from


def load_dev(task: str, data_dir=None, limit: int | None = None):
    """(ids [n], sentence columns (1 or 2 lists of n), gold labels [n]) of `task`'s dev file,
    skipping bad rows; `limit`: the first N rows."""
    path = find_data_dir(data_dir) / default_file(task, "dev")
    ds = load_split(path, task, skip_bad_rows=True)
    if limit and limit < len(ds):
        ds = ds.select(range(limit))
    cols = ["sentence1"] + (["sentence2"] if is_pair_task(task) else [])
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


def saved_dev_outputs(run_dir: str | Path, which: str = "best", data_dir=None
                      ) -> tuple[dict[str, dict[str, np.ndarray]], Path] | None:
    """The raw dev outputs `python -m train.evaluate` wrote into `RUN/predictions`, when they
    belong to the checkpoint `load_run(run_dir, which)` loads (same `which`, same step) and the
    dev files have not changed since (sha256): ({task: {id: outputs}}, the .npz file); else None.
    """
    run_dir, folder = Path(run_dir), Path(run_dir) / "predictions"
    try:
        scores = json.loads((folder / SCORES_FILE).read_text())
        resolved, step = newest_checkpoint(run_dir, which)
    except (OSError, ValueError, DataError):
        return None
    npz = folder / str(scores.get("dev_outputs") or DEV_OUTPUTS_FILE)
    if (step is None or scores.get("which") != resolved or scores.get("checkpoint_step") != step
            or not npz.is_file()):
        return None
    try:
        base = find_data_dir(data_dir)
        saved = {}
        with np.load(npz) as arrays:
            for task, info in (scores.get("dev_files") or {}).items():
                path = base / default_file(task, "dev")
                if (task in arrays and f"{task}_ids" in arrays and path.is_file()
                        and info.get("sha256") == _sha256(path)):
                    ids = [str(i) for i in arrays[f"{task}_ids"]]
                    if len(set(ids)) == len(ids):
                        saved[task] = dict(zip(ids, arrays[task]))
    except (OSError, ValueError, KeyError, DataError):
        return None
    return (saved, npz) if saved else None


def _model_outputs(model, task: str, sentences, progress: bool) -> np.ndarray:
    """`model.raw_outputs(task, *sentences)`, with a progress bar."""
    data = model.task_data(task, *sentences)
    if len(data) == 0:
        return model.outputs(task, data)
    bar = progress_bar(len(data), f"predict {task} dev", progress)
    try:
        return predict_task(model._predict, model.params, data, task, model.batch_size,
                            model.buckets, pad_id=model.tokenizer.pad_id, progress=bar)
    finally:
        bar.close()


def analyze(model, tasks=TASKS, data_dir=None, top: int = 10,
            limit: int | None = None, saved=None, progress: bool = False
            ) -> list[TaskAnalysis]:
    """Error analysis of a `MultitaskModel` on the dev files of `tasks`.

    saved: what `saved_dev_outputs` returns; a task whose every dev id it holds is analysed from
    those outputs. `model`: a `MultitaskModel`, or a function returning one, called only when
    some task needs the model (None when `saved` covers every task).
    """
    outputs_by_id, source = saved if saved else ({}, None)
    results = []
    for task in tasks:
        ids, sentences, gold = load_dev(task, data_dir, limit)
        known = outputs_by_id.get(task, {})
        if ids and all(i in known for i in ids):
            outputs, origin = np.stack([known[i] for i in ids]), str(source)
        else:
            if callable(model) and not hasattr(model, "raw_outputs"):
                model = model()
            if model is None:
                raise ValueError(f"{task}: no saved dev outputs for these rows and no model")
            outputs, origin = _model_outputs(model, task, sentences, progress), "model"
        result = analyze_task(task, ids, sentences, gold, outputs, top)
        result.source = origin
        results.append(result)
    return results


SCORE_KEYS = {"sst": "sst_acc", "para": "para_acc", "sts": "sts_r"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog("train.analyze"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", metavar="RUN",
                        help="a run folder of `python -m train.multitask` (or a model name or "
                             "folder, whose heads are untrained)")
    parser.add_argument("--which", choices=("best", "last"), default="best",
                        help="which checkpoint of the run to analyse: best dev score, or the "
                             "newest (default best)")
    add_data_dir(parser)
    parser.add_argument("--top", type=positive_int, default=10,
                        help="how many examples each ranked list shows (default 10)")
    parser.add_argument("--tasks", default="sst,para,sts",
                        help="comma-separated tasks to analyse, from sst, para, sts (default all)")
    parser.add_argument("--limit", type=nonnegative_int, default=0,
                        help="analyse only the first N dev rows per task (default 0: all rows)")
    parser.add_argument("--out", default=None, type=output_file, metavar="FILE",
                        help="where to write the markdown report (default RUN/analysis.md): a "
                             "new file or an earlier report of this tool")
    parser.add_argument("--overwrite", action="store_true",
                        help="let --out replace a file this tool did not write (never one "
                             "inside a run or data folder, nor a file it reads)")
    parser.add_argument("--no-progress", action="store_true",
                        help="print no progress while the model predicts (by default a bar on "
                             "a terminal, two plain lines otherwise)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        parser.error(f"--tasks: unknown {bad or 'empty'}; choose from sst, para, sts")
    out = Path(args.out) if args.out else (
        Path(args.ckpt) / "analysis.md" if Path(args.ckpt).is_dir() else Path("analysis.md"))
    try:
        check_output_file(out, REPORT, overwrite=args.overwrite,
                          protected=_dev_files(args.data_dir))
    except BertJaxError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    loaded = []

    def model():
        loaded.append(load_model(args.ckpt, args.which))
        return loaded[-1]
    try:
        saved = saved_dev_outputs(args.ckpt, args.which, args.data_dir)
        results = analyze(model, tasks, args.data_dir, args.top, args.limit or None, saved,
                          progress=not args.no_progress)
    except BertJaxError as err:  # DataError, CheckpointError, MissingFileError
        print(f"error: {err}", file=sys.stderr)
        return 2
    title = f"Error analysis: {args.ckpt}"
    if loaded and not loaded[-1].heads_trained:
        title += " (untrained heads)"
    else:
        title += f" ({args.which} checkpoint)"
    report = to_markdown(results, title)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report + "\n")
    print(report)
    reused = sorted({r.source for r in results if r.source != "model"})
    if reused:
        print(f"dev outputs of {', '.join(r.task for r in results if r.source != 'model')} read "
              f"from {', '.join(reused)} (written by train.evaluate for this checkpoint): the "
              "model was not run for them", file=sys.stderr)
    print(closing_block([out], {SCORE_KEYS[r.task]: r.score for r in results}, "dev scores"),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
