"""The train step: losses against numpy, data parallel equals single device, non-finite guard."""
import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.batch_types import Batch, PaddedInputs, Sentences, TaskLabels
from bert_jax.config import PRESETS
from bert_jax.heads import HeadConfig, MultitaskBert, init_multitask_params
from train.config import TrainConfig
from train.step import (check_divisible, create_state, learning_rates, make_mesh,
                        make_optimizer, make_train_step, shard_batch, task_losses)

ROOT = Path(__file__).resolve().parents[1]


def synthetic_batch(rng: np.random.Generator, batch: int = 8, length: int = 16,
                    vocab: int = 100) -> Batch:
    inputs = {}
    for task, sentences in (("sst", 1), ("para", 2), ("sts", 2)):
        inputs[task] = []
        for k in range(1, sentences + 1):
            lengths = rng.integers(3, length + 1, size=batch)
            ids = rng.integers(5, vocab, size=(batch, length)).astype(np.int32)
            mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
            inputs[task].append(Sentences(ids * mask, mask))
    labels = TaskLabels(sst=rng.integers(0, 5, size=batch).astype(np.int32),
                        para=rng.integers(0, 2, size=batch).astype(np.int32),
                        sts=rng.uniform(0, 5, size=batch).astype(np.float32))
    return Batch(PaddedInputs(**{t: tuple(s) for t, s in inputs.items()}), labels)


def test_task_losses_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    para, sts = rng.normal(size=6).astype(np.float32), rng.uniform(-5, 5, 6).astype(np.float32)
    labels = TaskLabels(sst=rng.integers(0, 5, 6), para=rng.integers(0, 2, 6),
                        sts=rng.uniform(0, 5, 6).astype(np.float32))
    got = task_losses({"sst": jnp.asarray(logits), "para": jnp.asarray(para),
                       "sts": jnp.asarray(sts)}, labels)
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -log_softmax[np.arange(6), labels.sst].mean()
    p = 1 / (1 + np.exp(-para))
    bce = -(labels.para * np.log(p) + (1 - labels.para) * np.log(1 - p)).mean()
    mse = ((sts - labels.sts) ** 2).mean()
    np.testing.assert_allclose([got["sst"], got["para"], got["sts"]], [ce, bce, mse], rtol=1e-5)


def _tiny_setup(heads=HeadConfig(), lr=1e-3):
    config = PRESETS["tiny"].replace(vocab_size=100)
    cfg = TrainConfig(lr=lr)
    model = MultitaskBert(config, heads)
    params = init_multitask_params(config, heads, jax.random.PRNGKey(0))
    return model, params, cfg


def test_step_lowers_loss_and_counts_steps():
    model, params, cfg = _tiny_setup()
    mesh = make_mesh(jax.devices()[:1])
    tx = make_optimizer(cfg, 100)
    state = create_state(params, tx, 0, mesh)
    step = make_train_step(model, tx, mesh)
    batch = shard_batch(synthetic_batch(np.random.default_rng(1)), mesh)
    losses = []
    for _ in range(30):
        state, metrics = step(state, batch)
        losses.append({k: float(v) for k, v in metrics.items()})
    assert int(state.step) == 30
    for task in ("sst", "para", "sts"):
        assert losses[-1][f"loss_{task}"] < losses[0][f"loss_{task}"], task
    total = losses[0]["loss_sst"] + losses[0]["loss_para"] + losses[0]["loss_sts"]
    assert losses[0]["loss"] == pytest.approx(total, rel=1e-5)


def test_nonfinite_loss_leaves_params_unchanged():
    model, params, cfg = _tiny_setup()
    mesh = make_mesh(jax.devices()[:1])
    tx = make_optimizer(cfg, 10)
    state = create_state(params, tx, 0, mesh)
    step = make_train_step(model, tx, mesh)
    good = synthetic_batch(np.random.default_rng(2))
    state, _ = step(state, shard_batch(good, mesh))  # one real update: moments are non-zero
    before = jax.device_get((state.params, state.opt_state))
    batch = synthetic_batch(np.random.default_rng(2))
    batch.labels.sts[0] = np.nan
    state, metrics = step(state, shard_batch(batch, mesh))
    assert float(metrics["finite"]) == 0.0
    assert not np.isfinite(float(metrics["loss_sts"]))
    # neither the parameters nor the optimiser state (moments, count) took the bad step
    jax.tree.map(np.testing.assert_array_equal, jax.device_get((state.params, state.opt_state)),
                 before)


