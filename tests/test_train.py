"""End-to-end training: presets, loss goes down on real data, resume, signals, faults."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from bert_jax.checkpoints import RunCheckpoints, load_run
from bert_jax.config import PRESETS as MODEL_PRESETS
from bert_jax.heads import init_multitask_params
from bert_jax.model import init_params
from bert_jax.pretrained import embedded_model_dir
from train.config import PRESETS, TASKS, TrainConfig
from train.multitask import TrainingError, data_files, main, train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_init(tmp_path_factory) -> Path:
    """A converted folder holding a tiny random BERT with the real uncased vocabulary."""
    from bert_jax.convert import save_converted
    config = MODEL_PRESETS["tiny"]
    params = init_params(config, jax.random.PRNGKey(0))
    out = tmp_path_factory.mktemp("tiny") / "model"
    save_converted(out, params, config, embedded_model_dir() / "vocab.txt")
    return out


def tiny_config(tiny_init, **changes) -> TrainConfig:
    base = dict(init=str(tiny_init), max_length=32, num_buckets=2, limit_train=80,
                limit_eval=16, eval_batch_size=16, log_every=4, epochs=2, lr=1e-3)
    return TrainConfig(**{**base, **changes})


def last_params(run_dir: Path):
    return jax.device_get(load_run(run_dir, "last").params)


def assert_same_params(a, b, atol=0.0):
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b))
    assert max(diffs) <= atol, max(diffs)


def test_default_config_is_the_best_preset():
    assert TrainConfig() == PRESETS["more-epochs"]


@pytest.mark.parametrize("name, tasks, mode, pooling, para, sts, epochs", [
    ("baseline", ("sst",), "sequential", "cls", "diff", "linear", 5),
    ("multi-dataset", TASKS, "sequential", "cls", "diff", "linear", 5),
    ("cosine", TASKS, "sequential", "cls", "diff", "cosine", 5),
    ("mean-pooling", TASKS, "sequential", "mean", "diff", "cosine", 5),
    ("multitask", TASKS, "multitask", "mean", "diff", "cosine", 5),
    ("concat", TASKS, "multitask", "mean", "concat", "cosine", 5),
    ("more-epochs", TASKS, "multitask", "mean", "concat", "cosine", 10),
])
def test_presets_build_the_heads_and_losses_they_claim(name, tasks, mode, pooling, para, sts,
                                                        epochs):
    cfg = PRESETS[name]
    assert (cfg.tasks, cfg.mode, cfg.pooling, cfg.para_head, cfg.sts_head, cfg.epochs) == (
        tasks, mode, pooling, para, sts, epochs)
    assert (cfg.lr, cfg.batch_size, cfg.dropout, cfg.weight_decay) == (1e-5, 8, 0.1, 0.0)
    params = init_multitask_params(MODEL_PRESETS["tiny"], cfg.head_config(), jax.random.PRNGKey(0))
    assert ("para_hidden" in params) == (para == "concat")
    assert ("sts_regressor" in params) == (sts == "linear")
    assert params["para_hidden"]["kernel"].shape == (64, 32) if para == "concat" else True


def test_sequential_and_multitask_plans(tiny_init, data_dir):
    from train.input_pipeline import epoch_plan, steps_per_epoch
    from train.multitask import load_run_data
    cfg = tiny_config(tiny_init, limit_train=40)
    run = load_run_data(cfg, data_files(str(data_dir)))
    multi = epoch_plan(run.train, cfg, 0)
    assert len(multi) == steps_per_epoch(run.train, cfg) == 5
    assert all(set(step) == set(TASKS) for step in multi)
    seq_cfg = cfg.replace(mode="sequential")
    seq = epoch_plan(run.train, seq_cfg, 0)
    assert [next(iter(s)) for s in seq] == ["sst"] * 5 + ["para"] * 5 + ["sts"] * 5
    # Same seed and epoch: same order; another epoch: another order.
    again = epoch_plan(run.train, cfg, 0)
    assert all(np.array_equal(a[t], b[t]) for a, b in zip(multi, again) for t in TASKS)
    other = epoch_plan(run.train, cfg, 1)
    assert any(not np.array_equal(a["sst"], b["sst"]) for a, b in zip(multi, other))


def test_a_few_dozen_steps_lower_each_task_loss(data_dir, tmp_path):
    """The real all-MiniLM-L6-v2 on real data slices: 2 passes over 30 batches per task."""
    cfg = TrainConfig(max_length=32, num_buckets=1, limit_train=240, limit_eval=64,
                      eval_batch_size=32, log_every=10, epochs=2, lr=1e-4)
    summary = train_and_evaluate(cfg, tmp_path / "run", data_files(str(data_dir)),
                                 progress=False, save_every=0)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").open()]
    assert [r["step"] for r in log] == [10, 20, 30, 40, 50, 60]
    for task in TASKS:
        first, last = log[0][f"loss_{task}"], log[-1][f"loss_{task}"]
        assert last < first, (task, first, last)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert len(metrics) == 2 and {"sst_acc", "para_acc", "sts_r", "overall"} <= set(metrics[-1])
    assert summary["sts_r"] > 0.5  # the pretrained sentence encoder is good at STS from the start
    assert summary["train_step_compiles"] == 1


@pytest.mark.parametrize("changes", [{}, {"layer_lr_decay": 0.8, "head_lr": 1e-2}],
                         ids=["one-rate", "layer-decay"])
def test_stopped_then_resumed_run_equals_uninterrupted(tiny_init, data_dir, tmp_path, changes):
    files = data_files(str(data_dir))
    cfg = tiny_config(tiny_init, **changes)  # 10 steps per epoch, 2 epochs
    train_and_evaluate(cfg, tmp_path / "full", files, progress=False, save_every=3)
    train_and_evaluate(cfg.replace(max_steps=7), tmp_path / "split", files, progress=False,
                       save_every=3)
    assert RunCheckpoints(tmp_path / "split").latest_step() == 7
    train_and_evaluate(cfg, tmp_path / "split", files, progress=False, save_every=3, resume=True)
    assert_same_params(last_params(tmp_path / "full"), last_params(tmp_path / "split"))
    # Without --resume an existing run is not overwritten.
    with pytest.raises(TrainingError, match="pass --resume"):
        train_and_evaluate(cfg, tmp_path / "full", files, progress=False)


def test_resume_refuses_a_changed_configuration(tiny_init, data_dir, tmp_path):
    files = data_files(str(data_dir))
    cfg = tiny_config(tiny_init, max_steps=2)
    train_and_evaluate(cfg, tmp_path / "run", files, progress=False)
    with pytest.raises(TrainingError, match="lr: 0.001 -> 0.002"):
        train_and_evaluate(cfg.replace(lr=2e-3), tmp_path / "run", files, progress=False,
                           resume=True)


def test_init_with_other_shapes_is_refused_on_resume(tiny_init, data_dir, tmp_path):
    """Same --init path, different model behind it: both shapes in the message."""
    from bert_jax.convert import save_converted
    files = data_files(str(data_dir))
    model_dir = tmp_path / "model"
    save_converted(model_dir, init_params(MODEL_PRESETS["tiny"], jax.random.PRNGKey(1)),
                   MODEL_PRESETS["tiny"], embedded_model_dir() / "vocab.txt")
    cfg = tiny_config(tiny_init, init=str(model_dir), max_steps=2)
    train_and_evaluate(cfg, tmp_path / "run", files, progress=False)
    wider = MODEL_PRESETS["tiny"].replace(hidden_size=48, intermediate_size=96)
    save_converted(model_dir, init_params(wider, jax.random.PRNGKey(1)), wider,
                   embedded_model_dir() / "vocab.txt", overwrite=True)
    with pytest.raises(TrainingError, match="hidden_size 32 in the run vs 48 in --init"):
        train_and_evaluate(cfg.replace(max_steps=4), tmp_path / "run", files, progress=False,
                           resume=True)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_init, data_dir, tmp_path):
    files = data_files(str(data_dir))
    cfg = tiny_config(tiny_init, lr=1e12, log_every=1)  # diverges within a few steps
    with pytest.raises(TrainingError, match=r"non-finite loss at step \d+ \(tasks \["):
        train_and_evaluate(cfg, tmp_path / "run", files, progress=False, save_every=1)
    ckpts = RunCheckpoints(tmp_path / "run")
    if ckpts.latest_step() is not None:
        params = last_params(tmp_path / "run")
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
    # With --nonfinite skip the run goes on to the end.
    summary = train_and_evaluate(cfg.replace(nonfinite="skip", max_steps=6), tmp_path / "skip",
                                 files, progress=False, save_every=0)
    assert summary["steps"] == 6


def _cli(args, **kwargs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "train.multitask", "--no-progress", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)


def _tiny_cli_args(tiny_init, data_dir, out, steps):
    return ["--init", str(tiny_init), "--data-dir", str(data_dir), "--out", str(out),
            "--max-length", "32", "--num-buckets", "2", "--limit-train", "400",
            "--limit-eval", "16", "--eval-batch-size", "16", "--epochs", "1",
            "--max-steps", str(steps), "--save-every", "3", "--lr", "1e-3", "--log-every", "5"]


def _wait_for_checkpoint(out: Path, proc, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        if (out / "last").is_dir() and any(p.name.isdigit() for p in (out / "last").iterdir()):
            return
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


def test_sigkill_at_a_random_moment_then_resume_reaches_the_same_parameters(
        tiny_init, data_dir, tmp_path):
    steps = 30
    full = _cli(_tiny_cli_args(tiny_init, data_dir, tmp_path / "full", steps))
    assert full.wait(timeout=300) == 0, full.stdout.read()
    out = tmp_path / "killed"
    proc = _cli(_tiny_cli_args(tiny_init, data_dir, out, steps))
    _wait_for_checkpoint(out, proc)
    time.sleep(np.random.default_rng().uniform(0.0, 2.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    resumed = _cli(_tiny_cli_args(tiny_init, data_dir, out, steps) + ["--resume"])
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert_same_params(last_params(tmp_path / "full"), last_params(out))


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_init, data_dir, tmp_path):
    out = tmp_path / "run"
    proc = _cli(_tiny_cli_args(tiny_init, data_dir, out, 100000).__add__(["--save-every", "0"]))
    deadline = time.time() + 120
    while not (out / "train_log.jsonl").exists():  # training has started
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "stopped by SIGTERM" in output and "Traceback" not in output
    assert RunCheckpoints(out).latest_step() is not None


def test_cli_errors_are_one_clear_line(tmp_path):
    missing = tmp_path / "nowhere"
    code = main(["--data-dir", str(missing), "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2


def test_out_of_memory_errors_get_a_hint():
    from train.evaluate import resource_hint
    err = RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123 bytes.")
    hint = resource_hint(err)
    assert "--batch-size" in hint and "bfloat16" in hint
    assert resource_hint(ValueError("something else")) is None


def test_auto_dtype_is_bfloat16_on_accelerators_only():
    cfg = TrainConfig()
    assert cfg.dtype == "auto"
    assert [cfg.compute_dtype(p) for p in ("cpu", "gpu", "tpu")] == ["float32", "bfloat16",
                                                                      "bfloat16"]
    assert cfg.replace(dtype="float32").compute_dtype("gpu") == "float32"
    assert cfg.replace(dtype="bfloat16").compute_dtype("cpu") == "bfloat16"
    with pytest.raises(ValueError, match="dtype must be"):
        cfg.replace(dtype="float16")
