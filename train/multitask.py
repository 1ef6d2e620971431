"""Multitask fine-tuning: `python -m train.multitask [--preset NAME] [flags]`.

Loads the data and the pretrained encoder, trains with the data-parallel step, evaluates on dev at
each epoch's end, and writes to `--out`: `last/` and `best/` checkpoints, `metrics.jsonl` (one line
per evaluation), `train_log.jsonl` (losses, gradient norm, learning rates at log intervals),
`train_config.json`, `config.json`, `vocab.txt`, `tensorboard/` (both logs' curves as event files:
train/tensorboard_log.py). `--resume` continues from the newest intact checkpoint with the same
data order. Everything here is a function a notebook can call: `train_and_evaluate(cfg, ...)`.
"""
from __future__ import annotations

import argparse
import contextlib
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

from bert_jax import data as data_lib
from bert_jax.config import BertConfig
from bert_jax.errors import BertJaxError
from bert_jax.heads import MultitaskBert, init_multitask_params
from bert_jax.plots import write_run_plots
from bert_jax.pretrained import load_pretrained
from bert_jax.token_cache import live_progress
from bert_jax.tokenizer import Tokenizer
from train import distributed
from train import evaluate as eval_lib
from bert_jax.checkpoints import CheckpointError, RunCheckpoints, read_json, run_lock
from train.config import PRESET_NOTES, PRESETS, RESUMABLE_CHANGES, TASKS, TrainConfig
from train.sst_phrases import add_phrases
from train.input_pipeline import Prefetcher, iterate_steps, plan_layout, steps_per_epoch
from train.progress import TrainProgress
from train.step import (backend_report, check_divisible, create_state, learning_rates,
                        make_mesh, make_optimizer, make_train_step, shard_batch)
from train.tensorboard_log import TensorBoardLog
from bert_jax.cli import prog

log = logging.getLogger("train.multitask")



class TrainingError(BertJaxError, RuntimeError):
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
    train = add_phrases(train, cfg, tokenizer)
    dev = {t: load(t, "dev", cfg.limit_eval) for t in TASKS}
    return RunData(tokenizer, train, dev)


def _write_json_line(path: Path, record: dict) -> None:
    if jax.process_index() != 0:  # a multi-process run: the first process writes the logs
        return
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


