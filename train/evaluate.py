"""Dev scores, CS224N prediction files and plots of a run's checkpoint.

`python -m train.evaluate RUN [--out DIR]` writes into DIR (default RUN/predictions), for every
task the run defines (the built-ins, read from the data folder, and the run's own tasks, read
from the files their definitions name):
- `<task>-dev-output.csv` and, for a task with a test file, `<task>-test-output.csv` (the
  built-ins: `sst-`, `para-`, `sts-`, from the test-student files; there is no Quora test file)
  in the CS224N format: a header `id,Predicted_...` (the built-ins' CS224N column names, a
  user task's `Predicted_<label column>`), then `id , value` rows holding the label values
  (`3`, `ENTAILMENT`) or scores (`%.6f`), one row per id of the input file: a bad row of a dev
  file (no label, no sentence, ...) is left
  out of its prediction file and of the scores, and a line says which (ids and lines also in
  `scores.json`, `left_out`); a bad row of a test file (the file you submit) stops the
  evaluation before anything is written;
- `scores.json`: the dev scores (`<task>_acc` or `<task>_r` per task, and `overall` over every
  task: the mean of the accuracies and of (r + 1) / 2), the checkpoint (`which`,
  `checkpoint_step`) and the dev files read (path and sha256);
- `dev-outputs.npz`: the raw dev outputs per task (`<task>`: logits [n, K] for K > 2 classes,
  one logit [n] for two, scores [n]) with their ids (`<task>_ids`), which
  `python -m train.analyze` reads instead of running the model again;
- a plot per task of its dev predictions against gold (`bert_jax.plots.write_eval_plots`:
  the built-ins' `sst_confusion.png`, `para_histograms.png`, `sts_scatter.png`, a user
  task's `<task>_confusion.png` or `<task>_scatter.png`).
It ends by printing the rounded scores and the path of every file written. DIR must be new,
empty, an earlier evaluation's folder or RUN/predictions: any other folder is refused.

`python -m train.evaluate RUN1 RUN2 ... --out DIR [--combine ensemble|soup]` writes the same
files for several runs predicting as one (train/ensemble.py): an ensemble (averaged
probabilities and scores; the default) or a soup (averaged weights); the runs must define the
same tasks. `scores.json` then names every run and checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bert_jax import metrics
from bert_jax.checkpoints import RunFiles, load_run, read_json
from bert_jax.cli import add_data_dir, nonnegative_int, output_dir, positive_int, prog
from bert_jax.cs224n import DataError, find_data_dir, load_split_with_report, read_id_lines
from bert_jax.errors import BertJaxError
from bert_jax.evaluation import Evaluator
from bert_jax.heads import MultitaskBert
from bert_jax.inference import class_values, to_predictions
from bert_jax.outputs import check_output_folder, check_writable_folder
from bert_jax.plots import write_eval_plots
from bert_jax.task_data import label_dtype, task_data
from bert_jax.tasks import BUILTINS, Task
from bert_jax.token_cache import tokenize_split
from bert_jax.tokenizer import Tokenizer
from train.ensemble import (COMBINE_METHODS, CombineError, check_same_tasks, combine_outputs,
                            uniform_soup)
from train.sharding import make_mesh

SCORES_FILE, DEV_OUTPUTS_FILE = "scores.json", "dev-outputs.npz"


def closing_block(paths, scores: dict | None = None, heading: str = "scores") -> str:
    """What a command-line tool prints last: its scores rounded to 3 decimals (the numbers
    among `scores`) and the path of every file or folder it wrote, one per line; a folder (one
    on disk) ends in `/` and is counted as a folder: `wrote 3 files and 2 folders:`."""
    lines = []
    numbers = {k: v for k, v in (scores or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numbers:
        lines.append(f"{heading}: " + ", ".join(f"{k} {v:.3f}" for k, v in numbers.items()))
    folders = [Path(p).is_dir() for p in paths]
    counts = [f"{n} {what}{'s' if n != 1 else ''}" for n, what in
              ((folders.count(False), "file"), (folders.count(True), "folder")) if n]
    lines.append(f"wrote {' and '.join(counts)}:" if counts else "wrote no files")
    lines += [f"  {p}{'/' if folder else ''}" for p, folder in zip(paths, folders)]
    return "\n".join(lines)


def resource_hint(err: BaseException) -> str | None:
    """A readable message for device out-of-memory errors (None for anything else)."""
    text = str(err)
    if "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text:
        first = text.strip().splitlines()[0][:300]
        return (f"the device ran out of memory ({first}). Use a smaller --batch-size or "
                "--eval-batch-size, a smaller --max-length, or --dtype bfloat16; on GPU see the "
                "README's note on XLA_PYTHON_CLIENT_PREALLOCATE / XLA_PYTHON_CLIENT_MEM_FRACTION")
    return None


def output_column(task: Task) -> str:
    """The prediction file's column: the task's `column_names[0]` (the built-ins' CS224N names:
    `Predicted_Sentiment`, `Predicted_Is_Paraphrase`, `Predicted_Similarity`), else
    `Predicted_<label column>`."""
    return task.column_names[0] if task.column_names else f"Predicted_{task.label}"


def write_predictions(path: Path, task: Task, ids: list[str], predictions: np.ndarray) -> None:
    """A CS224N prediction file: header `id,<output_column>`, then `id , value` rows, a value
    being the predicted label value of a classification task as its files write it (`3`,
    `ENTAILMENT`; `predictions`: [n] class indices) or a score with 6 decimals (`predictions`:
    [n] scores)."""
    values = class_values(task, predictions)
    with path.open("w") as f:
        f.write(f"id,{output_column(task)} \n")
        for i, v in zip(ids, values):
            value = str(v) if task.is_classification else f"{float(v):.6f}"
            f.write(f"{i} , {value} \n")


@dataclasses.dataclass
class SplitRows:
    """One CS224N file read once for an evaluation: its valid rows (`ds`, validated as the
    split is: dev rows need a label, test rows do not) and the bad rows left out, as
    (line, id) pairs. The prediction file holds exactly the valid rows' ids."""
    path: Path
    task: Task
    split: str
    ds: Any
    left_out: list[tuple[int, str]]

    @property
    def output_name(self) -> str:
        return f"{self.task.name}-{self.split}-output.csv"

    def describe(self) -> str:
        """The one line that says what the prediction file holds and which rows it lacks."""
        n, bad = len(self.ds), len(self.left_out)
        if not bad:
            return f"{self.output_name}: {n:,} rows, no bad row left out"
        shown = ", ".join(f"line {line} (id {ex_id or '(empty)'})"
                          for line, ex_id in self.left_out[:10])
        return (f"{self.output_name}: {n:,} rows; {bad} bad row{'s' if bad > 1 else ''} of "
                f"{self.path.name} left out of it and of the scores: {shown}"
                + (", ..." if bad > 10 else "") + f" (listed in {SCORES_FILE})")


