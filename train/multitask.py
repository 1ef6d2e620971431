"""Multitask fine-tuning: `python -m train.multitask [--preset NAME] [flags]`.

Loads the data and the pretrained encoder, trains with the data-parallel step, evaluates on dev at
each epoch's end, and writes to `--out`: `last/` and `best/` checkpoints, `metrics.jsonl` (one line
per evaluation), `train_log.jsonl` (losses, gradient norm, learning rates at log intervals),
`train_config.json`, `config.json`, `vocab.txt`, `tensorboard/` (both logs' curves as event files:
train/tensorboard_log.py). `--resume` continues from the newest intact checkpoint with the same
data order. Everything here is a function a notebook can call: `train_and_evaluate(cfg, ...)`.

A training runs in four parts: `_set_up` (checks, model, optimiser, fresh state, compiled steps),
`_restore` (the checkpoint to continue from, the logs cut back to it), `_loop` (steps, saves,
evaluations; what it changes is a `_LoopState`) and `_finish` (summary.json, plots). The loop's
parts live beside it: the data (train/run_data.py), the command line (train/flags.py), the run
folder's logs and resume checks (train/run_folder.py), the log points (train/step_log.py), the
bar (train/progress.py), signals (train/signals.py), the optimiser (train/optimizer.py), the
mesh (train/sharding.py) and the dev evaluation (bert_jax/evaluation.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from bert_jax.checkpoints import RunCheckpoints, run_lock
from bert_jax.config import BertConfig
from bert_jax.errors import BertJaxError, ChecksumError, ConfigError, ConversionError
from bert_jax.evaluation import Evaluator, make_predict_step
from bert_jax.heads import MultitaskBert, init_multitask_params
from bert_jax.plots import write_run_plots
from bert_jax.pretrained import load_pretrained
from bert_jax.token_cache import live_progress
from train import distributed
from train.backend import backend_report
from train.config import TrainConfig
from train.errors import Interrupted, TrainingError
from train.evaluate import closing_block, resource_hint
from train.flags import (base_config, build_parser, changed_settings, check_backend,
                         check_new_run, config_from_args)
from train.input_pipeline import Prefetcher, iterate_steps, plan_layout, steps_per_epoch
from train.optimizer import earlier_layout, group_schedules, make_optimizer
from train.progress import RunPace, TrainProgress
from train.run_data import (RunData, check_labels_vary, data_files, load_run_data, run_files,
                            with_user_tasks)
from train.run_folder import (DATA_FILE, DEV_LOG_KEYS, check_model_shapes, check_resume_config,
                              check_resume_data, check_run_folder, final_scores, keep_log_until,
                              record_data, write_json_line)
from train.sharding import check_divisible, make_mesh, shard_batch
from train.signals import StopSignal
from train.step import TrainState, create_state, make_train_step, step_signature
from train.step_log import LossWatch, flush_step_metrics
from train.tensorboard_log import TensorBoardLog

__all__ = ["Interrupted", "RunData", "TrainingError", "build_parser", "config_from_args",
           "data_files", "load_run_data", "main", "train_and_evaluate"]

log = logging.getLogger("train.multitask")


def train_and_evaluate(cfg: TrainConfig, out_dir: str | Path,
                       files: dict[tuple[str, str], Path] | None = None, *,
                       data_dir: str | None = None, resume: bool | None = None,
                       save_every: int | None = None, progress: bool = True,
                       run_data: RunData | None = None, tasks=None) -> dict:
    """Train `cfg` into `out_dir`; returns the final dev scores (and a few run facts).

    Data: `files` ({(task, split): path}), else `cfg`'s data fields. `tasks`: your own task
    definitions (`bert_jax.tasks.Task`s, or a TOML task file's path), trained beside
    `cfg.tasks`. `data_dir`, `resume` and `save_every`, when given, replace those fields of
    `cfg` (a shorthand for `cfg.replace`), so `train_config.json` records what the run did. One training at a time writes `out_dir` (a
    second one is refused: `run_lock`). `cfg.resume` continues from the newest intact
    checkpoint in `out_dir/last` and refuses when there is none.
    """
    given = {"data_dir": data_dir, "resume": resume, "save_every": save_every}
    cfg = with_user_tasks(cfg.replace(**{k: v for k, v in given.items() if v is not None}),
                          tasks)
    out_dir = Path(out_dir)
    check_run_folder(out_dir, cfg.resume)  # a folder that is not a run is never written into
    files = run_files(cfg, files)  # before any write
    out_dir.mkdir(parents=True, exist_ok=True)
    # Every process of a multi-host run writes the same folder; the first one holds the lock.
    lock = run_lock(out_dir) if jax.process_index() == 0 else contextlib.nullcontext()
    with distributed.guard(), lock:
        return _train(cfg, out_dir, files, resume=cfg.resume, save_every=cfg.save_every,
                      progress=progress, run_data=run_data)


def _load_encoder(cfg: TrainConfig):
    """(BertConfig, encoder params) of `cfg.init`; a config that cannot work is refused here."""
    try:
        bert_config, encoder_params = load_pretrained(cfg.init)
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
    return bert_config, encoder_params


@dataclasses.dataclass
class _Run:
    """What `_set_up` builds for one training and the loop only reads."""
    cfg: TrainConfig
    out_dir: Path
    data: RunData
    bert_config: BertConfig
    mesh: Mesh
    fresh: TrainState | None  # the initial state, what a restore is shaped like (then None)
    train_step: Callable
    evaluator: Evaluator
    per_epoch: int
    total_steps: int
    progress: bool
    ckpts: RunCheckpoints
    metrics_path: Path = dataclasses.field(init=False)
    train_log_path: Path = dataclasses.field(init=False)

    def __post_init__(self):
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.train_log_path = self.out_dir / "train_log.jsonl"


@dataclasses.dataclass
class _LoopState:
    """What the loop changes: the training state and its step, the best dev score so far (what
    `best/` holds), the dev records kept in metrics.jsonl and the last dev scores."""
    state: TrainState
    step: int
    best_overall: float
    evaluations: list[dict]
    scores: dict | None = None


def _train(cfg: TrainConfig, out_dir: Path, files: dict[tuple[str, str], Path], *, resume: bool,
           save_every: int, progress: bool, run_data: RunData | None) -> dict:
    """Set-up, restore, the loop, the summary; the checkpoints and TensorBoard log are closed
    however it ends."""
    run = _set_up(cfg, out_dir, files, resume=resume, progress=progress, run_data=run_data)
    try:
        loop = _restore(run, resume)
        board = TensorBoardLog(out_dir, cfg.tensorboard, loop.step)
        try:
            _write_run_files(run)
            timing = _loop(run, loop, board, save_every)
        finally:
            board.close()
    finally:
        run.ckpts.close()
    return _finish(run, loop, timing)


def _set_up(cfg: TrainConfig, out_dir: Path, files: dict[tuple[str, str], Path], *,
            resume: bool, progress: bool, run_data: RunData | None) -> _Run:
    """Checks that need nothing loaded, the mesh, the encoder, the data and their checks, the
    model, optimiser and fresh state, the compiled steps and the checkpoint store."""
    if resume:
        check_resume_config(out_dir, cfg)
    mesh = make_mesh()
    check_divisible(cfg.batch_size, mesh)
    check_divisible(cfg.eval_batch_size, mesh, "eval batch size")

    dtype = cfg.compute_dtype(jax.default_backend())
    bert_config, encoder_params = _load_encoder(cfg)
    data = run_data or load_run_data(cfg, files)
    if resume:
        check_resume_data(out_dir, data.train)  # other sentences or labels: refused
    check_labels_vary(data.train)
    backend, fallback = backend_report()
    log.info("%s; computing in %s", backend, dtype)
    if fallback:
        log.warning(fallback)
    check_model_shapes(out_dir, bert_config, data.tokenizer, cfg.init, resume)
    distributed.check_same_run(cfg, data, encoder_params)  # multi-process: same everywhere
    model = MultitaskBert(bert_config, cfg.head_config(), dtype=jnp.dtype(dtype),
                          attention_impl=cfg.attention_impl)
    params = init_multitask_params(bert_config, cfg.head_config(),
                                   jax.random.PRNGKey(cfg.seed), encoder_params)
    params = distributed.replicate(params, mesh)  # multi-process: skips device_put's gathers
    per_epoch = steps_per_epoch(data.train, cfg)
    total_steps = cfg.epochs * per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    tx = make_optimizer(cfg, total_steps, bert_config.num_hidden_layers)
    fresh = create_state(params, tx, cfg.seed, mesh)
    # Dev scores are computed in every process: the outputs gathered onto each.
    predict = distributed.gather_outputs(make_predict_step(model), mesh)
    return _Run(cfg=cfg, out_dir=out_dir, data=data, bert_config=bert_config, mesh=mesh,
                fresh=fresh, train_step=make_train_step(model, tx, mesh, tasks=cfg.loss_tasks()),
                evaluator=Evaluator(model, mesh, cfg.eval_batch_size, predict=predict),
                per_epoch=per_epoch, total_steps=total_steps, progress=progress,
                ckpts=RunCheckpoints(out_dir, keep_last=cfg.keep_last))


def _restore(run: _Run, resume: bool) -> _LoopState:
    """The loop's start: the newest intact checkpoint with `resume` (refused when there is
    none), else the fresh state (refused when the folder holds checkpoints); the logs cut
    back to the steps the checkpoint has."""
    state, start_step, best_overall = run.fresh, 0, -np.inf
    run.fresh = None  # the restored state replaces it: no second copy kept
    if resume:
        if run.ckpts.latest_step() is None:
            raise TrainingError(
                f"{run.out_dir}: --resume, but {run.out_dir / 'last'} holds no checkpoint to "
                "continue from. Start the run without --resume")
        state, meta, _ = run.ckpts.restore(state, earlier=earlier_layout(state, group_schedules(
            run.cfg, run.total_steps, run.bert_config.num_hidden_layers)))
        start_step, best_overall = int(state.step), meta.get("best_overall", -np.inf)
        log.info("resumed from %s at step %d", run.out_dir / "last", start_step)
    elif run.ckpts.latest_step() is not None:
        raise TrainingError(f"{run.out_dir} already holds checkpoints: pass --resume to continue "
                            "that run, or choose another --out")
    # Logs hold only the steps the checkpoint has (a fresh run: none of an earlier attempt's).
    evaluations = keep_log_until(run.metrics_path, start_step, DEV_LOG_KEYS)
    keep_log_until(run.train_log_path, start_step)
    best_overall = max([best_overall] + [r["overall"] for r in evaluations if "overall" in r])
    return _LoopState(state, start_step, best_overall, evaluations)


def _write_run_files(run: _Run) -> None:
    """train_config.json, config.json and vocab.txt (process 0)."""
    if jax.process_index() == 0:
        run.cfg.to_json(run.out_dir / "train_config.json")
        record_data(run.out_dir, run.data.train)
        run.bert_config.to_json(run.out_dir / "config.json")
        shutil.copyfile(run.data.tokenizer.vocab_file, run.out_dir / "vocab.txt")


def _save(run: _Run, loop: _LoopState) -> None:
    """The whole state at `loop.step` into last/."""
    meta = {"step": loop.step, "epoch": loop.step / run.per_epoch,
            "best_overall": float(loop.best_overall), "scores": None}
    run.ckpts.save(loop.step, loop.state, meta)


def _evaluate_and_save(run: _Run, loop: _LoopState, board: TensorBoardLog,
                       bar: TrainProgress) -> None:
    """Dev scores at `loop.step` (whose state `last/` already holds) into `loop.scores`,
    metrics.jsonl and TensorBoard; `best/` when they beat every earlier evaluation."""
    step = loop.step
    with bar.evaluating():  # the training bar steps aside; its rate leaves this time out
        scores = run.evaluator.scores(loop.state.params, run.data.dev, progress=run.progress)
    is_best = scores["overall"] > loop.best_overall
    loop.best_overall = max(loop.best_overall, scores["overall"])
    record = {"step": step, "epoch": round(step / run.per_epoch, 4), **scores,
              "best": is_best, "time": time.time()}
    write_json_line(run.metrics_path, record)
    board.dev(record)
    log.info("dev at step %d: %s", step, {k: round(v, 4) for k, v in scores.items()})
    if is_best:
        # best/ holds what inference and export need: the parameters, no optimiser state
        run.ckpts.save_best(step, loop.state.params, {
            "step": step, "epoch": step / run.per_epoch,
            "best_overall": float(loop.best_overall), "scores": scores})
    loop.scores = scores


def _loop(run: _Run, loop: _LoopState, board: TensorBoardLog, save_every: int) -> dict:
    """Train from `loop.step` to the run's end (or a stop signal: Interrupted), saving and
    evaluating on the way; returns the loop's timing and shapes for the summary."""
    cfg, per_epoch, total_steps = run.cfg, run.per_epoch, run.total_steps
    layout = plan_layout(run.data.train, cfg, total_steps, run.mesh.devices.size)
    log.info("train steps: %s (%d shapes)", layout.describe(), layout.num_shapes())
    bar = TrainProgress(total_steps, loop.step, per_epoch, run.progress and live_progress())
    pace = RunPace(total_steps, loop.step, jax.default_backend(), bar.disabled, log, bar)
    if loop.step and (loop.step % per_epoch == 0 or loop.step == total_steps) and not any(
            r.get("step") == loop.step for r in loop.evaluations):
        log.info("step %d ended an epoch whose evaluation did not finish: evaluating it now",
                 loop.step)
        _evaluate_and_save(run, loop, board, bar)
    batches = iterate_steps(run.data.train, cfg, layout, loop.step, total_steps,
                            run.data.tokenizer.pad_id)
    prefetch = Prefetcher(batches, lambda arrays: shard_batch(arrays, run.mesh))
    pending, watch, shapes = [], LossWatch(), set()
    started = time.perf_counter()
    try:
        with StopSignal() as stop:
            for host_batch, device_batch in prefetch:
                shapes.add(signature := step_signature(device_batch))  # one compile each
                pace.before(host_batch.arrays, signature)  # a new shape: said in a plain log
                loop.state, metrics = run.train_step(loop.state, device_batch)
                loop.step += 1
                step = loop.step
                pace.after(step, metrics)  # step 1's loss; the run's length at this pace
                stop.signum = stop.signum or distributed.stop_signal(step)
                pending.append((step, metrics, host_batch.example_ids))
                at_epoch_end = step % per_epoch == 0 or step == total_steps
                if len(pending) >= cfg.log_every or at_epoch_end or stop.signum:
                    flush_step_metrics(pending, cfg, bar, run.train_log_path, watch, board)
                if (save_every and step % save_every == 0) or at_epoch_end or stop.signum:
                    _save(run, loop)  # before evaluating: a failed evaluation loses no step
                if at_epoch_end:
                    _evaluate_and_save(run, loop, board, bar)
                if stop.signum:
                    name = signal.Signals(stop.signum).name
                    raise Interrupted(f"stopped by {name} at step {step}; checkpoint saved in "
                                      f"{run.out_dir / 'last'}. Continue with --resume",
                                      stop.signum)
    finally:
        prefetch.close()
        bar.close()
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "wait_seconds": prefetch.wait_seconds, "layout": layout,
            "shapes": len(shapes)}


