"""End-to-end training: presets, loss goes down on real data, resume, signals, faults."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.batch_types import PaddedInputs, Sentences, TaskLabels
from bert_jax.checkpoints import RunCheckpoints, load_run
from bert_jax.config import PRESETS as MODEL_PRESETS
from bert_jax.heads import MultitaskBert, init_multitask_params
from bert_jax.model import init_params
from bert_jax.converted import save_converted
from bert_jax.embedded import embedded_model_dir
from train.config import PRESETS, TASKS, TrainConfig
from train.multitask import TrainingError, data_files, main, train_and_evaluate
from train.optimizer import make_optimizer
from train.sharding import make_mesh
from train.step import create_state, task_losses

from test_step import adam_states, earlier_checkpoint_state, reference_optimizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_init(tmp_path_factory) -> Path:
    """A converted folder holding a tiny random BERT with the real uncased vocabulary."""
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
    """Each preset's settings, and on a fixed batch of its tasks the losses the train step
    minimises (`task_losses` of the model's outputs) equal those computed in numpy from the
    pooled sentence embeddings through the preset's heads: SST cross-entropy, paraphrase binary
    cross-entropy on the logit, STS squared error of 5 cos(u, v) or of a linear layer on u - v."""
    cfg = PRESETS[name]
    assert (cfg.tasks, cfg.mode, cfg.pooling, cfg.para_head, cfg.sts_head, cfg.epochs) == (
        tasks, mode, pooling, para, sts, epochs)
    assert (cfg.lr, cfg.batch_size, cfg.dropout, cfg.weight_decay) == (1e-5, 8, 0.1, 0.0)
    config = MODEL_PRESETS["tiny"]
    model = MultitaskBert(config, cfg.head_config())
    params = init_multitask_params(config, cfg.head_config(), jax.random.PRNGKey(0))
    if para == "concat":  # [|u - v|, u * v] -> hidden -> logit
        assert params["para_hidden"]["kernel"].shape == (64, 32)
        assert params["para_classifier"]["kernel"].shape == (32, 1)
    else:  # u - v -> logit
        assert "para_hidden" not in params
        assert params["para_classifier"]["kernel"].shape == (32, 1)
    assert ("sts_regressor" in params) == (sts == "linear")

    rng = np.random.default_rng(0)
    sides = {t: [_sentences(rng) for _ in cfg.head_config().task(t).sides] for t in tasks}
    labels = TaskLabels({t: value for t, value in (
        ("sst", rng.integers(0, 5, 4).astype(np.int32)),
        ("para", np.array([0, 1, 1, 0], np.int32)),
        ("sts", rng.uniform(0, 5, 4).astype(np.float32))) if t in tasks})
    inputs = PaddedInputs({t: tuple(Sentences(i, m) for i, m in s) for t, s in sides.items()})
    losses = {t: float(v) for t, v in task_losses(model.apply({"params": params}, inputs),
                                                  labels, model.heads.tasks).items()}
    assert set(losses) == set(tasks)

    def hidden(ids, mask):
        out = model.apply({"params": params}, ids, mask, method=lambda m, i, k: m.bert(
            i, k, jnp.zeros_like(i), deterministic=True))
        if pooling == "cls":
            return np.asarray(out.pooler_output, np.float64)
        h, k = np.asarray(out.last_hidden_state, np.float64), mask[..., None]
        return (h * k).sum(1) / k.sum(1)  # the mean over the sentence's tokens

    dense = lambda x, name: x @ np.asarray(params[name]["kernel"], np.float64) + np.asarray(
        params[name]["bias"], np.float64)
    want = {}
    if "sst" in tasks:
        logits = dense(hidden(*sides["sst"][0]), "sst_classifier")
        log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        want["sst"] = -log_p[np.arange(4), labels["sst"]].mean()
    if "para" in tasks:
        u, v = (hidden(*side) for side in sides["para"])
        x = u - v if para == "diff" else np.maximum(
            dense(np.concatenate([np.abs(u - v), u * v], -1), "para_hidden"), 0)
        p = 1 / (1 + np.exp(-dense(x, "para_classifier")[:, 0]))
        gold = labels["para"]
        want["para"] = -(gold * np.log(p) + (1 - gold) * np.log(1 - p)).mean()
    if "sts" in tasks:
        u, v = (hidden(*side) for side in sides["sts"])
        score = (5 * (u * v).sum(-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
                 if sts == "cosine" else dense(u - v, "sts_regressor")[:, 0])
        want["sts"] = ((score - labels["sts"]) ** 2).mean()
    assert losses == pytest.approx(want, rel=1e-4, abs=1e-6)


def _sentences(rng, batch: int = 4, length: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and mask [batch, length]: lengths 3..length, ids of the tiny vocabulary."""
    lengths = rng.integers(3, length + 1, size=batch)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    return rng.integers(5, 1000, size=(batch, length)).astype(np.int32) * mask, mask


@pytest.mark.slow
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


@pytest.mark.slow
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
    # The folder holds what the README says a run of the default model holds, within its size:
    # two whole states in last/ (one per epoch end) and the parameters in best/.
    stated = re.search(r"a full run of the default model: about ([\d.]+) GB",
                       (Path(__file__).parents[1] / "README.md").read_text())
    assert stated, "README.md no longer states a run folder's size"
    size = sum(p.stat().st_size for p in (tmp_path / "run").rglob("*") if p.is_file())
    assert sorted(int(p.name) for p in (tmp_path / "run" / "last").iterdir()) == [30, 60]
    assert len(list((tmp_path / "run" / "best").iterdir())) == 1
    assert size <= 1.1 * float(stated.group(1)) * 1e9, f"{size / 1e6:.0f} MB"
    assert summary["sts_r"] > 0.5  # the pretrained sentence encoder is good at STS from the start
    assert summary["train_step_compiles"] == 1


@pytest.mark.parametrize("changes", [{}, {"layer_lr_decay": 0.8, "head_lr": 1e-2}],
                         ids=["one-rate", "layer-decay"])
@pytest.mark.slow
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


@pytest.mark.slow
def test_resume_converts_a_checkpoint_of_the_earlier_optimizer_layout(tiny_init, data_dir,
                                                                      tmp_path, caplog):
    """A run saved by an earlier version (its optimiser state the plain optax chain, no finite
    check, no injected rates) resumes from its newest checkpoint, says it converted it, and
    ends where the uninterrupted run ends."""
    files = data_files(str(data_dir))
    cfg = tiny_config(tiny_init, layer_lr_decay=0.8, head_lr=1e-2, grad_clip=1.0)
    train_and_evaluate(cfg, tmp_path / "full", files, progress=False, save_every=0)
    out = tmp_path / "split"
    train_and_evaluate(cfg.replace(max_steps=7), out, files, progress=False, save_every=0)
    ckpts = RunCheckpoints(out)
    raw, meta, step = ckpts.restore(None)
    tx = make_optimizer(cfg, 20, MODEL_PRESETS["tiny"].num_hidden_layers)  # 2 epochs of 10
    fresh = create_state(raw["params"], tx, cfg.seed, make_mesh(jax.devices()[:1]))
    state, _, _ = ckpts.restore(fresh, step=step)
    ref_tx = reference_optimizer(cfg, 20, MODEL_PRESETS["tiny"].num_hidden_layers)[0]
    adams = jax.device_get(adam_states(state.opt_state))
    earlier = earlier_checkpoint_state(ref_tx.init(raw["params"]), adams)
    ckpts.save(step, jax.device_get(state.replace(opt_state=earlier)), meta)  # over step 7
    ckpts.close()
    with caplog.at_level("INFO"):
        train_and_evaluate(cfg, out, files, progress=False, save_every=0, resume=True)
    assert f"{out / 'last' / '7'}: the checkpoint's optimiser state was written by an earlier " \
           "version and was converted" in caplog.text
    assert f"resumed from {out / 'last'} at step 7" in caplog.text
    assert "damaged" not in caplog.text
    full, split = last_params(tmp_path / "full"), last_params(out)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), full, split)