def read_split(path: Path, task: Task, split: str, limit: int = 0) -> SplitRows:
    """`path` read once: its valid rows (the first `limit`, 0: all) and the bad rows left out
    (within those lines). A bad row in a test file is refused: a test prediction file is what
    is submitted and must hold every id of its input."""
    ds, skipped = load_split_with_report(path, task, labeled=split != "test",
                                         skip_bad_rows=True)
    last = float("inf")  # with `limit`: the bad rows among the lines read
    if limit and limit < len(ds):
        ds = ds.select(range(limit))
        last = ds[len(ds) - 1]["line"]
    bad_lines = {line for line, _ in skipped if line <= last}
    left_out = [(line, ex_id) for line, ex_id in read_id_lines(path, task)
                if line in bad_lines]
    if left_out and split == "test":
        raise DataError(
            f"{path}: {len(left_out)} bad row{'s' if len(left_out) > 1 else ''} (line"
            f"{'s' if len(left_out) > 1 else ''} {', '.join(str(l) for l, _ in left_out[:10])}"
            f"{', ...' if len(left_out) > 10 else ''}; see the warning above for why): a test "
            "prediction file is what you submit and must hold every id of its input. Fix "
            "those rows (nothing was written)")
    return SplitRows(path, task, split, ds, left_out)


def read_splits(tasks: tuple[Task, ...], data_dir: str | None, limit: int) -> list[SplitRows]:
    """The dev and test files of every task, each read once (`read_split`): a built-in's from
    the data folder (a file missing there is skipped), a user task's from its definition."""
    base = find_data_dir(data_dir)
    splits = []
    for task in tasks:
        for split in ("dev", "test"):
            name = task.file(split)
            if not name:
                continue
            if task.name in BUILTINS:
                path = base / name
                if not path.exists():
                    continue
            else:
                path = Path(name)
            splits.append(read_split(path, task, split, limit))
    return splits