class _StopSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (save, then exit).

    The first signal is acknowledged at once on stderr; a second one stops at once
    (KeyboardInterrupt), leaving the checkpoints already written.
    """

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        if distributed.handles_signals():  # multi-process: SIGTERM is agreed (stop_signal)
            return self
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
        print(f"\n{signal.Signals(signum).name} received: finishing this step, saving a "
              "checkpoint, then stopping (send it again to stop at once without saving)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _check_resume_config(run_dir: Path, cfg: TrainConfig) -> None:
    saved_path = run_dir / "train_config.json"
    if not saved_path.exists():
        return
    try:
        saved = TrainConfig.from_dict(read_json(saved_path)).to_dict()
    except (TypeError, ValueError) as err:
        raise TrainingError(f"{saved_path}: not a training configuration this version can read "
                            f"({err}). Restore the file, or start a new run in another --out"
                            ) from None
    now = cfg.to_dict()
    # --linear-decay's schedule ends at the run's last step: its length may not change.
    schedule_bound = {"epochs", "max_steps"} if cfg.linear_decay else set()
    changed = {k: (saved[k], now[k]) for k in now if k in saved and saved[k] != now[k]
               and (k not in RESUMABLE_CHANGES or k in schedule_bound)}
    if changed:
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        why = (" (--linear-decay decays the learning rate to 0 at the run's last step, so "
               "--epochs and --max-steps must stay those of the run)"
               if schedule_bound & set(changed) else "")
        raise TrainingError(
            f"{saved_path}: --resume with a different configuration ({detail}){why}. Resume "
            "with the same flags, or start a new run in another --out folder")


def _check_model_shapes(out_dir: Path, bert_config, tokenizer: Tokenizer, init: str,
                        resume: bool) -> None:
    """Refuse an --init whose shapes differ from the run being resumed, or from its own vocab."""
    if tokenizer.vocab_size > bert_config.vocab_size:
        raise TrainingError(
            f"--init {init}: vocab.txt has {tokenizer.vocab_size} tokens but the model's "
            f"vocab_size is {bert_config.vocab_size}; use the vocab.txt that came with the weights")
    saved_path = out_dir / "config.json"
    if resume and saved_path.exists():
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
                       data_dir: str | None = None, resume: bool | None = None,
                       save_every: int | None = None, progress: bool = True,
                       run_data: RunData | None = None) -> dict:
    """Train `cfg` into `out_dir`; returns the final dev scores (and a few run facts).

    Data: `files` ({(task, split): path}), else `cfg`'s data fields. `data_dir`, `resume` and
    `save_every`, when given, replace those fields of `cfg` (a shorthand for `cfg.replace`), so
    `train_config.json` records what the run did. One training at a time writes `out_dir` (a
    second one is refused: `run_lock`). `cfg.resume` continues from the newest intact
    checkpoint in `out_dir/last` and refuses when there is none.
    """
    given = {"data_dir": data_dir, "resume": resume, "save_every": save_every}
    cfg = cfg.replace(**{k: v for k, v in given.items() if v is not None})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Every process of a multi-host run writes the same folder; the first one holds the lock.
    lock = run_lock(out_dir) if jax.process_index() == 0 else contextlib.nullcontext()
    with distributed.guard(), lock:
        files = files or data_files(cfg.data_dir or None, cfg.data_overrides())
        return _train(cfg, out_dir, files, resume=cfg.resume, save_every=cfg.save_every,
                      progress=progress, run_data=run_data)


def _load_encoder(cfg: TrainConfig, dtype: str):
    """(BertConfig, encoder params) of `cfg.init`; a config that cannot work is refused here."""
    try:
        bert_config, encoder_params = load_pretrained(cfg.init, dtype=dtype)
    except ValueError as err:  # BertConfig validation: names the field
        raise TrainingError(f"--init {cfg.init}: {err}") from None
    if cfg.max_length < 2:
        raise TrainingError(f"--max-length {cfg.max_length}: a sentence needs at least 2 "
                            "tokens ([CLS] and [SEP])")
    if cfg.max_length > bert_config.max_position_embeddings:
        raise TrainingError(
            f"--max-length {cfg.max_length} is longer than the model's max_position_embeddings "
            f"({bert_config.max_position_embeddings}, in the config.json of --init {cfg.init}): "
            f"positions past it have no embedding. Pass --max-length "
            f"{bert_config.max_position_embeddings} or less")
    return bert_config.replace(attention_impl=cfg.attention_impl), encoder_params


def _check_labels_vary(train: dict[str, data_lib.TaskData]) -> None:
    """Refuse training data whose labels are all the same: a head learns nothing from it."""
    for task, data in train.items():
        if data.labels is not None and len(np.unique(data.labels)) < 2:
            raise TrainingError(
                f"{data.source or task}: every {task} training label is {data.labels[0]}: the "
                "head cannot learn from a single class. Check the file (or --limit-train, which "
                "keeps the first N rows)")


def _keep_log_until(path: Path, step: int) -> list[dict]:
    """Rewrite a JSON-lines log keeping only records of steps <= `step` (a resumed run writes
    the later ones again; a line cut short by a kill is dropped); returns the records kept."""
    lines = path.read_text().splitlines() if path.exists() else []
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            kept.append(record)
    if len(kept) != len(lines) and jax.process_index() == 0:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, path)
    return kept


def _train(cfg: TrainConfig, out_dir: Path, files: dict[tuple[str, str], Path], *, resume: bool,
           save_every: int, progress: bool, run_data: RunData | None) -> dict:
    if resume:
        _check_resume_config(out_dir, cfg)
    mesh = make_mesh()
    check_divisible(cfg.batch_size, mesh)
    check_divisible(cfg.eval_batch_size, mesh, "eval batch size")

    dtype = cfg.compute_dtype(jax.default_backend())
    bert_config, encoder_params = _load_encoder(cfg, dtype)
    run = run_data or load_run_data(cfg, files)
    _check_labels_vary(run.train)
    backend, fallback = backend_report()
    log.info("%s; computing in %s", backend, dtype)
    if fallback:
        log.warning(fallback)
    _check_model_shapes(out_dir, bert_config, run.tokenizer, cfg.init, resume)
    distributed.check_same_run(cfg, run, encoder_params)  # multi-process: same everywhere
    model = MultitaskBert(bert_config, cfg.head_config())
    params = init_multitask_params(bert_config, cfg.head_config(),
                                   jax.random.PRNGKey(cfg.seed), encoder_params)
    params = distributed.replicate(params, mesh)  # multi-process: skips device_put's gathers
    per_epoch = steps_per_epoch(run.train, cfg)
    total_steps = cfg.epochs * per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    tx = make_optimizer(cfg, total_steps, bert_config.num_hidden_layers)
    state = create_state(params, tx, cfg.seed, mesh)
    del params, encoder_params

    ckpts = RunCheckpoints(out_dir, keep_last=cfg.keep_last)
    metrics_path, train_log_path = out_dir / "metrics.jsonl", out_dir / "train_log.jsonl"
    best_overall, start_step = -np.inf, 0
    if resume:
        if ckpts.latest_step() is None:
            raise TrainingError(
                f"{out_dir}: --resume, but {out_dir / 'last'} holds no checkpoint to continue "
                "from. Start the run without --resume")
        state, meta, _ = ckpts.restore(state)
        start_step, best_overall = int(state.step), meta.get("best_overall", -np.inf)
        log.info("resumed from %s at step %d", out_dir / "last", start_step)
    elif ckpts.latest_step() is not None:
        raise TrainingError(f"{out_dir} already holds checkpoints: pass --resume to continue "
                            "that run, or choose another --out")
    # Logs hold only the steps the checkpoint has (a fresh run: none of an earlier attempt's).
    evaluations = _keep_log_until(metrics_path, start_step)
    _keep_log_until(train_log_path, start_step)
    board = TensorBoardLog(out_dir, cfg.tensorboard, start_step)  # closed with ckpts below
    lr_at = learning_rates(cfg, total_steps, bert_config.num_hidden_layers)
    best_overall = max([best_overall] + [r["overall"] for r in evaluations if "overall" in r])
    if jax.process_index() == 0:
        cfg.to_json(out_dir / "train_config.json")
        bert_config.to_json(out_dir / "config.json")
        shutil.copyfile(run.tokenizer.vocab_file, out_dir / "vocab.txt")

    train_step = make_train_step(model, tx, mesh)
    evaluator = eval_lib.Evaluator(model, mesh, cfg.eval_batch_size)
    evaluator.predict = distributed.gather_outputs(evaluator.predict, mesh)

    def save(step, best=False, scores=None):
        meta = {"step": step, "epoch": step / per_epoch, "best_overall": float(best_overall),
                "scores": scores}
        ckpts.save(step, state, meta, best=best)

    def evaluate_and_save(step):
        """Dev scores at `step` (whose state `last/` already holds); `best/` when they beat
        every earlier evaluation."""
        nonlocal best_overall
        with bar.evaluating():  # the training bar steps aside; its rate leaves this time out
            scores = evaluator.scores(state.params, run.dev, progress=progress)
        is_best = scores["overall"] > best_overall
        best_overall = max(best_overall, scores["overall"])
        record = {"step": step, "epoch": round(step / per_epoch, 4), **scores,
                  "best": is_best, "time": time.time()}
        _write_json_line(metrics_path, record)
        board.dev(record)
        log.info("dev at step %d: %s", step, {k: round(v, 4) for k, v in scores.items()})
        if is_best:
            # best/ holds what inference and export need: the parameters, no optimiser state
            ckpts.save_best(step, state.params, {"step": step, "epoch": step / per_epoch,
                                                 "best_overall": float(best_overall),
                                                 "scores": scores})
        return scores

    layout = plan_layout(run.train, cfg, total_steps, mesh.devices.size)
    log.info("train steps: %s (%d shapes)", layout.describe(), layout.num_shapes())
    bar = TrainProgress(total_steps, start_step, per_epoch, progress and live_progress())
    scores = None
    if start_step and (start_step % per_epoch == 0 or start_step == total_steps) and not any(
            r.get("step") == start_step for r in evaluations):
        log.info("step %d ended an epoch whose evaluation did not finish: evaluating it now",
                 start_step)
        scores = evaluate_and_save(start_step)
    batches = iterate_steps(run.train, cfg, layout, start_step, total_steps, run.tokenizer.pad_id)
    prefetch = Prefetcher(batches, lambda arrays: shard_batch(arrays, mesh))
    pending, step, watch = [], start_step, LossWatch()
    started = time.perf_counter()
    try:
        with _StopSignal() as stop:
            for host_batch, device_batch in prefetch:
                state, metrics = train_step(state, device_batch)
                step += 1
                stop.signum = stop.signum or distributed.stop_signal(step)
                pending.append((step, metrics, host_batch.example_ids))
                at_epoch_end = step % per_epoch == 0 or step == total_steps
                if len(pending) >= cfg.log_every or at_epoch_end or stop.signum:
                    _flush(pending, cfg, bar, train_log_path, watch, board, lr_at)
                if (save_every and step % save_every == 0) or at_epoch_end or stop.signum:
                    save(step)  # before evaluating: a failed evaluation loses no step
                if at_epoch_end:
                    scores = evaluate_and_save(step)
                if stop.signum:
                    name = signal.Signals(stop.signum).name
                    raise Interrupted(f"stopped by {name} at step {step}; checkpoint saved in "
                                      f"{out_dir / 'last'}. Continue with --resume", stop.signum)
    finally:
        prefetch.close()
        bar.close()
        ckpts.close()
        board.close()
    elapsed = time.perf_counter() - started
    compiles = train_step._cache_size() if hasattr(train_step, "_cache_size") else None
    summary = {**(scores or {}), "steps": step, "seconds": round(elapsed, 1),
               "input_wait_fraction": round(prefetch.wait_seconds / max(elapsed, 1e-9), 4),
               "train_step_compiles": compiles, "train_layout": layout.describe(),
               "train_shapes_planned": layout.num_shapes(), "eval_buckets": evaluator.planned}
    if jax.process_index() == 0:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_run_plots(out_dir)
    return summary


class LossWatch:
    """Warns once when the logged loss grows by orders of magnitude over its first value (a
    diverging run: too high a learning rate) even while it stays finite."""

    def __init__(self, factor: float = 100.0):
        self.factor, self.first, self.warned = factor, None, False

    def check(self, step: int, loss: float) -> None:
        if not np.isfinite(loss):
            return
        if self.first is None:
            self.first = (step, loss)
        elif not self.warned and loss > self.factor * max(self.first[1], 1e-3):
            self.warned = True
            log.warning("the loss grew from %.4g at step %d to %.4g at step %d: the run is "
                        "diverging. Lower --lr or set --grad-clip", self.first[1], self.first[0],
                        loss, step)


def _flush(pending: list, cfg: TrainConfig, bar: TrainProgress, path: Path, watch: LossWatch,
           board: TensorBoardLog, lr_at) -> None:
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
    if "loss" in mean:
        watch.check(pending[-1][0], mean["loss"])
    bar.completed(pending[-1][0], mean)
    if bar.disabled:  # no bar (a log file, --no-progress): a plain line
        log.info("step %d: %s", pending[-1][0],
                 ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
    record = {"step": pending[-1][0], **mean, "grad_norm": float(np.mean(
        [r["grad_norm"] for r in finite])), **lr_at(pending[-1][0]), "time": time.time()}
    _write_json_line(path, record)
    board.train(record)
    pending.clear()


# ---------------------------------------------------------------------------------------------
# Command line

def _field_type(field: dataclasses.Field):
    if field.metadata.get("type") is not None:
        return field.metadata["type"]
    if field.name == "tasks":
        return lambda text: tuple(x.strip() for x in text.split(",") if x.strip())
    return {"int": int, "float": float, "str": str}[str(field.type)]


def _shown(value) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    return repr(value) if value == "" else str(value)


def build_parser(base: TrainConfig | None = None, base_name: str = "more-epochs"
                 ) -> argparse.ArgumentParser:
    """The command line: one flag per `TrainConfig` field (its help from the field), each
    defaulting to `base`'s value (the preset, or the `--config` file), shown in `--help`."""
    base = base or PRESETS[base_name]
    parser = argparse.ArgumentParser(
        prog=prog("train.multitask"),
        description="Fine-tune BERT on SST-5, Quora paraphrase and STS, with dev evaluation, "
                    "checkpoints and resume. A preset (or --config) gives every setting; each "
                    "flag below overrides one.")
    parser.add_argument("--preset", default="more-epochs", choices=sorted(PRESETS),
                        help="starting configuration (default more-epochs): " + "; ".join(
                            f"{k}: {v}" for k, v in PRESET_NOTES.items()))
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="start from a saved train_config.json instead of a preset; flags "
                             "still override it")
    parser.add_argument("--out", default=None,
                        help="run folder (default checkpoints/PRESET)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (plain log lines only)")
    group = parser.add_argument_group(f"settings (default: {base_name}'s value)")
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(base, field.name)
        kwargs = {"default": None,
                  "help": f"{field.metadata['help']} (default {_shown(default)})"}
        if field.type in ("bool", bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            group.add_argument(flag, type=_field_type(field), metavar=field.name.upper(),
                               **kwargs)
    return parser


def _base_config(argv) -> tuple[TrainConfig, str]:
    """The configuration the flags start from: `--config FILE`, else `--preset` (a first,
    partial parse, so that `--help` can show the real defaults)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="more-epochs", choices=sorted(PRESETS))
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        try:
            return TrainConfig.from_dict(read_json(Path(known.config))).replace(resume=False), \
                known.config
        except FileNotFoundError:
            raise TrainingError(f"--config {known.config}: no such file") from None
        except (TypeError, ValueError) as err:
            raise TrainingError(f"--config {known.config}: not a training configuration "
                                f"({err})") from None
    return PRESETS[known.preset], known.preset


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name) is not None}
    return (base or PRESETS[args.preset]).replace(**overrides)


def main(argv=None) -> int:
    try:
        base, base_name = _base_config(sys.argv[1:] if argv is None else argv)
    except (TrainingError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    parser = build_parser(base, base_name)
    args = parser.parse_args(argv)
    # force=True: orbax/absl configure the root logger on import, which would silence ours.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-save INFO chatter
    try:
        cfg = config_from_args(args, base)
    except ValueError as err:  # TrainConfig's validation names the field
        parser.error(str(err))
    out = args.out or f"checkpoints/{args.preset}"
    try:
        distributed.initialize()  # multi-process runs: see train/distributed.py, README
        files = data_files(cfg.data_dir or None, cfg.data_overrides())
        log.info("run %s: %s", out, json.dumps(cfg.to_dict()))
        summary = train_and_evaluate(cfg, out, files, progress=not args.no_progress)
    except Interrupted as err:
        print(str(err), file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        print(f"\nstopped at once (second interrupt); the checkpoints already in {out} are "
              "intact: continue with --resume", file=sys.stderr)
        return 130
    except (BertJaxError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        hint = eval_lib.resource_hint(err)
        if hint:
            print(f"error: {hint}", file=sys.stderr)
            return 3
        raise
    out = Path(out)
    scores = {k: summary[k] for k in ("sst_acc", "para_acc", "sts_r", "overall") if k in summary}
    written = [path for path in (out / "best", out / "last", out / "metrics.jsonl",
                                 out / "train_log.jsonl", out / "summary.json",
                                 out / "train_config.json", out / "tensorboard",
                                 out / "plots" / "training_curves.png") if path.exists()]
    print(f"trained to step {summary['steps']} in {summary['seconds']:.0f} s (the training "
          f"loop, evaluations included); run folder {out.resolve()}")
    print(eval_lib.closing_block(written, scores, heading="dev scores"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
