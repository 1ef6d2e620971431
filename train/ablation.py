"""Run the report's seven presets in order and tabulate their dev scores.

`python -m train.ablation --out runs/ablation [--limit-train N] [--epoch-scale S] [--limit-eval N]`
runs each preset (skipping those already finished in --out; one stopped part-way continues
from its checkpoint), appends one JSON line per run to
`OUT/results.jsonl` (scores, command, wall time, machine), and `--table` prints the markdown table.
Shortened settings apply to every row alike, so the rows stay comparable; `--tasks-file FILE`
trains your own tasks (README: Your own tasks) beside every preset's. The table has a column per
dev score (`<task>_acc` / `<task>_r` of every task, and `overall`; `-` where a run has no such
score). It ends with the table (scores to 3 decimals) and the path of every file and run folder
written.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import jax

from bert_jax.checkpoints import newest_checkpoint
from bert_jax.cli import (add_data_dir, nonnegative_int, output_dir, positive_float, prog,
                          seed_int)
from bert_jax.errors import BertJaxError
from bert_jax.outputs import check_output_folder
from bert_jax.plots import read_jsonl, score_keys
from bert_jax.task_file import read_tasks_file
from train.config import PRESETS, PRESET_NOTES, TrainConfig
from train.evaluate import closing_block
from train.multitask import data_files, train_and_evaluate

# What every line of results.jsonl holds (numbers), beside a score per task (`score_keys`).
RESULT_KEYS = ("epochs", "overall", "wall_seconds", "seed")
# The built-ins' column titles; any other score is titled by its key.
TITLES = {"sst_acc": "SST acc", "para_acc": "para acc", "sts_r": "STS r", "overall": "overall"}
ORDER = ("baseline", "multi-dataset", "cosine", "mean-pooling", "multitask", "concat",
         "more-epochs")


def machine() -> str:
    device = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{device.platform}:{device.device_kind} ({cpu}, {jax.device_count()} device(s))"


def shortened(cfg: TrainConfig, limit_train: int, epoch_scale: float, limit_eval: int,
              seed: int) -> TrainConfig:
    epochs = max(1, round(cfg.epochs * epoch_scale))
    return cfg.replace(limit_train=limit_train, limit_eval=limit_eval, epochs=epochs, seed=seed)


def parse_overrides(items: list[str]) -> dict:
    """["lr=1e-4", ...] -> {"lr": 1e-4}, typed as the TrainConfig field."""
    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in fields:
            raise SystemExit(f"error: --set {item}: no TrainConfig field {name!r}")
        if name in ("tasks_file", "user_tasks"):
            raise SystemExit(f"error: --set {item}: pass your own tasks' file as --tasks-file")
        kind = {"int": int, "float": float, "str": str, "bool": lambda v: v.lower() == "true"}
        out[name] = kind.get(str(fields[name]), str)(value)
    return out


def table_scores(rows: list[dict]) -> list[str]:
    """The score columns: every key of `score_keys` any row has, in the order they come
    (`overall` last)."""
    keys = dict.fromkeys(k for r in rows for k in score_keys(r) if k != "overall")
    return list(keys) + ["overall"]


def table(rows: list[dict]) -> str:
    keys = table_scores(rows)
    out = ["| preset | what it adds | epochs | " + " | ".join(TITLES.get(k, k) for k in keys)
           + " | wall | seed |",
           "| --- | --- | ---: | " + " | ".join("---:" for _ in keys) + " | ---: | ---: |"]
    for r in rows:
        preset = r.get("preset", r.get("run", "?"))
        note = PRESET_NOTES.get(r.get("base_preset", preset), "")
        if r.get("overrides"):
            note = "settings changed: " + ", ".join(f"{k}={v}" for k, v in r["overrides"].items())
        scores = " | ".join(f"{r[k]:.3f}" if k in r else "-" for k in keys)
        out.append(f"| `{preset}` | {note} | {r['epochs']} | {scores} | "
                   f"{r['wall_seconds'] / 60:.1f} min | {r['seed']} |")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog("train.ablation"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ablation", type=output_dir, metavar="DIR",
                        help="root folder: one run folder per preset and results.jsonl "
                             "(default runs/ablation)")
    parser.add_argument("--presets", default=",".join(ORDER),
                        help="comma-separated presets to run, in this order (default all "
                             "seven: " + ",".join(ORDER) + ")")
    add_data_dir(parser)
    parser.add_argument("--limit-train", type=nonnegative_int, default=0,
                        help="train on the first N rows per task (default 0: all rows)")
    parser.add_argument("--limit-eval", type=nonnegative_int, default=0,
                        help="score on the first N dev rows per task (default 0: all rows)")
    parser.add_argument("--epoch-scale", type=positive_float, default=1.0,
                        help="multiply each preset's epochs by this, keeping at least 1 "
                             "(default 1)")
    parser.add_argument("--seed", type=seed_int, default=TrainConfig.seed,
                        help=f"random seed of every run, part of its folder name (default "
                             f"{TrainConfig.seed})")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a TrainConfig field for every run (e.g. --set lr=1e-4); "
                             "named in the run's key and the table")
    parser.add_argument("--tasks-file", default=None, metavar="FILE",
                        help="TOML file of your own task definitions, trained beside every "
                             "preset's tasks and part of each run's key (default none)")
    parser.add_argument("--table", action="store_true",
                        help="only print the table of the runs already in --out; train nothing")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    root = Path(args.out)
    results = root / "results.jsonl"
    names = [n.strip() for n in args.presets.split(",") if n.strip()]
    unknown = [n for n in names if n not in PRESETS]
    if unknown or not names:
        print(f"error: --presets {args.presets}: no preset {', '.join(unknown) or 'named'}; "
              f"pass some of {','.join(ORDER)}", file=sys.stderr)
        return 2
    try:
        done = read_jsonl(results, RESULT_KEYS) if results.exists() else []
        if args.tasks_file and not args.table:
            read_tasks_file(args.tasks_file)  # its mistakes before anything is written
    except BertJaxError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.table:
        print(table(done))
        return 0
    try:  # its own folder: new, empty, or an earlier ablation's (results.jsonl)
        check_output_folder(root, "train.ablation --out",
                            recognise=lambda folder: (folder / "results.jsonl").is_file())
    except BertJaxError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    root.mkdir(parents=True, exist_ok=True)
    files = data_files(args.data_dir)
    overrides = parse_overrides(args.set)
    suffix = "".join(f"-{k}={v}" for k, v in overrides.items())
    if args.tasks_file:
        suffix += f"-tasks={Path(args.tasks_file).stem}"
    written = []
    for name in names:
        key = f"{name}{suffix}-seed{args.seed}"
        if any(r.get("run") == key for r in done):
            continue
        # A run stopped part-way (killed, interrupted) continues from its last checkpoint.
        resume = newest_checkpoint(root / key, "last")[1] is not None
        cfg = shortened(PRESETS[name].replace(**overrides), args.limit_train, args.epoch_scale,
                        args.limit_eval, args.seed)
        start = time.time()
        summary = train_and_evaluate(cfg, root / key, files, progress=False, save_every=0,
                                     resume=resume, tasks=args.tasks_file)
        written.append(root / key)
        record = {"run": key, "preset": name + suffix, "base_preset": name,
                  "overrides": overrides, "seed": args.seed, "epochs": cfg.epochs,
                  "limit_train": args.limit_train, "limit_eval": args.limit_eval,
                  "wall_seconds": round(time.time() - start, 1), "machine": machine(),
                  "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
                  "data": {f"{t}/{s}": str(p) for (t, s), p in files.items()},
                  "tasks_file": args.tasks_file, **{k: summary[k] for k in score_keys(summary)}}
        text = results.read_text() if results.exists() else ""
        if text and not text.endswith("\n"):  # a last line cut by a kill: dropped
            results.write_text(text[:text.rfind("\n") + 1])
        with results.open("a") as f:
            f.write(json.dumps(record) + "\n")
        done.append(record)
        print(json.dumps(record), flush=True)
    if written:
        written.append(results)
    print(table(done) if done else "(no runs yet)")
    print(closing_block(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
