"""Multitask fine-tuning: `python -m train.multitask [--preset NAME] [flags]`.

Loads the data and the pretrained encoder, trains with the data-parallel step, evaluates on dev at
each epoch's end, and writes to `--out`: `last/` and `best/` checkpoints, `metrics.jsonl` (one line
per evaluation), `train_log.jsonl` (losses, gradient norm, learning rates at log intervals),
`train_config.json`, `config.json`, `vocab.txt`, `tensorboard/` (both logs' curves as event files:
train/tensorboard_log.py). `--resume` continues from the newest intact checkpoint with the same
data order. Everything here is a function a notebook can call: `train_and_evaluate(cfg, ...)`.

The loop's parts live beside it: the data (train/run_data.py), the command line
(train/flags.py), the run folder's logs and resume checks (train/run_folder.py), the log points
(train/step_log.py), the bar (train/progress.py) and signals (train/signals.py).
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import sys
import time
from pathlib import Path

import jax
import numpy as np

from bert_jax.checkpoints import RunCheckpoints, run_lock
from bert_jax.errors import BertJaxError, ChecksumError, ConfigError, ConversionError
from bert_jax.heads import MultitaskBert, init_multitask_params
from bert_jax.plots import write_run_plots
from bert_jax.pretrained import load_pretrained
from bert_jax.token_cache import live_progress
from train import distributed
from train import evaluate as eval_lib
from train.config import TrainConfig
from train.errors import Interrupted, TrainingError
from train.flags import base_config, build_parser, config_from_args
from train.input_pipeline import Prefetcher, iterate_steps, plan_layout, steps_per_epoch
from train.progress import TrainProgress
from train.run_data import RunData, check_labels_vary, data_files, load_run_data
from train.run_folder import (check_model_shapes, check_resume_config, keep_log_until,
                              write_json_line)
from train.signals import StopSignal
from train.step import (backend_report, check_divisible, create_state, learning_rates,
                        make_mesh, make_optimizer, make_train_step, shard_batch)
from train.step_log import LossWatch, flush_step_metrics
from train.tensorboard_log import TensorBoardLog

__all__ = ["Interrupted", "RunData", "TrainingError", "build_parser", "config_from_args",
           "data_files", "load_run_data", "main", "train_and_evaluate"]

log = logging.getLogger("train.multitask")


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
    except (ConfigError, ConversionError, ChecksumError) as err:  # names the field or file
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


def _train(cfg: TrainConfig, out_dir: Path, files: dict[tuple[str, str], Path], *, resume: bool,
           save_every: int, progress: bool, run_data: RunData | None) -> dict:
    if resume:
        check_resume_config(out_dir, cfg)
    mesh = make_mesh()
    check_divisible(cfg.batch_size, mesh)
    check_divisible(cfg.eval_batch_size, mesh, "eval batch size")

    dtype = cfg.compute_dtype(jax.default_backend())
    bert_config, encoder_params = _load_encoder(cfg, dtype)
    run = run_data or load_run_data(cfg, files)
    check_labels_vary(run.train)
    backend, fallback = backend_report()
    log.info("%s; computing in %s", backend, dtype)
    if fallback:
        log.warning(fallback)
    check_model_shapes(out_dir, bert_config, run.tokenizer, cfg.init, resume)
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
    evaluations = keep_log_until(metrics_path, start_step)
    keep_log_until(train_log_path, start_step)
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
        write_json_line(metrics_path, record)
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
        with StopSignal() as stop:
            for host_batch, device_batch in prefetch:
                state, metrics = train_step(state, device_batch)
                step += 1
                stop.signum = stop.signum or distributed.stop_signal(step)
                pending.append((step, metrics, host_batch.example_ids))
                at_epoch_end = step % per_epoch == 0 or step == total_steps
                if len(pending) >= cfg.log_every or at_epoch_end or stop.signum:
                    flush_step_metrics(pending, cfg, bar, train_log_path, watch, board, lr_at)
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


def main(argv=None) -> int:
    try:
        base, base_name = base_config(sys.argv[1:] if argv is None else argv)
    except BertJaxError as err:  # TrainingError, CheckpointError, ConfigError
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
    except ConfigError as err:  # TrainConfig's validation names the field
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
    except BertJaxError as err:
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