def _finish(run: _Run, loop: _LoopState, timing: dict) -> dict:
    """The run's summary (the last dev scores and the loop's facts), into summary.json with
    the run's plots (process 0)."""
    elapsed, layout = timing["seconds"], timing["layout"]
    scores = loop.scores or final_scores(loop.evaluations, loop.step)  # a finished run's too
    summary = {**scores, "steps": loop.step, "seconds": round(elapsed, 1),
               "input_wait_fraction": round(timing["wait_seconds"] / max(elapsed, 1e-9), 4),
               "train_step_compiles": timing["shapes"], "train_layout": layout.describe(),
               "train_shapes_planned": layout.num_shapes(),
               "eval_buckets": run.evaluator.planned}
    if jax.process_index() == 0:
        (run.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_run_plots(run.out_dir)
    return summary


# What a run writes into its folder (closing list: folders said as such by closing_block).
RUN_OUTPUTS = ("best", "last", "plots", "tensorboard", "config.json", "vocab.txt",
               "train_config.json", DATA_FILE, "train_log.jsonl", "metrics.jsonl", "summary.json")


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
    out = args.out or f"checkpoints/{args.preset}"
    try:
        cfg = config_from_args(args, base, Path(out))
    except ConfigError as err:  # TrainConfig's validation names the field
        parser.error(str(err))
    except BertJaxError as err:  # a task file's mistake: one line
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        distributed.initialize()  # multi-process runs: see train/distributed.py, README
        check_new_run(Path(out), cfg.resume)
        check_backend(args.allow_cpu, jax.default_backend(),
                      f"{cfg.max_steps} steps" if cfg.max_steps else f"{cfg.epochs} epochs")
        log.info("run %s: %s with %s (every setting: %s)", out, base_name,
                 json.dumps(changed_settings(cfg, base)), Path(out) / "train_config.json")
        summary = train_and_evaluate(cfg, out, progress=not args.no_progress)
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
        hint = resource_hint(err)
        if hint:
            print(f"error: {hint}", file=sys.stderr)
            return 3
        raise
    out = Path(out)
    scores = {k: summary[k] for k in [t.score_name for t in cfg.task_definitions()] + ["overall"]
              if k in summary}
    written = [out / name for name in RUN_OUTPUTS if (out / name).exists()]
    print(f"trained to step {summary['steps']} in {summary['seconds']:.0f} s (the training "
          f"loop, evaluations included); run folder {out.resolve()}")
    print(closing_block(written, scores, heading="dev scores"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
