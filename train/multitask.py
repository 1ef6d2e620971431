"""Multitask fine-tuning: `python -m train.multitask [--preset NAME] [flags]`.

Loads the data and the pretrained encoder, trains with the data-parallel step, evaluates on dev at
each epoch's end, and writes to `--out`: `last/` and `best/` checkpoints, `metrics.jsonl` (one line
per evaluation), `train_log.jsonl` (losses at log intervals), `train_config.json`, `config.json`,
`vocab.txt`. `--resume` continues from the newest intact checkpoint with the same data order.
Everything here is a function a notebook can call: `train_and_evaluate(cfg, out_dir, ...)`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from bert_jax import data as data_lib
from bert_jax.heads import MultitaskBert, init_multitask_params
from bert_jax.plots import write_run_plots
from bert_jax.pretrained import load_pretrained, resolve_model_dir
from bert_jax.tokenizer import Tokenizer
from train import evaluate as eval_lib
from bert_jax.checkpoints import CheckpointError, RunCheckpoints
from train.config import PRESET_NOTES, PRESETS, TASKS, TrainConfig
from train.input_pipeline import Prefetcher, iterate_steps, plan_layout, steps_per_epoch
from train.step import (check_divisible, create_state, make_mesh, make_optimizer,
                        make_train_step, shard_batch)

log = logging.getLogger("train.multitask")

# Fields that may change between a run and its --resume (they do not change the data order).
RESUMABLE_CHANGES = {"epochs", "max_steps", "log_every", "limit_eval", "eval_batch_size"}


class TrainingError(RuntimeError):
    """A run stopped for a reason the user must act on (message says what to do)."""


class Interrupted(TrainingError):
    """SIGINT/SIGTERM: a checkpoint was saved and the run can continue with --resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@dataclasses.dataclass
class RunData:
    """Tokenized splits: `train[task]` for the tasks trained, `dev[task]` for all three."""
    tokenizer: Tokenizer
    train: dict[str, data_lib.TaskData]
    dev: dict[str, data_lib.TaskData]
    buckets: tuple[int, ...]


def data_files(data_dir: str | None, overrides: dict[tuple[str, str], str] | None = None
               ) -> dict[tuple[str, str], Path]:
    """{(task, split): path} for train and dev of every task: `data_dir` defaults, then overrides."""
    overrides = overrides or {}
    files = {}
    base = None
    for task in TASKS:
        for split in ("train", "dev"):
            if (task, split) in overrides and overrides[task, split]:
                files[task, split] = Path(overrides[task, split])
            else:
                base = base or data_lib.find_data_dir(data_dir)
                files[task, split] = base / data_lib.default_file(task, split)
    return files


def load_run_data(cfg: TrainConfig, files: dict[tuple[str, str], Path]) -> RunData:
    tokenizer = Tokenizer.from_pretrained(cfg.init)
    load = lambda task, split, limit: data_lib.load_task(
        files[task, split], task, split, tokenizer, max_length=cfg.max_length,
        limit=limit or None, skip_bad_rows=cfg.skip_bad_rows)
    train = {t: load(t, "train", cfg.limit_train) for t in cfg.tasks}
    dev = {t: load(t, "dev", cfg.limit_eval) for t in TASKS}
    lengths = np.concatenate([d.lengths for d in train.values()])
    buckets = data_lib.choose_buckets(lengths, cfg.max_length, num_buckets=cfg.num_buckets)
    log.info("buckets %s: padding waste %.1f%% of training positions", buckets,
             100 * data_lib.padding_waste(lengths, buckets))
    return RunData(tokenizer, train, dev, buckets)