def test_batch_must_divide_over_devices():
    mesh = make_mesh(jax.devices()[:1])
    check_divisible(8, mesh)

    class FourDevices:
        devices = np.zeros(4)
    with pytest.raises(ValueError, match="does not split evenly over 4 devices"):
        check_divisible(6, FourDevices())


DATA_PARALLEL_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from tests.test_packing import _as_packed
    from tests.test_step import _tiny_setup, synthetic_batch
    from train.step import create_state, make_mesh, make_optimizer, make_train_step, shard_batch
    assert jax.device_count() == 4, jax.devices()
    results = []
    for packed in (False, True):  # padded sentences; rows packed per device
        for devices in (jax.devices()[:1], jax.devices()):
            model, params, cfg = _tiny_setup(lr=1e-5)  # the report's learning rate
            mesh = make_mesh(devices)
            tx = make_optimizer(cfg, 10)
            state = create_state(params, tx, 0, mesh)
            step = make_train_step(model, tx, mesh, deterministic=True)
            rng = np.random.default_rng(3)
            for _ in range(3):
                batch = synthetic_batch(rng)
                if packed:
                    batch = _as_packed(batch, len(devices), 32)
                state, metrics = step(state, shard_batch(batch, mesh))
            results.append((jax.device_get(state.params), float(metrics["loss"]),
                            float(metrics["grad_norm"])))
    (one, loss_one, norm_one) = results[0]
    for other, loss_other, norm_other in results[1:]:
        diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), one, other))
        print("max param diff", max(diffs), "losses", loss_one, loss_other,
              "grad norms", norm_one, norm_other)
        assert max(diffs) < 1e-5, max(diffs)
        assert abs(loss_one - loss_other) < 1e-5
        # the gradients themselves, not only Adam's scale-free step: a sum instead of a mean
        # over devices would give 4x the norm and still nearly the same parameters
        assert abs(norm_one - norm_other) < 1e-4 * norm_one, (norm_one, norm_other)

    # Dropout masks differ per device: 4 identical shards with dropout on give a loss (the mean
    # of the devices' losses) other than 2 of them, unless every device drew the same mask.
    shard = synthetic_batch(np.random.default_rng(5), batch=2)
    losses = {}
    for n in (2, 4):
        model, params, cfg = _tiny_setup(lr=1e-5)
        mesh = make_mesh(jax.devices()[:n])
        tx = make_optimizer(cfg, 10)
        state = create_state(params, tx, 0, mesh)
        step = make_train_step(model, tx, mesh, deterministic=False)
        batch = jax.tree.map(lambda v: np.concatenate([v] * n), shard)
        _, metrics = step(state, shard_batch(batch, mesh))
        losses[n] = float(metrics["loss"])
    print("dropout losses", losses)
    assert abs(losses[2] - losses[4]) > 1e-6, losses
""")


@pytest.mark.slow
def test_data_parallel_on_four_devices_equals_one_device():
    """Padded and packed batches: 4 CPU devices (gradient mean) reach the parameters of 1."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", DATA_PARALLEL_SCRIPT], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "max param diff" in result.stdout


@pytest.mark.slow
def test_head_learning_rate_applies_to_heads_only():
    model, params, cfg = _tiny_setup(lr=1e-5)
    params = jax.device_get(params)  # host copy: the step donates (deletes) device buffers
    mesh = make_mesh(jax.devices()[:1])
    batch = synthetic_batch(np.random.default_rng(4))
    moved = {}
    for head_lr in (0.0, 1e-2):
        tx = make_optimizer(cfg.replace(head_lr=head_lr), 10)
        state, _ = make_train_step(model, tx, mesh, deterministic=True)(
            create_state(jax.tree.map(jnp.asarray, params), tx, 0, mesh), shard_batch(batch, mesh))
        new = jax.device_get(state.params)
        moved[head_lr] = {k: float(np.abs(new[k]["kernel"] - params[k]["kernel"]).max())
                          for k in ("sst_classifier", "para_classifier")}
        moved[head_lr]["bert"] = float(np.abs(
            new["bert"]["pooler"]["dense"]["kernel"] - params["bert"]["pooler"]["dense"]["kernel"]
        ).max())
    # Adam's first step moves each parameter by about its learning rate.
    assert moved[0.0]["sst_classifier"] == pytest.approx(1e-5, rel=0.05)
    assert moved[1e-2]["sst_classifier"] == pytest.approx(1e-2, rel=0.05)
    assert moved[1e-2]["para_classifier"] == pytest.approx(1e-2, rel=0.05)
    assert moved[1e-2]["bert"] == pytest.approx(moved[0.0]["bert"], rel=1e-3)