@pytest.mark.slow
def test_resume_refuses_a_changed_configuration(tiny_init, data_dir, tmp_path):
    files = data_files(str(data_dir))
    cfg = tiny_config(tiny_init, max_steps=2)
    train_and_evaluate(cfg, tmp_path / "run", files, progress=False)
    with pytest.raises(TrainingError, match="lr: 0.001 -> 0.002"):
        train_and_evaluate(cfg.replace(lr=2e-3), tmp_path / "run", files, progress=False,
                           resume=True)


@pytest.mark.slow
def test_init_with_other_shapes_is_refused_on_resume(tiny_init, data_dir, tmp_path):
    """Same --init path, different model behind it: both shapes in the message."""
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


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_init, data_dir, tmp_path):
    files = data_files(str(data_dir))
    cfg = tiny_config(tiny_init, lr=1e12, log_every=1)  # diverges within a few steps
    with pytest.raises(TrainingError, match=r"non-finite loss at step \d+ \(tasks \[") as err:
        train_and_evaluate(cfg, tmp_path / "run", files, progress=False, save_every=1)
    message = str(err.value)
    bad_step = int(re.search(r"at step (\d+)", message).group(1))
    assert bad_step > 1  # the first steps were finite and saved
    ckpts = RunCheckpoints(tmp_path / "run")
    assert ckpts.latest_step() == bad_step - 1  # the last good step, nothing after it
    state, _, _ = ckpts.restore(None)
    for leaf in jax.tree.leaves(state):  # parameters and optimiser moments
        assert np.isfinite(np.asarray(leaf, np.float64)).all()
    # the example ids named are ids of that step's training rows
    from bert_jax.cs224n import load_split
    shown = eval(message[message.index("example ids ") + 12:message.index("). The update")])
    assert shown and all(ids for ids in shown.values())
    for task, ids in shown.items():
        known = set(load_split(files[task, "train"], task)["id"][:80])
        assert set(ids) <= known, (task, ids)
    # With --nonfinite skip the run goes on to the end.
    summary = train_and_evaluate(cfg.replace(nonfinite="skip", max_steps=6), tmp_path / "skip",
                                 files, progress=False, save_every=0)
    assert summary["steps"] == 6


