"""Tabulate the dev scores of finished runs, with mean and spread: `python -m train.compare RUN...`.

Each RUN is a folder written by `python -m train.multitask` (its `metrics.jsonl` holds the dev
scores after every epoch, `train_config.json` the settings). A run is scored at its best epoch by
overall dev score (the epoch its `best/` checkpoint holds), or at a fixed `--epoch N` for every
run. The columns are the dev scores every run has: `<task>_acc` / `<task>_r` of each task (the
built-ins' and a run's own) and `overall`; a score only some runs have is left out, and a line
on stderr says which. Prints one markdown row per run and, for two runs or more, a row of mean ±
sample standard deviation (ddof 1) per column, e.g. for three seeds of one configuration:

    python -m train.compare runs/concat-seed1 runs/concat-seed2 runs/concat-seed3

`--out FILE` also writes the table (or, with `--json`, the JSON) to FILE: a new file or an
earlier output of this tool (another file only with `--overwrite`; never one inside a run or
data folder). The last lines, on
stderr, give the scores (the mean for several runs) and the file written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bert_jax.checkpoints import read_json
from bert_jax.cli import output_file, positive_int, prog
from bert_jax.errors import BertJaxError
from bert_jax.outputs import OutputFile, check_output_file
from bert_jax.plots import read_jsonl, score_keys
from train.evaluate import closing_block

# The built-ins' column titles; any other score is titled by its key (`<task>_acc`, `<task>_r`).
TITLES = {"sst_acc": "SST acc", "para_acc": "para acc", "sts_r": "STS r", "overall": "overall"}
# An earlier --out of this tool: its markdown table or its JSON (replaced without --overwrite).
TABLE = OutputFile("train.compare --out", lambda head: head.startswith(
    ("| run | seed | epoch |", '{\n  "runs": [')))


def epoch_scores(run_dir: Path) -> list[dict]:
    """The dev records of `run_dir/metrics.jsonl`, one per evaluation, in order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise SystemExit(f"error: {path}: no such file; is {run_dir} a run folder of "
                         "`python -m train.multitask` that finished an epoch?")
    records = read_jsonl(path, ("epoch", "overall"))
    if not records:
        raise SystemExit(f"error: {path}: no dev scores yet (the run has not finished an epoch)")
    return records


def pick(records: list[dict], epoch: int | None) -> dict:
    """The record of `epoch` (1-based), or the first with the highest overall score."""
    if epoch is None:
        return max(records, key=lambda r: r["overall"])   # max keeps the first of ties
    for r in records:
        if abs(r["epoch"] - epoch) < 1e-6:
            return r
    have = ", ".join(f"{r['epoch']:g}" for r in records)
    raise SystemExit(f"error: no dev scores for epoch {epoch} (epochs scored: {have})")


def run_row(run_dir: Path, epoch: int | None) -> dict:
    """Scores of one run at the chosen epoch, with its seed and how many epochs it scored."""
    records = epoch_scores(run_dir)
    chosen = pick(records, epoch)
    cfg_path = Path(run_dir) / "train_config.json"
    seed = read_json(cfg_path).get("seed") if cfg_path.exists() else None
    return {"run": str(run_dir), "seed": seed, "epoch": chosen["epoch"],
            "epochs_scored": len(records), **{k: float(chosen[k]) for k in score_keys(chosen)}}


def shared_scores(rows: list[dict]) -> list[str]:
    """The score keys every row has, in the first row's order (`overall` last)."""
    keys = score_keys(rows[0]) if rows else []
    return [k for k in keys if all(k in r for r in rows)]


def unshared_scores(rows: list[dict]) -> dict[str, list[str]]:
    """{score key: the runs that have it} for the keys only some rows have."""
    shared = set(shared_scores(rows))
    keys = dict.fromkeys(k for r in rows for k in score_keys(r) if k not in shared)
    return {k: [r["run"] for r in rows if k in r] for k in keys}


def spread(rows: list[dict]) -> dict:
    """Per score every row has: (mean, sample standard deviation) over `rows`."""
    return {k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows], ddof=1)))
            for k in shared_scores(rows)}


def table(rows: list[dict]) -> str:
    keys = shared_scores(rows)
    out = ["| run | seed | epoch | " + " | ".join(TITLES.get(k, k) for k in keys) + " |",
           "| --- | ---: | ---: | " + " | ".join("---:" for _ in keys) + " |"]
    for r in rows:
        scores = " | ".join(f"{r[k]:.3f}" for k in keys)
        out.append(f"| `{r['run']}` | {r['seed']} | {r['epoch']:g} of {r['epochs_scored']} | "
                   f"{scores} |")
    if len(rows) > 1:
        stats = spread(rows)
        cells = " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in stats.values())
        out.append(f"| mean ± std over {len(rows)} runs | | | {cells} |")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog("train.compare"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                        help="run folders of `python -m train.multitask` to tabulate, one row "
                             "each")
    parser.add_argument("--epoch", type=positive_int, default=None,
                        help="score every run at this epoch (default each run's best epoch "
                             "by overall dev score)")
    parser.add_argument("--json", action="store_true",
                        help="print the rows (and the mean and spread) as JSON instead of a "
                             "markdown table")
    parser.add_argument("--out", default=None, type=output_file, metavar="FILE",
                        help="also write what is printed to this file (default none): "
                             "a new file or an earlier output of this tool")
    parser.add_argument("--overwrite", action="store_true",
                        help="let --out replace a file this tool did not write (never one "
                             "inside a run or data folder)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.out:
        try:
            check_output_file(args.out, TABLE, overwrite=args.overwrite)  # never in a run
        except BertJaxError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    try:
        rows = [run_row(r, args.epoch) for r in args.runs]
    except BertJaxError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        text = json.dumps({"runs": rows, **({"mean_std": spread(rows)} if len(rows) > 1 else {})},
                          indent=2)
    else:
        text = table(rows)
    print(text)
    for key, runs in unshared_scores(rows).items():
        print(f"note: {key} left out: only {', '.join(runs)} scored it", file=sys.stderr)
    written = []
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        written.append(out)
    if len(rows) > 1:
        scores = {k: m for k, (m, _) in spread(rows).items()}
        heading = f"mean dev scores over {len(rows)} runs"
    else:
        scores = {k: rows[0][k] for k in shared_scores(rows)}
        heading = f"dev scores of {rows[0]['run']} (epoch {rows[0]['epoch']:g})"
    print(closing_block(written, scores, heading), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