@pytest.mark.slow
def test_layer_lr_decay_scales_each_encoder_layer():
    """Adam's first step moves each parameter by about its rate: lr * decay ** depth below top."""
    model, params, cfg = _tiny_setup(lr=1e-3)
    params = jax.device_get(params)
    layers = len(params["bert"]["encoder"])
    grads = jax.tree.map(lambda p: np.full(p.shape, 0.5, np.float32), params)
    decay, head_lr = 0.5, 1e-2
    tx = make_optimizer(cfg.replace(layer_lr_decay=decay, head_lr=head_lr), 10, layers)
    updates, _ = tx.update(grads, tx.init(params), params)
    step = lambda tree: float(np.abs(np.asarray(tree)).max())
    bert = updates["bert"]
    assert step(bert["pooler"]["dense"]["kernel"]) == pytest.approx(1e-3, rel=1e-3)
    for i in range(layers):
        kernel = bert["encoder"][f"layer_{i}"]["attention"]["self"]["query"]["kernel"]
        assert step(kernel) == pytest.approx(1e-3 * decay ** (layers - 1 - i), rel=1e-3)
    assert step(bert["embeddings"]["word_embeddings"]["embedding"]) == pytest.approx(
        1e-3 * decay ** layers, rel=1e-3)
    assert step(updates["sst_classifier"]["kernel"]) == pytest.approx(head_lr, rel=1e-3)
    with pytest.raises(ValueError, match="num_layers"):
        make_optimizer(cfg.replace(layer_lr_decay=decay), 10)
    with pytest.raises(ValueError, match="layer_lr_decay"):
        cfg.replace(layer_lr_decay=0.0)


def test_schedule_warmup_then_linear_decay_to_zero():
    from train.step import make_schedule
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, linear_decay=True)
    schedule = make_schedule(cfg, total_steps=110)
    want = lambda s: 1e-3 * s / 10 if s < 10 else 1e-3 * (1 - (s - 10) / 100)
    for s in (0, 1, 5, 10, 11, 60, 109, 110):
        assert float(schedule(s)) == pytest.approx(want(s), abs=1e-9), s
    assert float(make_schedule(TrainConfig(lr=1e-3), 110)(77)) == pytest.approx(1e-3)


def test_learning_rates_are_the_rates_the_optimizer_applies():
    """What train_log.jsonl records as `lr_GROUP` at step s is the rate of the update of step s:
    with a constant gradient Adam moves a parameter by its rate, so the updates read it back."""
    zeros = lambda: np.zeros((2,), np.float32)
    params = {"bert": {"encoder": {"layer_0": {"w": zeros()}, "layer_1": {"w": zeros()}},
                       "embeddings": {"w": zeros()}, "pooler": {"w": zeros()}},
              "sst_classifier": {"w": zeros()}}
    where = {"lr_layer_0": ("bert", "encoder", "layer_0"), "lr_layer_1": ("bert", "encoder",
             "layer_1"), "lr_embeddings": ("bert", "embeddings"), "lr_top": ("bert", "pooler"),
             "lr_heads": ("sst_classifier",)}
    grads = jax.tree.map(lambda p: np.full(p.shape, 0.5, np.float32), params)
    cfg = TrainConfig(lr=1e-3, head_lr=1e-2, layer_lr_decay=0.5, warmup_steps=2,
                      linear_decay=True)
    tx, rates = make_optimizer(cfg, 6, 2), learning_rates(cfg, 6, 2)
    opt_state = tx.init(params)
    for step in range(1, 7):
        updates, opt_state = tx.update(grads, opt_state, params)
        assert set(rates(step)) == set(where)
        for key, path in where.items():
            moved = float(np.abs(np.asarray(functools.reduce(dict.get, path, updates)["w"])).max())
            assert moved == pytest.approx(rates(step)[key], rel=1e-4, abs=1e-12), (step, key)
    assert rates(1)["lr_top"] == 0.0 and rates(3)["lr_top"] == pytest.approx(1e-3)
    assert rates(3)["lr_heads"] == pytest.approx(1e-2) and rates(6)["lr_layer_1"] > 0
    one = learning_rates(TrainConfig(lr=2e-5), 10)
    assert one(1) == one(10) == {"lr": pytest.approx(2e-5)}  # one group: a single "lr"