def _cli(args, **kwargs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "train.multitask", "--no-progress", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)


def _tiny_cli_args(tiny_init, data_dir, out, steps, epochs=1):
    return ["--init", str(tiny_init), "--data-dir", str(data_dir), "--out", str(out),
            "--max-length", "32", "--num-buckets", "2", "--limit-train", "400",
            "--limit-eval", "16", "--eval-batch-size", "16", "--epochs", str(epochs),
            "--max-steps", str(steps), "--save-every", "3", "--lr", "1e-3", "--log-every", "5"]


def _checkpoint_steps(out: Path) -> list[int]:
    last = out / "last"
    return sorted(int(p.name) for p in last.iterdir() if p.name.isdigit()) if last.is_dir() else []


def _wait_for_checkpoint(out: Path, proc, at_least: int = 1, timeout=600):
    """Block until `out/last` holds a checkpoint of step >= `at_least` (the trigger)."""
    start = time.time()
    while time.time() - start < timeout:
        if any(step >= at_least for step in _checkpoint_steps(out)):
            return
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no checkpoint appeared")


# The interrupted runs: 90 steps (two epochs of 50), a checkpoint every 3. The signal lands
# right after the trigger checkpoint, long before the end (each save takes tens of ms).
LONG = dict(steps=90, epochs=2)