def _predict_split(member: "Member", rows: SplitRows, progress: bool, desc: str) -> np.ndarray:
    """Raw outputs of `member` for every valid row of `rows`, tokenized with its vocabulary and
    as its own definition of the task encodes it (a pair alone or cross-encoded)."""
    spec = member.run.heads.task(rows.task.name)
    cross = {"cross": True} if spec.encoding == "cross" else {}
    tok = tokenize_split(rows.ds, member.tokenizer, member.max_length, **cross)
    return member.evaluator.outputs(member.run.params, task_data(tok, spec), spec.name,
                                    progress, desc)


def _looks_like_evaluate_output(folder: Path) -> bool:
    """A folder holding an earlier evaluation: its scores.json or a CS224N prediction file."""
    scores = folder / SCORES_FILE
    if scores.is_file() and '"dev_files"' in scores.read_text(errors="replace"):
        return True
    for path in folder.glob("*-output.csv"):
        with path.open(errors="replace") as f:
            if f.readline().startswith("id,Predicted_"):
                return True
    return False


def check_out_folder(out_dir: Path) -> None:
    """Refuse an --out that is not new, empty, an earlier evaluation, or RUN/predictions."""
    check_output_folder(out_dir, "train.evaluate --out", recognise=_looks_like_evaluate_output,
                        allowed_in_run=("predictions",))
    check_writable_folder(out_dir, "--out")


@dataclasses.dataclass
class Member:
    """One model of an evaluation: a run's checkpoint (or a soup of several) ready to predict."""
    run: RunFiles
    evaluator: Evaluator
    tokenizer: Tokenizer
    max_length: int


def _members(runs: list[RunFiles], combine: str, batch_size: int
             ) -> tuple[list[Member], list[dict]]:
    """(the models to run: one per run for an ensemble, one averaged model for a soup;
    {run, which, checkpoint_step} of every run read)."""
    sources = [{"run": str(r.run_dir), "which": r.which, "checkpoint_step": r.meta.get("step")}
               for r in runs]
    max_lengths = [int(read_json(r.run_dir / "train_config.json")["max_length"]) for r in runs]
    if combine == "soup" and len(runs) > 1:
        first = runs[0]
        for run, length in zip(runs[1:], max_lengths[1:]):
            same = (run.bert_config == first.bert_config and run.heads == first.heads
                    and run.vocab_file.read_bytes() == first.vocab_file.read_bytes()
                    and length == max_lengths[0])
            if not same:
                raise CombineError(
                    f"{run.run_dir}: its model config, heads, vocabulary or --max-length differ "
                    f"from {first.run_dir}'s; a soup needs runs of one configuration (use "
                    "--combine ensemble)")
        params = uniform_soup([r.params for r in runs], [str(r.run_dir) for r in runs])
        runs, max_lengths = [dataclasses.replace(first, params=params)], max_lengths[:1]
    mesh = make_mesh()
    return [Member(r, Evaluator(MultitaskBert(r.bert_config, r.heads), mesh, batch_size),
                   Tokenizer(r.vocab_file), length)
            for r, length in zip(runs, max_lengths)], sources