def _write_json_line(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


class _StopSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (save, then exit)."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some notebook runners)
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _check_resume_config(run_dir: Path, cfg: TrainConfig) -> None:
    saved_path = run_dir / "train_config.json"
    if not saved_path.exists():
        return
    saved = TrainConfig.from_json(saved_path).to_dict()
    now = cfg.to_dict()
    changed = {k: (saved[k], now[k]) for k in now
               if saved.get(k) != now[k] and k not in RESUMABLE_CHANGES}
    if changed:
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise TrainingError(
            f"{saved_path}: --resume with a different configuration ({detail}). Resume with the "
            "same flags, or start a new run in another --out folder")


def _check_model_shapes(out_dir: Path, bert_config, tokenizer: Tokenizer, init: str,
                        resume: bool) -> None:
    """Refuse an --init whose shapes differ from the run being resumed, or from its own vocab."""
    if tokenizer.vocab_size > bert_config.vocab_size:
        raise TrainingError(
            f"--init {init}: vocab.txt has {tokenizer.vocab_size} tokens but the model's "
            f"vocab_size is {bert_config.vocab_size}; use the vocab.txt that came with the weights")
    saved_path = out_dir / "config.json"
    if resume and saved_path.exists():
        from bert_jax.config import BertConfig
        saved, now = BertConfig.from_json(saved_path).shape_dict(), bert_config.shape_dict()
        if saved != now:
            diff = {k: (saved[k], now[k]) for k in saved if saved[k] != now[k]}
            raise TrainingError(
                f"--init {init} does not match the model of the run being resumed "
                f"({saved_path}): " + ", ".join(f"{k} {a} in the run vs {b} in --init"
                                               for k, (a, b) in diff.items()))


def _nonfinite_message(record: dict, ids: dict[str, list[str]]) -> str:
    tasks = [t for t in TASKS if not np.isfinite(record.get(f"loss_{t}", 0.0))]
    shown = {t: ids.get(t, [])[:8] for t in tasks or ids}
    return (f"non-finite loss at step {record['step']} (tasks {tasks or 'unknown'}; example ids "
            f"{shown}). The update was skipped and the last good checkpoint kept. Lower --lr, set "
            "--grad-clip, use float32, or pass --nonfinite skip to skip such steps")


def train_and_evaluate(cfg: TrainConfig, out_dir: str | Path,
                       files: dict[tuple[str, str], Path] | None = None, *,
                       data_dir: str | None = None, resume: bool = False, save_every: int = 500,
                       progress: bool = True, run_data: RunData | None = None) -> dict:
    """Train `cfg` into `out_dir`; returns the final dev scores (and a few run facts)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = files or data_files(data_dir)
    if resume:
        _check_resume_config(out_dir, cfg)
    mesh = make_mesh()
    check_divisible(cfg.batch_size, mesh)
    check_divisible(cfg.eval_batch_size, mesh, "eval batch size")

    run = run_data or load_run_data(cfg, files)
    dtype = cfg.compute_dtype(jax.default_backend())
    bert_config, encoder_params = load_pretrained(cfg.init, dtype=dtype)
    log.info("computing in %s on %s", dtype, jax.default_backend())
    bert_config = bert_config.replace(attention_impl=cfg.attention_impl)
    _check_model_shapes(out_dir, bert_config, run.tokenizer, cfg.init, resume)
    model = MultitaskBert(bert_config, cfg.head_config())
    params = init_multitask_params(bert_config, cfg.head_config(),
                                   jax.random.PRNGKey(cfg.seed), encoder_params)
    per_epoch = steps_per_epoch(run.train, cfg)
    total_steps = cfg.epochs * per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    tx = make_optimizer(cfg, total_steps, bert_config.num_hidden_layers)
    state = create_state(params, tx, cfg.seed, mesh)
    del params, encoder_params

    ckpts = RunCheckpoints(out_dir)
    best_overall, start_step = -np.inf, 0
    if resume and ckpts.latest_step() is not None:
        state, meta, _ = ckpts.restore(state)
        start_step, best_overall = int(state.step), meta.get("best_overall", -np.inf)
        log.info("resumed from %s at step %d", out_dir / "last", start_step)
    elif not resume and ckpts.latest_step() is not None:
        raise TrainingError(f"{out_dir} already holds checkpoints: pass --resume to continue "
                            "that run, or choose another --out")
    cfg.to_json(out_dir / "train_config.json")
    bert_config.to_json(out_dir / "config.json")
    shutil.copyfile(run.tokenizer.vocab_file, out_dir / "vocab.txt")

    train_step = make_train_step(model, tx, mesh)
    evaluator = eval_lib.Evaluator(model, mesh, run.buckets, cfg.eval_batch_size)
    metrics_path, train_log_path = out_dir / "metrics.jsonl", out_dir / "train_log.jsonl"

    def save(step, best=False, scores=None):
        meta = {"step": step, "epoch": step / per_epoch, "best_overall": float(best_overall),
                "scores": scores}
        ckpts.save(step, state, meta, best=best)

    def evaluate_and_save(step):
        nonlocal best_overall
        scores = evaluator.scores(state.params, run.dev, progress=progress)
        is_best = scores["overall"] > best_overall
        best_overall = max(best_overall, scores["overall"])
        record = {"step": step, "epoch": round(step / per_epoch, 4), **scores,
                  "best": is_best, "time": time.time()}
        _write_json_line(metrics_path, record)
        log.info("dev at step %d: %s", step, {k: round(v, 4) for k, v in scores.items()})
        save(step, best=is_best, scores=scores)
        return scores

    layout = plan_layout(run.train, cfg, total_steps, mesh.devices.size)
    log.info("train steps: %s (%d shapes)", layout.describe(), layout.num_shapes())
    batches = iterate_steps(run.train, cfg, layout, start_step, total_steps, run.tokenizer.pad_id)
    prefetch = Prefetcher(batches, lambda arrays: shard_batch(arrays, mesh))
    bar = tqdm(total=total_steps, initial=start_step, disable=not progress, unit="step",
               dynamic_ncols=True, desc="train")
    pending, scores, step = [], None, start_step
    started = time.perf_counter()
    try:
        with _StopSignal() as stop:
            for host_batch, device_batch in prefetch:
                state, metrics = train_step(state, device_batch)
                step += 1
                pending.append((step, metrics, host_batch.example_ids))
                bar.update(1)
                at_epoch_end = step % per_epoch == 0 or step == total_steps
                if len(pending) >= cfg.log_every or at_epoch_end or stop.signum:
                    _flush(pending, cfg, bar, train_log_path)
                if save_every and step % save_every == 0 and not at_epoch_end:
                    save(step)
                if at_epoch_end:
                    scores = evaluate_and_save(step)
                if stop.signum:
                    if not at_epoch_end:
                        save(step)
                    name = signal.Signals(stop.signum).name
                    raise Interrupted(f"stopped by {name} at step {step}; checkpoint saved in "
                                      f"{out_dir / 'last'}. Continue with --resume", stop.signum)
    finally:
        prefetch.close()
        bar.close()
        ckpts.close()
    elapsed = time.perf_counter() - started
    compiles = train_step._cache_size() if hasattr(train_step, "_cache_size") else None
    summary = {**(scores or {}), "steps": step, "seconds": round(elapsed, 1),
               "input_wait_fraction": round(prefetch.wait_seconds / max(elapsed, 1e-9), 4),
               "train_step_compiles": compiles, "train_layout": layout.describe(),
               "train_shapes_planned": layout.num_shapes(), "eval_buckets": list(run.buckets)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_run_plots(out_dir)
    return summary


def _flush(pending: list, cfg: TrainConfig, bar, path: Path) -> None:
    """Pull the pending step metrics to the host (the only sync in the loop); log and check."""
    if not pending:
        return
    fetched = jax.device_get([m for _, m, _ in pending])
    records = []
    for (step, _, ids), values in zip(pending, fetched):
        record = {"step": step, **{k: float(v) for k, v in values.items()}}
        if record["finite"] < 1:
            if cfg.nonfinite == "stop":
                pending.clear()
                raise TrainingError(_nonfinite_message(record, ids))
            log.warning("skipped step %d: %s", step, _nonfinite_message(record, ids))
        records.append(record)
    finite = [r for r in records if r["finite"] >= 1] or records
    mean = {k: float(np.mean([r[k] for r in finite if k in r]))
            for k in finite[-1] if k.startswith("loss")}
    bar.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in mean.items()})
    _write_json_line(path, {"step": pending[-1][0], **mean, "time": time.time()})
    pending.clear()


# ---------------------------------------------------------------------------------------------
# Command line

_HELP = {
    "init": "pretrained encoder: 'all-MiniLM-L6-v2' (embedded default), a folder written by "
            "`python -m bert_jax.convert`, or a HuggingFace BERT folder",
    "pooling": "sentence embedding: 'cls' (pooler output) or 'mean' (masked mean)",
    "para_head": "paraphrase head: 'diff' or 'concat'",
    "sts_head": "STS head: 'linear' or 'cosine'",
    "tasks": "comma-separated tasks to train (sst,para,sts); dev scores cover all three",
    "mode": "'multitask' (one batch per task per step, summed loss) or 'sequential'",
    "batch_size": "examples per task per step (global, split over devices)",
    "epoch_steps": "multitask epoch length: 'max' or 'min' of the tasks' batch counts",
    "dtype": "compute dtype: auto (bfloat16 on GPU/TPU, float32 on CPU), float32 or bfloat16 "
             "(parameters stay float32)",
    "attention_impl": "jax.nn.dot_product_attention implementation: xla or cudnn (GPU, bf16)",
    "max_steps": "stop after this many steps in all (0: no limit); dev scores still computed",
    "limit_train": "use only the first N training examples of each task (0: all)",
    "limit_eval": "evaluate on the first N dev examples of each task (0: all)",
    "head_lr": "learning rate of the task heads (0: the same as --lr); fresh heads learn "
               "slowly at the encoder's 1e-5",
    "layer_lr_decay": "layer-wise learning-rate decay: the top encoder layer and the pooler "
                      "train at --lr, each layer below at DECAY times the one above, the "
                      "embeddings at DECAY ** layers (1: off)",
    "nonfinite": "on a non-finite loss: 'stop' the run, or 'skip' the step and go on",
    "pack": "pack each step's sentences into rows without padding between them (attention "
            "stays within a sentence); --no-pack pads them to a shared length instead",
    "pack_length": "length of packed rows; steps holding a longer sentence use --max-length",
    "num_buckets": "number of static shapes per row length (packed) or padded lengths (each "
                   "compiles once)",
    "group_by_length": "with --no-pack: batch examples of similar length together",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.multitask",
        description="Fine-tune BERT on SST-5, Quora paraphrase and STS, with dev evaluation, "
                    "checkpoints and resume. Presets reproduce the report's experiments; every "
                    "field of the preset can be overridden by its flag.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default="more-epochs", choices=sorted(PRESETS),
                        help="starting configuration: " + "; ".join(
                            f"{k}: {v}" for k, v in PRESET_NOTES.items()))
    parser.add_argument("--out", default=None,
                        help="run folder (default checkpoints/PRESET)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its newest intact checkpoint")
    parser.add_argument("--data-dir", default=None,
                        help="folder with the CS224N files (default data/, else ../shared/data)")
    for task in TASKS:
        for split in ("train", "dev"):
            parser.add_argument(f"--{task}-{split}", default=None, metavar="FILE",
                                help=f"{task} {split} file (overrides --data-dir)")
    parser.add_argument("--save-every", type=int, default=500,
                        help="also checkpoint every N steps (0: only at epoch ends)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    group = parser.add_argument_group("training configuration (default: the preset's value)")
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kwargs = {"default": None, "help": _HELP.get(field.name, field.name.replace("_", " "))}
        if field.type in ("bool", bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif field.name == "tasks":
            group.add_argument(flag, type=lambda s: tuple(x.strip() for x in s.split(",") if x.strip()),
                               **kwargs)
        else:
            kind = {"int": int, "float": float, "str": str}[str(field.type)]
            group.add_argument(flag, type=kind, **kwargs)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name) is not None}
    return PRESETS[args.preset].replace(**overrides)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("SLURM_NTASKS"):
        jax.distributed.initialize()  # multi-host: one process per host, see README
    try:
        cfg = config_from_args(args)
        files = data_files(args.data_dir, {(t, s): getattr(args, f"{t}_{s}")
                                           for t in TASKS for s in ("train", "dev")})
        out = args.out or f"checkpoints/{args.preset}"
        log.info("run %s: %s", out, json.dumps(cfg.to_dict()))
        summary = train_and_evaluate(cfg, out, files, resume=args.resume,
                                     save_every=args.save_every, progress=not args.no_progress)
    except Interrupted as err:
        print(str(err), file=sys.stderr)
        return 128 + err.signum
    except (data_lib.DataError, TrainingError, CheckpointError, ValueError,
            FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        hint = eval_lib.resource_hint(err)
        if hint:
            print(f"error: {hint}", file=sys.stderr)
            return 3
        raise
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