@pytest.fixture(scope="module")
def uninterrupted(tiny_init, data_dir, tmp_path_factory) -> Path:
    """The LONG run without interruption: what every stopped-and-resumed run must equal."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    full = _cli(_tiny_cli_args(tiny_init, data_dir, out, **LONG))
    assert full.wait(timeout=900) == 0, full.stdout.read()
    return out


def _resume_and_compare(tiny_init, data_dir, uninterrupted, out: Path, stopped_at: int):
    """Resume `out` (stopped at `stopped_at`) to its end; it must equal an uninterrupted run.
    (The same total steps on both sides: the packed row shapes are planned from the whole run.)"""
    resumed = _cli(_tiny_cli_args(tiny_init, data_dir, out, **LONG) + ["--resume"])
    output = resumed.communicate(timeout=900)[0]
    assert resumed.returncode == 0, output
    assert f"resumed from {out / 'last'} at step {stopped_at}" in output
    assert_same_params(last_params(uninterrupted), last_params(out))
    for name in ("metrics.jsonl", "train_log.jsonl"):  # each step logged once
        steps = [json.loads(line)["step"] for line in (out / name).open()]
        assert steps == sorted(set(steps)), (name, steps)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_reaches_the_same_parameters(tiny_init, data_dir, tmp_path,
                                                                  uninterrupted):
    out = tmp_path / "killed"
    proc = _cli(_tiny_cli_args(tiny_init, data_dir, out, **LONG))
    try:
        _wait_for_checkpoint(out, proc, at_least=6)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=120) == -signal.SIGKILL
    finally:
        proc.kill()
    saved = _checkpoint_steps(out)
    assert 6 <= saved[-1] < LONG["steps"]  # the kill cut the run short, after the trigger
    assert not (out / "summary.json").exists()
    _resume_and_compare(tiny_init, data_dir, uninterrupted, out, saved[-1])


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_a_checkpoint_exits_and_resumes_exactly(tiny_init, data_dir, tmp_path,
                                                               uninterrupted, sig):
    out = tmp_path / "run"
    proc = _cli(_tiny_cli_args(tiny_init, data_dir, out, **LONG))
    try:
        _wait_for_checkpoint(out, proc, at_least=3)
        proc.send_signal(sig)
        output = proc.communicate(timeout=300)[0]
    finally:
        proc.kill()
    name = signal.Signals(sig).name
    assert proc.returncode == 128 + sig, output
    assert f"{name} received: finishing this step" in output and "Traceback" not in output
    stopped = int(re.search(rf"stopped by {name} at step (\d+)", output).group(1))
    assert 3 <= stopped < LONG["steps"] and _checkpoint_steps(out)[-1] == stopped
    _resume_and_compare(tiny_init, data_dir, uninterrupted, out, stopped)


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


# ------------------------------------------------------------------ faults that lost data

def _write_sst(path: Path, rows) -> Path:
    lines = ["\tid\tsentence\tsentiment"] + [f"{i}\tx{i}\t{s}\t{label}"
                                             for i, (s, label) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _sst_only(tiny_init, tmp_path, data_dir, dev_rows, **changes):
    """The baseline preset's shape (SST only, sequential) on a small SST train file of short
    sentences and the given SST dev rows; para/STS dev from the real data."""
    words = ["good", "bad", "fine", "dull", "great", "awful", "ok", "meh"]
    train = _write_sst(tmp_path / "sst-train.csv",
                       [(f"a {w} film", i % 5) for i, w in enumerate(words * 2)])
    dev = _write_sst(tmp_path / "sst-dev.csv", dev_rows)
    files = {**data_files(str(data_dir)), ("sst", "train"): train, ("sst", "dev"): dev}
    cfg = tiny_config(tiny_init, tasks=("sst",), mode="sequential", pooling="cls",
                      para_head="diff", sts_head="linear", limit_train=0, **changes)
    return cfg, files


@pytest.mark.slow
def test_dev_sentences_longer_than_every_training_sentence_are_evaluated(
        tiny_init, data_dir, tmp_path):
    long = " ".join(["a", "very", "long", "dev", "sentence"] * 8)  # 40 words > max_length 32
    cfg, files = _sst_only(tiny_init, tmp_path, data_dir, [("short one", 1), (long, 3)] * 4,
                           epochs=1)
    summary = train_and_evaluate(cfg, tmp_path / "run", files, progress=False)
    assert 0.0 <= summary["sst_acc"] <= 1.0
    assert max(summary["eval_buckets"]["sst"]) == 32  # planned from the dev lengths
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text())["step"] == 2


@pytest.mark.slow
def test_a_failed_evaluation_keeps_the_trained_steps_and_resume_evaluates_them(
        tiny_init, data_dir, tmp_path, monkeypatch):
    from bert_jax.evaluation import Evaluator
    files = data_files(str(data_dir))
    cfg = tiny_config(tiny_init)  # 10 steps per epoch, 2 epochs

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation broke")
    monkeypatch.setattr(Evaluator, "scores", broken)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        train_and_evaluate(cfg, tmp_path / "run", files, progress=False, save_every=0)
    assert RunCheckpoints(tmp_path / "run").latest_step() == 10  # the epoch's steps are saved
    monkeypatch.undo()
    train_and_evaluate(cfg, tmp_path / "run", files, progress=False, save_every=0, resume=True)
    metrics = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [m["step"] for m in metrics] == [10, 20]  # epoch 1 evaluated on resume, once
    train_and_evaluate(cfg, tmp_path / "full", files, progress=False, save_every=0)
    assert_same_params(last_params(tmp_path / "full"), last_params(tmp_path / "run"))


@pytest.mark.slow
def test_resume_replaces_a_damaged_checkpoint_and_logs_each_step_once(tiny_init, data_dir,
                                                                       tmp_path):
    files = data_files(str(data_dir))
    cfg = tiny_config(tiny_init, max_steps=7)
    out = tmp_path / "run"
    train_and_evaluate(cfg, out, files, progress=False, save_every=3)
    good = last_params(out)
    for path in (out / "last" / "7").rglob("*"):  # step 7 damaged on disk
        if path.is_file():
            path.write_bytes(b"\x00garbage")
    train_and_evaluate(cfg, out, files, progress=False, save_every=3, resume=True)
    assert_same_params(good, last_params(out))  # step 7 trained again and saved over the damage
    assert load_run(out, "last").meta["step"] == 7
    for name in ("metrics.jsonl", "train_log.jsonl"):
        steps = [json.loads(l)["step"] for l in (out / name).open()]
        assert steps == sorted(set(steps)), (name, steps)
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").open()] == [7]


@pytest.mark.slow
def test_cli_resume_falls_back_past_a_damaged_checkpoint(tiny_init, data_dir, tmp_path,
                                                         capsys):
    """`--resume` on the command line: the newest last/ checkpoint damaged, the run continues
    from the one before it (saying which it skipped), trains the lost step again and ends
    where the undamaged run ended."""
    out = tmp_path / "run"
    args = ["--init", str(tiny_init), "--data-dir", str(data_dir), "--out", str(out),
            "--max-length", "32", "--num-buckets", "2", "--limit-train", "80", "--limit-eval",
            "16", "--eval-batch-size", "16", "--log-every", "4", "--lr", "1e-3",
            "--max-steps", "7", "--save-every", "3", "--keep-last", "3", "--no-progress"]
    assert main(args) == 0
    good = last_params(out)
    assert sorted(int(p.name) for p in (out / "last").iterdir()) == [3, 6, 7]  # --keep-last 3
    for path in (out / "last" / "7").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\x00garbage")
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    said = capsys.readouterr().err  # the tool's log lines
    assert re.search(r"skipped damaged checkpoints: \S+/last/7: ", said), said
    assert re.search(r"resumed from \S+/last at step 6\n", said), said
    assert_same_params(good, last_params(out))
    assert load_run(out, "last").meta["step"] == 7


@pytest.mark.slow
def test_resume_without_a_checkpoint_is_refused_and_a_fresh_start_drops_stale_logs(
        tiny_init, data_dir, tmp_path):
    files = data_files(str(data_dir))
    out = tmp_path / "run"
    out.mkdir()
    # A run killed before its first checkpoint: its settings and a log line, no last/
    tiny_config(tiny_init, max_steps=2).to_json(out / "train_config.json")
    (out / "metrics.jsonl").write_text('{"step": 10, "overall": 0.9}\n')
    with pytest.raises(TrainingError, match="holds no checkpoint to continue from"):
        train_and_evaluate(tiny_config(tiny_init, max_steps=2), out, files, progress=False,
                           resume=True)
    train_and_evaluate(tiny_config(tiny_init, max_steps=2), out, files, progress=False)
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").open()] == [2]


def test_a_second_training_on_the_same_folder_is_refused(tiny_init, data_dir, tmp_path):
    from bert_jax.checkpoints import CheckpointError, run_lock
    with run_lock(tmp_path / "run"):
        with pytest.raises(CheckpointError, match="another training is writing"):
            train_and_evaluate(tiny_config(tiny_init, max_steps=2), tmp_path / "run",
                               data_files(str(data_dir)), progress=False)
    assert not (tmp_path / "run" / "last").exists()


def test_configurations_that_cannot_work_are_refused_at_start(tiny_init, data_dir, tmp_path):
    import shutil
    files = data_files(str(data_dir))
    with pytest.raises(TrainingError, match=r"--max-length 256 .* max_position_embeddings \(128"):
        train_and_evaluate(tiny_config(tiny_init, max_length=256), tmp_path / "a", files,
                           progress=False)
    bad = tmp_path / "bad-model"
    shutil.copytree(tiny_init, bad)
    config = json.loads((bad / "config.json").read_text())
    for heads, match in ((3, "not divisible by num_attention_heads 3"),
                         (0, "num_attention_heads must be a whole number from 1 to")):
        (bad / "config.json").write_text(json.dumps({**config, "num_attention_heads": heads}))
        with pytest.raises(TrainingError, match=match):
            train_and_evaluate(tiny_config(tiny_init, init=str(bad)), tmp_path / "b", files,
                               progress=False)


def test_single_class_training_labels_are_refused(tiny_init, data_dir, tmp_path):
    cfg, files = _sst_only(tiny_init, tmp_path, data_dir, [("fine", 1)] * 4)
    _write_sst(files["sst", "train"], [(f"film {i}", 2) for i in range(16)])
    with pytest.raises(TrainingError, match="every sst training label is 2"):
        train_and_evaluate(cfg, tmp_path / "run", files, progress=False)


def test_a_diverging_loss_is_reported_while_still_finite(caplog):
    from train.step_log import LossWatch
    watch = LossWatch()
    with caplog.at_level("WARNING", logger="train.multitask"):
        for step, loss in ((10, 2.0), (20, 1.5), (30, 150.0), (40, 900.0), (50, 1e5)):
            watch.check(step, loss)
    warnings = [r.message for r in caplog.records if "diverging" in r.message]
    assert len(warnings) == 1
    assert "from 2 at step 10 to 900 at step 40" in warnings[0]


def test_cli_refuses_bad_numbers_before_any_work(capsys):
    for flag, value in (("--batch-size", "-1"), ("--eval-batch-size", "0"),
                        ("--limit-train", "-5"), ("--lr", "0"), ("--max-length", "x")):
        with pytest.raises(SystemExit) as exit_info:
            main([flag, value, "--data-dir", "/nonexistent"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {flag}:" in err and "Traceback" not in err


def test_cli_turns_interrupts_and_disk_errors_into_one_line(monkeypatch, capsys, tmp_path):
    import train.multitask as tm
    from bert_jax.checkpoints import CheckpointError
    for raised, code, text in ((KeyboardInterrupt(), 130, "stopped at once"),
                               (CheckpointError("run/last: could not write the checkpoint"), 2,
                                "error: run/last: could not write")):
        def fail(*args, _raised=raised, **kwargs):
            raise _raised
        monkeypatch.setattr(tm, "train_and_evaluate", fail)
        assert main(["--out", str(tmp_path / "run"), "--data-dir", str(tmp_path)]) == code
        err = capsys.readouterr().err.strip().splitlines()
        assert text in err[-1] and "Traceback" not in "\n".join(err), err


@pytest.mark.slow
def test_cli_prints_progress_lines(tiny_init, data_dir, tmp_path):
    """INFO lines reach the user (orbax's import configures logging before ours)."""
    args = _tiny_cli_args(tiny_init, data_dir, tmp_path / "run", 2)
    first = _cli(args)
    output = first.communicate(timeout=300)[0]
    assert first.returncode == 0, output
    assert "train.multitask: train steps:" in output
    assert "CheckpointManager created" not in output  # orbax's INFO chatter stays quiet
    proc = _cli(args[:-10] + ["--epochs", "1", "--max-steps", "4", "--save-every", "3",
                              "--lr", "1e-3", "--log-every", "5", "--resume"])
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    assert "resumed from" in output and "at step 2" in output


def test_the_first_interrupt_is_acknowledged_and_a_second_stops_at_once(capsys):
    from train.signals import StopSignal as _StopSignal
    with pytest.raises(KeyboardInterrupt):
        with _StopSignal() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            assert stop.signum == signal.SIGINT
            assert "SIGINT received: finishing this step, saving a checkpoint" in \
                capsys.readouterr().err
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)


