"""Error analysis on dev: `python -m train.analyze RUN [--data-dir DIR] [--top 10] [--out FILE]`.

Per task the run defines (the built-ins and its own, from `train_config.json`), the model's
most confident mistakes with their sentences (one, or the pair, as the definition says):
- a classification task: wrong predictions with the highest probability on the predicted class
  (two classes: false positives, gold the first class, highest probability of the second, and
  false negatives), then per class its gold and predicted counts, precision, recall and F1,
  and the most frequent confusions (gold -> predicted);
- a regression task: the largest over-estimates (pred - gold) and under-estimates (gold -
  pred), then the error by gold score (five equal bins over the task's range).
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
from typing import Sequence

import numpy as np

from bert_jax import metrics
from bert_jax.checkpoints import newest_checkpoint, run_configs
from bert_jax.cli import add_data_dir, nonnegative_int, output_file, positive_int, prog
from bert_jax.cs224n import DataError, find_data_dir, load_split
from bert_jax.errors import BertJaxError
from bert_jax.evaluation import progress_bar
from bert_jax.inference import class_probabilities, predict_task, to_predictions
from bert_jax.outputs import OutputFile, check_output_file
from bert_jax.predict import load_model
from bert_jax.tasks import BUILTINS, Task, as_task, builtin_tasks
from train.analysis_tables import (Table, class_tables, error_bins, fmt,
                                   table_markdown)
from train.evaluate import DEV_OUTPUTS_FILE, SCORES_FILE, _sha256, closing_block

# An earlier report of this tool (replaced without --overwrite); RUN/analysis.md is its job.
REPORT = OutputFile("train.analyze --out", lambda head: head.startswith("# Error analysis: "),
                    allowed_in_run=("analysis.md",))
TASK_TITLES = {"sst": "SST-5 sentiment", "para": "Quora paraphrase", "sts": "STS similarity"}


def task_title(task: Task) -> str:
    """A task's section heading: the built-ins' names, `<name> (<kind>)` for any other."""
    return TASK_TITLES.get(task.name) or f"{task.name} ({task.kind})"


def dev_path(task: Task, data_dir=None) -> Path:
    """A task's dev file: a built-in's in the data folder, a user task's as its definition names
    it."""
    name = task.file("dev")
    if not name:
        raise DataError(f"task {task.name!r} has no dev file: give it one (dev = ...) in its "
                        "definition")
    return find_data_dir(data_dir) / name if task.name in BUILTINS else Path(name)


def _dev_files(data_dir, tasks: Sequence[Task]) -> list[Path]:
    """The dev files the analysis reads (a built-in's only with a data folder: that error comes
    with the reading)."""
    files = []
    for task in tasks:
        try:
            files.append(dev_path(task, data_dir))
        except BertJaxError:
            continue
    return files


@dataclasses.dataclass
class TaskAnalysis:
    task: str
    n: int
    score_name: str  # "accuracy" or "Pearson r"
    score: float
    tables: list[Table]
    source: str = "model"  # where the outputs came from: "model", or the file they were read from
    title: str = ""  # the section heading (`task_title`)
    score_key: str = ""  # `Task.score_name`: <task>_acc or <task>_r


def load_dev(task: Task | str, data_dir=None, limit: int | None = None):
    """(ids [n], sentence columns (1 or 2 lists of n, as the definition reads), gold labels
    [n]: class indices or scores) of `task`'s dev file, skipping bad rows; `limit`: the first
    N rows."""
    task = as_task(task)
    ds = load_split(dev_path(task, data_dir), task, skip_bad_rows=True)
    if limit and limit < len(ds):
        ds = ds.select(range(limit))
    cols = ["sentence1"] + (["sentence2"] if task.is_pair else [])
    return ds["id"], [ds[c] for c in cols], np.asarray(ds["label"])


def _classification(task: Task, ids, text, text_cols, gold, outputs, top) -> list[Table]:
    probs = class_probabilities(task, outputs)
    pred = to_predictions(task, outputs)
    value = lambda c: str(task.classes[int(c)])
    if len(task.classes) == 2:
        positive = "paraphrase" if task.name == "para" else value(1)
        prob = probs[:, 1]
        fp = np.flatnonzero((pred == 1) & (gold == 0))
        fp = fp[np.argsort(-prob[fp], kind="stable")][:top]
        fn = np.flatnonzero((pred == 0) & (gold == 1))
        fn = fn[np.argsort(prob[fn], kind="stable")][:top]
        cols = [f"p({positive})", "id", *text_cols]
        tables = [Table(f"False positives (gold {value(0)}, most confident first)", cols,
                        [[fmt(prob[i]), ids[i], *text(i)] for i in fp]),
                  Table(f"False negatives (gold {value(1)}, most confident first)", cols,
                        [[fmt(prob[i]), ids[i], *text(i)] for i in fn])]
    else:
        wrong = np.flatnonzero(pred != gold)
        wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:top]
        rows = [[fmt(probs[i, pred[i]]), value(pred[i]), value(gold[i]),
                 fmt(probs[i, int(gold[i])]), ids[i], *text(i)] for i in wrong]
        note = (" (classes 0 = very negative .. 4 = very positive)" if task.name == "sst"
                else "")
        tables = [Table("Most confident wrong predictions" + note,
                        ["p(pred)", "pred", "gold", "p(gold)", "id", *text_cols], rows)]
    return tables + class_tables(task, pred, gold, top)


def _regression(task: Task, ids, text, text_cols, gold, outputs, top) -> list[Table]:
    pred = outputs.astype(np.float64)
    error = pred - gold
    over = np.argsort(-error, kind="stable")
    over = over[error[over] > 0][:top]
    under = np.argsort(error, kind="stable")
    under = under[error[under] < 0][:top]
    cols = ["pred", "gold", "pred - gold", "id", *text_cols]
    row = lambda i: [fmt(outputs[i]), fmt(gold[i]), f"{error[i]:+.3f}", ids[i], *text(i)]
    more, less = (("more similar", "less similar") if task.name == "sts"
                  else ("higher", "lower"))
    return [Table(f"Largest over-estimates (predicted {more} than gold)", cols,
                  [row(i) for i in over]),
            Table(f"Largest under-estimates (predicted {less} than gold)", cols,
                  [row(i) for i in under]),
            error_bins(task, pred, gold.astype(np.float64))]


def analyze_task(task: Task | str, ids, sentences, gold, outputs, top: int = 10) -> TaskAnalysis:
    """Ranked mistakes and summary tables of one task (a definition, or a built-in's name) from
    raw head outputs (logits [n, K] for K > 2 classes, one logit [n] for two, scores [n]; SST
    [n, 5], paraphrase [n], STS [n]) and gold labels [n] (class indices or scores);
    `sentences`: one list of n, or two for a pair task."""
    task = as_task(task)
    gold, outputs = np.asarray(gold), np.asarray(outputs)
    n = len(gold)
    pair = len(sentences) == 2
    text = lambda i: [sentences[0][i]] + ([sentences[1][i]] if pair else [])
    text_cols = list(task.text) if len(task.text) == len(sentences) else (
        ["sentence1", "sentence2"] if pair else ["sentence"])
    if task.is_classification:
        gold = gold.astype(np.int64)
        tables = _classification(task, ids, text, text_cols, gold, outputs, top)
        score = metrics.accuracy(to_predictions(task, outputs), gold) if n else float("nan")
    else:
        tables = _regression(task, ids, text, text_cols, gold, outputs, top)
        score = metrics.pearson(outputs, gold) if n >= 2 else float("nan")
    return TaskAnalysis(task.name, n, "accuracy" if task.is_classification else "Pearson r",
                        score, tables, title=task_title(task), score_key=task.score_name)


def to_markdown(analyses: list[TaskAnalysis], title: str) -> str:
    """The report as markdown: a section per task, a table per ranked list."""
    out = [f"# {title}", ""]
    for a in analyses:
        out += [f"## {a.title or TASK_TITLES.get(a.task, a.task)}", "",
                f"{a.n} dev examples; {a.score_name} {a.score:.4f}.", ""]
        for t in a.tables:
            out += table_markdown(t)
    return "\n".join(out)


def saved_dev_outputs(run_dir: str | Path, which: str = "best", data_dir=None,
                      tasks: Sequence[Task] | None = None
                      ) -> tuple[dict[str, dict[str, np.ndarray]], Path] | None:
    """The raw dev outputs `python -m train.evaluate` wrote into `RUN/predictions`, when they
    belong to the checkpoint `load_run(run_dir, which)` loads (same `which`, same step) and the
    dev files have not changed since (sha256): ({task: {id: outputs}}, the .npz file); else None.
    `tasks`: the run's definitions (default the built-ins), which name each task's dev file.
    """
    run_dir, folder = Path(run_dir), Path(run_dir) / "predictions"
    defined = {t.name: t for t in (builtin_tasks() if tasks is None else tasks)}
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
        saved = {}
        with np.load(npz) as arrays:
            for task, info in (scores.get("dev_files") or {}).items():
                if task not in defined:
                    continue
                path = dev_path(defined[task], data_dir)
                if (task in arrays and f"{task}_ids" in arrays and path.is_file()
                        and info.get("sha256") == _sha256(path)):
                    ids = [str(i) for i in arrays[f"{task}_ids"]]
                    if len(set(ids)) == len(ids):
                        saved[task] = dict(zip(ids, arrays[task]))
    except (OSError, ValueError, KeyError, DataError):
        return None
    return (saved, npz) if saved else None


def _model_outputs(model, task: Task, sentences, progress: bool) -> np.ndarray:
    """`model.raw_outputs(task, *sentences)`, with a progress bar."""
    data = model.task_data(task.name, *sentences)
    if len(data) == 0:
        return model.outputs(task.name, data)
    bar = progress_bar(len(data), f"predict {task.name} dev", progress)
    try:
        return predict_task(model._predict, model.params, data, task, model.batch_size,
                            model.buckets, pad_id=model.tokenizer.pad_id, progress=bar)
    finally:
        bar.close()


def analyze(model, tasks: Sequence[Task | str] | None = None, data_dir=None, top: int = 10,
            limit: int | None = None, saved=None, progress: bool = False
            ) -> list[TaskAnalysis]:
    """Error analysis of a `MultitaskModel` on the dev files of `tasks` (definitions, or names
    of the model's tasks; default the three built-ins).

    saved: what `saved_dev_outputs` returns; a task whose every dev id it holds is analysed from
    those outputs. `model`: a `MultitaskModel`, or a function returning one, called only when
    some task needs the model (None when `saved` covers every task).
    """
    outputs_by_id, source = saved if saved else ({}, None)
    known_tasks = getattr(model, "tasks", None)
    specs = [as_task(t, known_tasks if isinstance(known_tasks, tuple) else None)
             for t in (tasks if tasks is not None else builtin_tasks())]
    results = []
    for task in specs:
        ids, sentences, gold = load_dev(task, data_dir, limit)
        known = outputs_by_id.get(task.name, {})
        if ids and all(i in known for i in ids):
            outputs, origin = np.stack([known[i] for i in ids]), str(source)
        else:
            if callable(model) and not hasattr(model, "raw_outputs"):
                model = model()
            if model is None:
                raise ValueError(f"{task.name}: no saved dev outputs for these rows and no model")
            outputs, origin = _model_outputs(model, task, sentences, progress), "model"
        result = analyze_task(task, ids, sentences, gold, outputs, top)
        result.source = origin
        results.append(result)
    return results


def run_tasks(ckpt: str) -> tuple[Task, ...] | None:
    """The task definitions of a run folder (train_config.json), None for anything else."""
    path = Path(ckpt)
    return run_configs(path)[1].tasks if (path / "train_config.json").is_file() else None


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
    parser.add_argument("--tasks", default=None,
                        help="comma-separated tasks to analyse, from the run's: sst, para, sts "
                             "and its own (default every task the run defines)")
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
    names = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    if args.tasks is not None and not names:
        parser.error("--tasks: empty; name tasks of the run, e.g. sst,para,sts")
    out = Path(args.out) if args.out else (
        Path(args.ckpt) / "analysis.md" if Path(args.ckpt).is_dir() else Path("analysis.md"))
    loaded = []

    def model():
        if not loaded:
            loaded.append(load_model(args.ckpt, args.which))
        return loaded[-1]
    try:
        defined = run_tasks(args.ckpt)  # None: not a run (a model name, folder or export)
        check_output_file(out, REPORT, overwrite=args.overwrite,
                          protected=_dev_files(args.data_dir, defined or builtin_tasks()))
        saved = saved_dev_outputs(args.ckpt, args.which, args.data_dir, defined)
        defined = defined or model().tasks
        by_name = {t.name: t for t in defined}
        bad = [n for n in names if n not in by_name]
        if bad:
            parser.error(f"--tasks: unknown {', '.join(bad)}; choose from "
                         f"{', '.join(by_name)}")
        tasks = [by_name[n] for n in names] if names else list(defined)
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
    print(closing_block([out], {r.score_key: r.score for r in results}, "dev scores"),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