def test_grad_clip_scales_the_gradient_to_the_global_norm():
    """With eps = 1 Adam's first update is lr * g / (|g| + 1): it shows the gradient's scale, so
    a clipped gradient (global norm 1) moves the parameters by a known, smaller amount."""
    params = {"bert": {"w": np.zeros((3,), np.float32)}, "head": {"b": np.zeros((1,), np.float32)}}
    grads = {"bert": {"w": np.full((3,), 10.0, np.float32)}, "head": {"b": np.full((1,), 10.0,
                                                                                  np.float32)}}
    norm = 10.0 * np.sqrt(4)
    for clip, scale in ((0.0, 1.0), (1.0, 1.0 / norm), (1000.0, 1.0)):
        tx = make_optimizer(TrainConfig(lr=1.0, eps=1.0, grad_clip=clip), 10)
        updates, _ = tx.update(grads, tx.init(params), params)
        g = 10.0 * scale
        np.testing.assert_allclose(np.asarray(updates["bert"]["w"]), -g / (g + 1.0), rtol=1e-5)


def test_backend_report_warns_when_an_accelerator_build_fell_back_to_cpu(monkeypatch):
    import importlib.metadata
    from train import step as step_lib
    line, warning = step_lib.backend_report()
    assert f"on {jax.default_backend()}: {jax.device_count()} device(s)" in line
    assert warning is None  # this machine has no accelerator build of JAX
    real = importlib.metadata.version

    def with_cuda_plugin(name):
        return "0.10.2" if name == "jax-cuda12-plugin" else real(name)
    monkeypatch.setattr(importlib.metadata, "version", with_cuda_plugin)
    _, warning = step_lib.backend_report()
    assert warning.startswith("jax-cuda12-plugin 0.10.2 is installed but JAX runs on the CPU")


def test_install_extras_name_jaxs_own_accelerator_extras():
    import configparser
    from pathlib import Path
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    extras = cfg["options.extras_require"]
    assert extras["cuda"].split() == ["jax[cuda12]>=0.7"]
    assert extras["tpu"].split() == ["jax[tpu]>=0.7"]
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "EXTRA := [$(ACCEL)]" in makefile and "$(PIP) -e '.$(EXTRA)'" in makefile


@pytest.mark.slow
def test_a_bfloat16_step_trains_float32_parameters_close_to_float32():
    """--dtype bfloat16 (the default on GPU/TPU): the same step's loss within bfloat16's
    precision of float32's, parameters and optimiser state kept in float32, loss going down."""
    results = {}
    for dtype in ("float32", "bfloat16"):
        config = PRESETS["tiny"].replace(vocab_size=100, dtype=dtype)
        model = MultitaskBert(config, HeadConfig())
        params = init_multitask_params(config, HeadConfig(), jax.random.PRNGKey(0))
        mesh = make_mesh(jax.devices()[:1])
        tx = make_optimizer(TrainConfig(lr=1e-3), 100)
        state = create_state(params, tx, 0, mesh)
        step = make_train_step(model, tx, mesh, deterministic=True)
        batch = shard_batch(synthetic_batch(np.random.default_rng(1)), mesh)
        losses = []
        for _ in range(5):
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
        assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}
        results[dtype] = losses
    assert results["bfloat16"][-1] < results["bfloat16"][0]
    np.testing.assert_allclose(results["bfloat16"], results["float32"], rtol=3e-2)
