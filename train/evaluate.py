"""Dev scores, CS224N prediction files and plots of a run's checkpoint.

`python -m train.evaluate RUN [--out DIR]` writes into DIR (default RUN/predictions):
- `sst-dev-output.csv`, `para-dev-output.csv`, `sts-dev-output.csv` and the `-test-` files (from
  the test-student files; there is no Quora test file) in the CS224N format (`id,Predicted_...`),
  one row per id of the input file;
- `scores.json`: the dev scores, the checkpoint (`which`, `checkpoint_step`) and the dev files
  read (path and sha256);
- `dev-outputs.npz`: the raw dev outputs per task (SST logits, paraphrase logits, STS scores)
  with their ids, which `python -m train.analyze` reads instead of running the model again;
- `sst_confusion.png`, `para_histograms.png`, `sts_scatter.png`: dev predictions against gold.
It ends by printing the rounded scores and the path of every file written.

`python -m train.evaluate RUN1 RUN2 ... --out DIR [--combine ensemble|soup]` writes the same
files for several runs predicting as one (train/ensemble.py): an ensemble (averaged
probabilities and scores; the default) or a soup (averaged weights); `scores.json` then names
every run and checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from bert_jax import data as data_lib
from bert_jax import metrics
from bert_jax.cli import add_data_dir, nonnegative_int, output_dir, positive_int, prog
from bert_jax.errors import BertJaxError
from bert_jax.checkpoints import RunFiles, load_run, read_json
from bert_jax.heads import MultitaskBert
from bert_jax.inference import predict_task, to_predictions
from bert_jax.plots import write_eval_plots
from bert_jax.token_cache import live_progress
from bert_jax.tokenizer import Tokenizer
from train.ensemble import COMBINE_METHODS, CombineError, combine_outputs, uniform_soup
from train.step import DATA_AXIS, make_mesh, make_predict_step

SCORE_KEYS = ("sst_acc", "para_acc", "sts_r", "overall")
SCORES_FILE, DEV_OUTPUTS_FILE = "scores.json", "dev-outputs.npz"


def closing_block(paths, scores: dict | None = None, heading: str = "scores") -> str:
    """What a command-line tool prints last: its scores rounded to 3 decimals (the numbers
    among `scores`) and the path of every file or folder it wrote, one per line."""
    lines = []
    numbers = {k: v for k, v in (scores or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numbers:
        lines.append(f"{heading}: " + ", ".join(f"{k} {v:.3f}" for k, v in numbers.items()))
    paths = [str(p) for p in paths]
    lines.append(f"wrote {len(paths)} file{'s' if len(paths) != 1 else ''}:" if paths
                 else "wrote no files")
    lines += [f"  {p}" for p in paths]
    return "\n".join(lines)


class PlainProgress:
    """Stands in for a tqdm bar where a bar cannot draw in place (a log file, a pipe): a line
    when the work starts and one when it ends, on stderr."""

    def __init__(self, total: int, desc: str, unit: str = "ex"):
        self.total, self.desc = total, desc
        self.unit = {"ex": "examples"}.get(unit, unit)
        self.started = time.perf_counter()
        print(f"{desc}: {total:,} {self.unit} ...", file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        if self.started is not None:
            seconds = time.perf_counter() - self.started
            print(f"{self.desc}: {self.total:,} {self.unit} in {seconds:.1f} s", file=sys.stderr,
                  flush=True)
            self.started = None


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "ex"):
    """A tqdm bar where one draws in place (a terminal, a notebook: `live_progress`), else a
    `PlainProgress` (two plain lines); a disabled bar when not `enabled`."""
    if enabled and not live_progress():
        return PlainProgress(total, desc, unit)
    return tqdm(total=total, desc=desc, leave=False, disable=not enabled, unit=unit,
                dynamic_ncols=True)


TASK_COLUMNS = {"sst": "Predicted_Sentiment", "para": "Predicted_Is_Paraphrase",
                "sts": "Predicted_Similarity"}
TASK_FILE_PREFIX = {"sst": "sst", "para": "para", "sts": "sts"}


def resource_hint(err: BaseException) -> str | None:
    """A readable message for device out-of-memory errors (None for anything else)."""
    text = str(err)
    if "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text:
        first = text.strip().splitlines()[0][:300]
        return (f"the device ran out of memory ({first}). Use a smaller --batch-size or "
                "--eval-batch-size, a smaller --max-length, or --dtype bfloat16; on GPU see the "
                "README's note on XLA_PYTHON_CLIENT_PREALLOCATE / XLA_PYTHON_CLIENT_MEM_FRACTION")
    return None


class Evaluator:
    """Batched dev/test prediction for a `MultitaskBert` over a mesh (batch split on "data").

    Plans its own padded lengths from the lengths of each split it is given (at most
    `num_buckets` per split, the last covering the split's longest example), so a dev or test
    sentence longer than every training sentence still has a shape. The plan depends only on
    the lengths, so evaluating the same split again compiles nothing new; `planned` holds the
    last plan of each task (for run summaries).
    """

    def __init__(self, model: MultitaskBert, mesh, batch_size: int = 64, num_buckets: int = 4):
        self.predict = make_predict_step(model)
        self.sharding = NamedSharding(mesh, P(DATA_AXIS))
        self.batch_size, self.num_buckets = batch_size, num_buckets
        self.planned: dict[str, tuple[int, ...]] = {}

    def buckets_for(self, data: data_lib.TaskData) -> tuple[int, ...]:
        """At most `num_buckets` padded lengths (multiples of 8) covering every example of `data`."""
        top = -(-int(data.lengths.max()) // 8) * 8
        self.planned[data.task] = data_lib.choose_buckets(data.lengths, top, self.num_buckets)
        return self.planned[data.task]

    def outputs(self, params, data: data_lib.TaskData, task: str, progress: bool = False,
                desc: str | None = None):
        """Raw head outputs for every example of `data` (see `predict_task`); `progress`: a bar
        named `desc` (default "eval TASK"), or, written to a file, a line at the start and one
        at the end."""
        bar = progress_bar(len(data), desc or f"eval {task}", progress)
        try:
            return predict_task(self.predict, params, data, task, self.batch_size,
                                self.buckets_for(data),
                                place=lambda b: jax.device_put(b, self.sharding), progress=bar)
        finally:
            bar.close()

    def predictions(self, params, splits: dict[str, data_lib.TaskData], progress: bool = False):
        return {t: to_predictions(t, self.outputs(params, d, t, progress))
                for t, d in splits.items()}

    def scores(self, params, dev: dict[str, data_lib.TaskData], progress: bool = False) -> dict:
        """SST accuracy, paraphrase accuracy, STS Pearson r, overall (for the tasks given)."""
        return score_predictions(self.predictions(params, dev, progress), dev)


def score_predictions(predictions: dict[str, np.ndarray], gold: dict[str, data_lib.TaskData]) -> dict:
    scores = {}
    if "sst" in predictions:
        scores["sst_acc"] = metrics.accuracy(predictions["sst"], gold["sst"].labels)
    if "para" in predictions:
        scores["para_acc"] = metrics.accuracy(predictions["para"], gold["para"].labels)
    if "sts" in predictions:
        scores["sts_r"] = metrics.pearson(predictions["sts"], gold["sts"].labels)
    if len(scores) == 3:
        scores["overall"] = metrics.overall_score(scores["sst_acc"], scores["para_acc"],
                                                  scores["sts_r"])
    return {k: float(v) for k, v in scores.items()}


def write_predictions(path: Path, task: str, ids: list[str], predictions: np.ndarray) -> None:
    """A CS224N prediction file: header `id,Predicted_...`, then `id , value` rows."""
    with path.open("w") as f:
        f.write(f"id,{TASK_COLUMNS[task]} \n")
        for i, p in zip(ids, predictions):
            value = f"{float(p):.6f}" if task == "sts" else str(int(p))
            f.write(f"{i} , {value} \n")


# What a row that cannot be scored at all (no usable text) is predicted: the neutral class, "not
# a paraphrase" (the majority class), the middle of the similarity scale.
FALLBACK_PREDICTION = {"sst": 2, "para": 0, "sts": 2.5}


def _predict_rows(evaluator: Evaluator, params, path: Path, task: str, tokenizer,
                  max_length: int, limit: int, progress: bool, desc: str
                  ) -> tuple[list[str], dict[str, int], np.ndarray]:
    """(every id of the file in order, {id: row of the predicted rows}, the predicted rows' raw
    outputs). Every row with text is predicted, labeled or not."""
    data = data_lib.load_task(path, task, "test", tokenizer, max_length=max_length,
                              limit=limit or None, skip_bad_rows=True, labeled=False)
    outputs = evaluator.outputs(params, data, task, progress, desc)
    ids = data_lib.read_ids(path)[:limit or None]
    return ids, {ex_id: i for i, ex_id in enumerate(data.example_ids)}, outputs


def _every_row(task: str, ids: list[str], index: dict[str, int], preds: np.ndarray) -> np.ndarray:
    """A prediction per id of the file: the predicted row's, or `FALLBACK_PREDICTION` for a row
    without usable text, so a prediction file covers every id of its input."""
    return np.array([preds[index[i]] if i in index else FALLBACK_PREDICTION[task] for i in ids],
                    preds.dtype)


@dataclasses.dataclass
class Member:
    """One model of an evaluation: a run's checkpoint (or a soup of several) ready to predict."""
    run: RunFiles
    evaluator: Evaluator
    tokenizer: Tokenizer
    max_length: int


def _members(run_dirs, which: str, combine: str, batch_size: int
             ) -> tuple[list[Member], list[dict]]:
    """(the models to run: one per run for an ensemble, one averaged model for a soup;
    {run, which, checkpoint_step} of every run read)."""
    runs = [load_run(r, which) for r in run_dirs]
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
    every id of their input file (see `FALLBACK_PREDICTION`); see the module docstring for
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
    members, sources = _members(run_dirs, which, combine, batch_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Written last: a scores.json is never beside the outputs of another (unfinished) evaluation.
    (out_dir / SCORES_FILE).unlink(missing_ok=True)
    base = data_lib.find_data_dir(data_dir)
    first = members[0]
    dev_outputs, dev_predictions, gold, dev_files, written = {}, {}, {}, {}, []
    for task in data_lib.TASKS:
        for split in ("dev", "test"):
            name = data_lib.default_file(task, split)
            if not name or not (base / name).exists():
                continue
            rows = []
            for k, m in enumerate(members):
                desc = f"eval {task} {name}" + (f" [{k + 1}/{len(members)}]"
                                                if len(members) > 1 else "")
                rows.append(_predict_rows(m.evaluator, m.run.params, base / name, task,
                                          m.tokenizer, m.max_length, limit, progress, desc))
            ids, index, _ = rows[0]
            for m, (_, other, _) in zip(members[1:], rows[1:]):
                if other != index:
                    raise CombineError(f"{m.run.run_dir}: its tokenizer keeps other rows of "
                                       f"{base / name} than {first.run.run_dir}'s; an ensemble "
                                       "needs runs with one vocabulary")
            outputs = combine_outputs(task, [r[2] for r in rows]) if len(rows) > 1 else rows[0][2]
            path = out_dir / f"{TASK_FILE_PREFIX[task]}-{split}-output.csv"
            write_predictions(path, task, ids, _every_row(task, ids, index,
                                                          to_predictions(task, outputs)))
            written.append(path)
            if split == "dev":  # scored on the rows with a valid label
                gold[task] = data_lib.load_task(base / name, task, split, first.tokenizer,
                                                max_length=first.max_length,
                                                limit=limit or None, skip_bad_rows=True)
                picked = np.array([index[i] for i in gold[task].example_ids], np.int64)
                dev_outputs[task] = outputs[picked]
                dev_predictions[task] = to_predictions(task, dev_outputs[task])
                dev_files[task] = {"path": str((base / name).resolve()),
                                   "sha256": _sha256(base / name)}
    scores = score_predictions(dev_predictions, gold)
    written += write_eval_plots(out_dir, dev_outputs, {t: d.labels for t, d in gold.items()})
    if dev_outputs:
        np.savez(out_dir / DEV_OUTPUTS_FILE, **{
            **dev_outputs, **{f"{t}_ids": np.asarray(gold[t].example_ids, dtype=str)
                              for t in dev_outputs}})
        written.append(out_dir / DEV_OUTPUTS_FILE)
    single = len(run_dirs) == 1
    scores.update(checkpoint_step=first.run.meta.get("step") if single else None,
                  which=first.run.which, limit=limit, max_length=first.max_length,
                  dev_files=dev_files, dev_outputs=DEV_OUTPUTS_FILE if dev_outputs else None)
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
    print(closing_block(written, {k: scores[k] for k in SCORE_KEYS if k in scores}, heading))
    return 0


if __name__ == "__main__":
    sys.exit(main())