@pytest.mark.slow
def test_resume_refuses_a_new_length_when_the_schedule_depends_on_it(tiny_init, data_dir,
                                                                     tmp_path):
    """--linear-decay ends at the run's last step: a resume that changes the length would not
    reach the uninterrupted run's parameters, so it is refused (a constant rate may change)."""
    files = data_files(str(data_dir))
    decayed = tiny_config(tiny_init, linear_decay=True, max_steps=7)
    train_and_evaluate(decayed, tmp_path / "decay", files, progress=False, save_every=3)
    with pytest.raises(TrainingError, match=r"max_steps: 7 -> 0.*--linear-decay"):
        train_and_evaluate(decayed.replace(max_steps=0), tmp_path / "decay", files,
                           progress=False, resume=True)
    constant = tiny_config(tiny_init, max_steps=3)
    train_and_evaluate(constant, tmp_path / "constant", files, progress=False, save_every=3)
    train_and_evaluate(constant.replace(max_steps=5), tmp_path / "constant", files,
                       progress=False, resume=True)
    assert RunCheckpoints(tmp_path / "constant").latest_step() == 5


def test_cli_no_skip_bad_rows_names_the_file_and_line(tiny_init, data_dir, tmp_path, capsys):
    """quora-dev.csv has two rows without a label: skipped by default, an error naming the
    first with --no-skip-bad-rows, before any training."""
    code = main(["--init", str(tiny_init), "--data-dir", str(data_dir), "--out",
                 str(tmp_path / "run"), "--max-length", "32", "--limit-train", "16",
                 "--max-steps", "1", "--no-skip-bad-rows", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err[-1].startswith("error: ") and "quora-dev.csv, line 2577:" in err[-1]
    assert "is_duplicate is empty" in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "run" / "last").exists()


@pytest.mark.slow
def test_cli_ends_with_a_closing_block_and_plain_lines_in_a_log(tiny_init, data_dir, tmp_path):
    """Written to a file: no bars (no carriage returns or escape sequences), a plain line per
    log point, and a closing block of rounded scores and paths that exist."""
    log = tmp_path / "train.log"
    args = ["--init", str(tiny_init), "--data-dir", str(data_dir), "--out", str(tmp_path / "run"),
            "--max-length", "32", "--limit-train", "80", "--limit-eval", "16",
            "--eval-batch-size", "16", "--epochs", "1", "--log-every", "5", "--lr", "1e-3"]
    with log.open("w") as f:  # progress left on: the tool itself decides there is no terminal
        code = subprocess.run([sys.executable, "-m", "train.multitask", *args], cwd=ROOT,
                              stdout=f, stderr=subprocess.STDOUT, timeout=900).returncode
    text = log.read_text()
    assert code == 0, text
    assert "\r" not in text and "\x1b" not in text
    assert re.search(r"train.multitask: step 5: loss \d+\.\d{4}", text)
    assert "JAX " in text and "device(s)" in text  # the backend line
    block = text[text.index("dev scores: "):].splitlines()
    assert re.fullmatch(r"dev scores: sst_acc \d\.\d{3}, para_acc \d\.\d{3}, sts_r -?\d\.\d{3}, "
                        r"overall \d\.\d{3}", block[0])
    paths = [Path(line.strip()) for line in block[2:]]
    assert block[1].startswith("wrote ") and len(paths) >= 6
    assert all(path.exists() for path in paths), paths
    best, _, _ = RunCheckpoints(tmp_path / "run", read_only=True).restore(None, "best")
    assert set(best) == {"params"}  # best/ keeps no optimiser state