def evaluate_run(run_dir, out_dir: str | Path, data_dir: str | None = None,
                 which: str = "best", batch_size: int = 64, limit: int = 0,
                 progress: bool = True, combine: str = "ensemble") -> dict:
    """Dev scores of a run's checkpoint, and dev/test prediction files in `out_dir` holding
    every id of their input file but its bad rows (`read_split`); see the module docstring for
    every file written. `run_dir` may be a list of runs, combined as `combine` says
    (`train.ensemble`). Returns what `scores.json` holds."""
    run_dirs = [run_dir] if isinstance(run_dir, (str, Path)) else list(run_dir)
    return _evaluate(run_dirs, out_dir, data_dir, which, batch_size, limit, progress,
                     combine)[0]


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _evaluate(run_dirs, out_dir, data_dir, which, batch_size, limit, progress,
              combine="ensemble") -> tuple[dict, list[Path]]:
    """(what scores.json holds, the paths written)."""
    out_dir = Path(out_dir)
    check_out_folder(out_dir)
    runs = [load_run(r, which) for r in run_dirs]
    check_same_tasks([r.heads.tasks for r in runs], [str(r.run_dir) for r in runs])
    tasks = runs[0].heads.tasks
    splits = read_splits(tasks, data_dir, limit)  # every file read once, before any output
    members, sources = _members(runs, combine, batch_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Written last: a scores.json is never beside the outputs of another (unfinished) evaluation.
    (out_dir / SCORES_FILE).unlink(missing_ok=True)
    first = members[0]
    dev_outputs, dev_predictions, gold, dev_files, written = {}, {}, {}, {}, []
    dev_ids, left_out = {}, {}
    for rows in splits:
        spec, task = rows.task, rows.task.name
        outputs = [_predict_split(m, rows, progress, f"eval {task} {rows.path.name}"
                                  + (f" [{k + 1}/{len(members)}]" if len(members) > 1 else ""))
                   for k, m in enumerate(members)]
        outputs = combine_outputs(spec, outputs) if len(outputs) > 1 else outputs[0]
        path = out_dir / rows.output_name
        write_predictions(path, spec, list(rows.ds["id"]), to_predictions(spec, outputs))
        written.append(path)
        if rows.left_out:
            print(rows.describe(), file=sys.stderr)
            left_out[rows.output_name] = [{"line": line, "id": ex_id}
                                          for line, ex_id in rows.left_out]
        if rows.split == "dev":
            gold[task] = np.asarray(list(rows.ds["label"]), label_dtype(spec))
            dev_ids[task] = list(rows.ds["id"])
            dev_outputs[task] = outputs
            dev_predictions[task] = to_predictions(spec, outputs)
            dev_files[task] = {"path": str(rows.path.resolve()), "sha256": _sha256(rows.path)}
    scores = metrics.dev_scores(dev_predictions, gold, tasks)
    written += write_eval_plots(out_dir, dev_outputs, gold, tasks)
    if dev_outputs:
        np.savez(out_dir / DEV_OUTPUTS_FILE, **{
            **dev_outputs, **{f"{t}_ids": np.asarray(dev_ids[t], dtype=str)
                              for t in dev_outputs}})
        written.append(out_dir / DEV_OUTPUTS_FILE)
    single = len(run_dirs) == 1
    scores.update(checkpoint_step=first.run.meta.get("step") if single else None,
                  which=first.run.which, limit=limit, max_length=first.max_length,
                  dev_files=dev_files, dev_outputs=DEV_OUTPUTS_FILE if dev_outputs else None,
                  left_out=left_out)
    if not single:
        scores.update(combine=combine, runs=sources)
    (out_dir / SCORES_FILE).write_text(json.dumps(scores, indent=2) + "\n")
    written.append(out_dir / SCORES_FILE)
    return scores, written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog("train.evaluate"), description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", metavar="RUN", nargs="+",
                        help="a run folder written by `python -m train.multitask` (its --out); "
                             "several runs are combined as --combine says")
    parser.add_argument("--out", default=None, type=output_dir, metavar="DIR",
                        help="folder for the prediction files, scores and plots (default "
                             "RUN/predictions, where `train.analyze` finds them; required with "
                             "several runs)")
    parser.add_argument("--combine", choices=COMBINE_METHODS, default="ensemble",
                        help="how several runs predict as one: `ensemble` averages their class "
                             "probabilities and similarity scores (a forward pass per run), "
                             "`soup` averages their weights into one model (runs of one "
                             "configuration only); see train/ensemble.py (default ensemble)")
    parser.add_argument("--which", choices=("best", "last"), default="best",
                        help="which checkpoint of the run to score: best dev score, or the "
                             "newest (default best)")
    add_data_dir(parser)
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="sentences (or pairs) per forward pass (default 64)")
    parser.add_argument("--limit", type=nonnegative_int, default=0,
                        help="predict only the first N rows of each file (default 0: all rows)")
    parser.add_argument("--no-progress", action="store_true",
                        help="print no progress at all (by default a bar on a terminal, two "
                             "plain lines per file otherwise)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.run_dirs) > 1 and not args.out:
        parser.error(f"{len(args.run_dirs)} runs are combined into new predictions: name their "
                     "folder with --out DIR")
    out = Path(args.out) if args.out else Path(args.run_dirs[0]) / "predictions"
    try:
        scores, written = _evaluate(args.run_dirs, out, args.data_dir, args.which,
                                    args.batch_size, args.limit, not args.no_progress,
                                    args.combine)
    except BertJaxError as err:  # DataError, CheckpointError, CombineError, MissingFileError
        print(f"error: {err}", file=sys.stderr)
        return 2
    if "runs" in scores:
        heading = (f"dev scores ({scores['combine']} of {len(scores['runs'])} runs, "
                   f"{scores['which']} checkpoints)")
    else:
        heading = f"dev scores ({scores['which']} checkpoint, step {scores['checkpoint_step']})"
    print(closing_block(written, {k: v for k, v in scores.items()
                                  if k.endswith(("_acc", "_r")) or k == "overall"}, heading))
    return 0


if __name__ == "__main__":
    sys.exit(main())
