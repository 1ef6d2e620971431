"""The train step and its optimiser: losses against numpy, the optimiser against a plain optax
reference, data parallel equals single device, the non-finite skip, learning-rate groups."""
import functools
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bert_jax.batch_types import Batch, PaddedInputs, Sentences, TaskLabels
from bert_jax.checkpoints import CheckpointError, RunCheckpoints
from bert_jax.config import PRESETS
from bert_jax.heads import HeadConfig, MultitaskBert, init_multitask_params
from bert_jax.tasks import builtin_tasks
from train.config import TrainConfig
from train.optimizer import (earlier_layout, group_schedules, learning_rates, make_optimizer,
                             make_schedule, skipped_updates)
from train.sharding import check_divisible, make_mesh, shard_batch
from train.step import TrainState, create_state, make_train_step, task_losses

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
    labels = TaskLabels({"sst": rng.integers(0, 5, size=batch).astype(np.int32),
                         "para": rng.integers(0, 2, size=batch).astype(np.int32),
                         "sts": rng.uniform(0, 5, size=batch).astype(np.float32)})
    return Batch(PaddedInputs({t: tuple(s) for t, s in inputs.items()}), labels)


def test_task_losses_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    para, sts = rng.normal(size=6).astype(np.float32), rng.uniform(-5, 5, 6).astype(np.float32)
    labels = TaskLabels({"sst": rng.integers(0, 5, 6), "para": rng.integers(0, 2, 6),
                         "sts": rng.uniform(0, 5, 6).astype(np.float32)})
    got = task_losses({"sst": jnp.asarray(logits), "para": jnp.asarray(para),
                       "sts": jnp.asarray(sts)}, labels, builtin_tasks())
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -log_softmax[np.arange(6), labels["sst"]].mean()
    p = 1 / (1 + np.exp(-para))
    bce = -(labels["para"] * np.log(p) + (1 - labels["para"]) * np.log(1 - p)).mean()
    mse = ((sts - labels["sts"]) ** 2).mean()
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
    before = jax.device_get((state.params, state.opt_state.inner_state))
    batch = synthetic_batch(np.random.default_rng(2))
    batch.labels["sts"][0] = np.nan
    state, metrics = step(state, shard_batch(batch, mesh))
    assert float(metrics["finite"]) == 0.0
    assert not np.isfinite(float(metrics["loss_sts"]))
    # neither the parameters nor AdamW's state (moments, count, rate) took the bad step
    jax.tree.map(np.testing.assert_array_equal,
                 jax.device_get((state.params, state.opt_state.inner_state)), before)
    assert int(skipped_updates(state.opt_state)) == 1
    assert int(state.step) == 2  # the step itself is counted: the data moves on


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
    from train.optimizer import make_optimizer
    from train.sharding import make_mesh, shard_batch
    from train.step import create_state, make_train_step
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
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, linear_decay=True)
    schedule = make_schedule(cfg, total_steps=110)
    want = lambda s: 1e-3 * s / 10 if s < 10 else 1e-3 * (1 - (s - 10) / 100)
    for s in (0, 1, 5, 10, 11, 60, 109, 110):
        assert float(schedule(s)) == pytest.approx(want(s), abs=1e-9), s
    assert float(make_schedule(TrainConfig(lr=1e-3), 110)(77)) == pytest.approx(1e-3)


def reference_optimizer(cfg: TrainConfig, total_steps: int, num_layers: int):
    """The optimiser as plain optax, written out group by group (not from `lr_rules`' table):
    heads at head_lr (else lr); with layer_lr_decay d, encoder layer i of L at lr d ** (L-1-i),
    the embeddings at lr d ** L, the rest of the encoder at lr; each group AdamW on the same
    warm-up/decay schedule, after global-norm clipping. No finite check: `reference_step`."""
    def schedule(lr):
        if cfg.linear_decay:
            after = optax.linear_schedule(lr, 0.0, max(total_steps - cfg.warmup_steps, 1))
        else:
            after = optax.constant_schedule(lr)
        if not cfg.warmup_steps:
            return after
        return optax.join_schedules([optax.linear_schedule(0.0, lr, cfg.warmup_steps), after],
                                    [cfg.warmup_steps])

    d, lr = cfg.layer_lr_decay, cfg.lr
    rates = {"heads": cfg.head_lr or lr, "embeddings": lr * d ** num_layers, "top": lr,
             **{f"layer_{i}": lr * d ** (num_layers - 1 - i) for i in range(num_layers)}}

    def group(path, _):
        keys = [str(getattr(k, "key", k)) for k in path]
        if keys[0] != "bert":
            return "heads"
        if keys[1] == "embeddings":
            return "embeddings"
        if keys[1] == "encoder":
            return keys[2]  # layer_i
        return "top"

    adamw = optax.multi_transform(
        {name: optax.adamw(schedule(rate), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay) for name, rate in rates.items()},
        lambda params: jax.tree_util.tree_map_with_path(group, params))
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw), schedule, rates


def reference_step(model, tx):
    """One device's train step as the loop ran it before optax skipped non-finite updates: the
    update under a `lax.cond` on the loss being finite, else params and state unchanged."""
    @jax.jit
    def step(params, opt_state, count, batch):
        rng = jax.random.fold_in(jax.random.PRNGKey(0), count)

        def loss_fn(p):
            outputs = model.apply({"params": p}, batch.inputs, deterministic=False,
                                  rngs={"dropout": rng})
            return sum(task_losses(outputs, batch.labels, model.heads.tasks).values())
        loss, grads = jax.value_and_grad(loss_fn)(params)

        def update():
            updates, new_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), new_state
        return jax.lax.cond(jnp.isfinite(loss), update, lambda: (params, opt_state))
    return step


# Every optimiser option at once: layer decay, head rate, warm-up, decay, clipping, weight decay.
PAIR_CONFIG = TrainConfig(lr=1e-3, head_lr=5e-3, layer_lr_decay=0.5, warmup_steps=2,
                          linear_decay=True, grad_clip=0.5, weight_decay=0.01)


def _optimizer_pair():
    """The tiny model's (model, host params, one-device mesh, optimiser, train step,
    reference_optimizer's (tx, schedule, rates), reference step), both optimisers built from
    PAIR_CONFIG for 6 steps of a 2-layer encoder."""
    model, params, _ = _tiny_setup()
    mesh = make_mesh(jax.devices()[:1])
    tx = make_optimizer(PAIR_CONFIG, 6, 2)
    reference = reference_optimizer(PAIR_CONFIG, 6, 2)
    return (model, jax.device_get(params), mesh, tx, make_train_step(model, tx, mesh), reference,
            reference_step(model, reference[0]))


def check_against_reference(exact: bool) -> None:
    """Five steps of the tiny model (layer decay, head rate, warm-up, decay, clipping, weight
    decay; the third step's loss NaN) reach the parameters of the plain optax reference with its
    own finite check: `exact`, bit for bit, else within float32 rounding. The skipped step is
    counted, and the logged learning rates are the schedule's at each update applied."""
    model, params, mesh, tx, step, (ref_tx, schedule, rates), ref_step = _optimizer_pair()
    state = create_state(jax.tree.map(jnp.asarray, params), tx, 0, mesh)
    ref_params, ref_state = params, ref_tx.init(params)
    same = (np.testing.assert_array_equal if exact else
            functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7))
    rng, applied = np.random.default_rng(7), 0
    for k in range(5):
        batch = synthetic_batch(rng)
        if k == 2:
            batch.labels["sts"][0] = np.nan
        state, metrics = step(state, shard_batch(batch, mesh))
        ref_params, ref_state = ref_step(ref_params, ref_state, k, batch)
        jax.tree.map(same, jax.device_get(state.params), jax.device_get(ref_params))
        assert float(metrics["finite"]) == (k != 2)
        applied += k != 2
        logged = {key: float(metrics[f"lr_{key}"]) for key in rates}
        assert logged == {key: float(schedule(rate)(applied - 1)) for key, rate in rates.items()}
    assert int(skipped_updates(state.opt_state)) == 1


def test_optimizer_equals_the_plain_optax_reference_and_skips_nonfinite_steps():
    """Within float32 rounding here: XLA contracts a multiply and an add into one fused
    multiply-add where the reference's update and `params + update` share a kernel, and the
    optimiser's finite check (a conditional) puts them in two (the slow test below is exact)."""
    check_against_reference(exact=False)


@pytest.mark.slow
def test_optimizer_equals_the_plain_optax_reference_bit_for_bit_without_fma():
    """With LLVM's optimisations off (no fused multiply-add), the same numbers to the bit."""
    env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0",
           "JAX_PLATFORMS": "cpu"}
    code = "from tests.test_step import check_against_reference; check_against_reference(True)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_learning_rates_are_the_rates_the_optimizer_applies():
    """What train_log.jsonl records as `lr_GROUP` at step s is what the optimiser state reports
    after the update of step s: the schedule at s - 1 times the group's multiplier, and the rate
    the update applied (with a constant gradient Adam moves a parameter by its rate)."""
    zeros = lambda: np.zeros((2,), np.float32)
    params = {"bert": {"encoder": {"layer_0": {"w": zeros()}, "layer_1": {"w": zeros()}},
                       "embeddings": {"w": zeros()}, "pooler": {"w": zeros()}},
              "sst_classifier": {"w": zeros()}}
    where = {"lr_layer_0": ("bert", "encoder", "layer_0"), "lr_layer_1": ("bert", "encoder",
             "layer_1"), "lr_embeddings": ("bert", "embeddings"), "lr_top": ("bert", "pooler"),
             "lr_heads": ("sst_classifier",)}
    multiplier = {"lr_layer_0": 0.5, "lr_layer_1": 1.0, "lr_embeddings": 0.25, "lr_top": 1.0,
                  "lr_heads": 10.0}
    grads = jax.tree.map(lambda p: np.full(p.shape, 0.5, np.float32), params)
    cfg = TrainConfig(lr=1e-3, head_lr=1e-2, layer_lr_decay=0.5, warmup_steps=2,
                      linear_decay=True)
    tx, schedule = make_optimizer(cfg, 6, 2), make_schedule(cfg, 6)
    opt_state = tx.init(params)
    seen = []
    for step in range(1, 7):
        updates, opt_state = tx.update(grads, opt_state, params)
        rates = {k: float(v) for k, v in learning_rates(opt_state).items()}
        assert set(rates) == set(where)
        for key, path in where.items():
            want = float(schedule(step - 1)) * multiplier[key]
            assert rates[key] == pytest.approx(want, rel=1e-6, abs=1e-12), (step, key)
            moved = float(np.abs(np.asarray(functools.reduce(dict.get, path, updates)["w"])).max())
            assert moved == pytest.approx(want, rel=1e-4, abs=1e-12), (step, key)
        seen.append(rates)
    assert seen[0]["lr_top"] == 0.0 and seen[2]["lr_top"] == pytest.approx(1e-3)
    assert seen[2]["lr_heads"] == pytest.approx(1e-2) and seen[5]["lr_layer_1"] > 0
    one = make_optimizer(TrainConfig(lr=2e-5), 10)
    state = one.init(params)
    assert {k: float(v) for k, v in learning_rates(state).items()} == {
        "lr": pytest.approx(2e-5)}  # one group: a single "lr"
    _, state = one.update(grads, state, params)
    assert set(learning_rates(state)) == {"lr"}


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
    from train import backend as step_lib
    line, warning = step_lib.backend_report()
    assert f"on {jax.default_backend()}: {jax.device_count()} device(s)" in line
    assert warning is None  # this machine has no accelerator build of JAX
    real = importlib.metadata.version

    def with_cuda_plugin(name):
        return "0.10.2" if name == "jax-cuda12-plugin" else real(name)
    monkeypatch.setattr(importlib.metadata, "version", with_cuda_plugin)
    _, warning = step_lib.backend_report()
    assert warning.startswith("jax-cuda12-plugin 0.10.2 is installed but JAX runs on the CPU")


def test_install_extras_name_jaxs_own_accelerator_extras(tmp_path):
    """`make install ACCEL=cuda|tpu` installs the package's extra of that name, and each extra
    asks for an extra that the installed JAX declares, at a version it satisfies."""
    import configparser
    import importlib.metadata
    from packaging.requirements import Requirement
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = cfg["options.extras_require"]
    jax_extras = set(importlib.metadata.metadata("jax").get_all("Provides-Extra"))
    for accel, jax_extra in (("cuda", "cuda12"), ("tpu", "tpu")):
        (requirement,) = [Requirement(line) for line in extras[accel].split()]
        assert (requirement.name, requirement.extras) == ("jax", {jax_extra}), accel
        assert jax_extra in jax_extras, (jax_extra, sorted(jax_extras))
        assert requirement.specifier.contains(jax.__version__), (accel, jax.__version__)
    for accel, installed in (("cpu", "-e '.'"), ("cuda", "-e '.[cuda]'"),
                             ("tpu", "-e '.[tpu]'")):
        dry = subprocess.run(["make", "-n", "install", f"ACCEL={accel}",
                              f"VENV={tmp_path / accel}"], cwd=ROOT, capture_output=True,
                             text=True)
        assert dry.returncode == 0, dry.stderr
        pip = [line for line in dry.stdout.splitlines() if " -e '." in line]
        assert len(pip) == 1 and pip[0].endswith(installed), (accel, pip)
    wrong = subprocess.run(["make", "-n", "install", "ACCEL=rocm"], cwd=ROOT,
                           capture_output=True, text=True)
    assert wrong.returncode != 0 and "ACCEL must be cpu, cuda or tpu" in wrong.stderr


@pytest.mark.slow
def test_a_bfloat16_step_trains_float32_parameters_close_to_float32():
    """--dtype bfloat16 (the default on GPU/TPU): the same step's loss within bfloat16's
    precision of float32's, parameters and optimiser state kept in float32, loss going down."""
    results = {}
    for dtype in ("float32", "bfloat16"):
        config = PRESETS["tiny"].replace(vocab_size=100)
        model = MultitaskBert(config, HeadConfig(), dtype=dtype)
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


def earlier_checkpoint_state(ref_state, adams):
    """`ref_state` (a state of `reference_optimizer`: the chain earlier versions saved) with its
    AdamW states replaced, group by group in key order, by `adams` (`ScaleByAdamState`s), each
    group's schedule count set to its Adam count."""
    adams = iter(adams)

    def fill(node):
        if isinstance(node, optax.ScaleByAdamState):
            fill.count = (adam := next(adams)).count
            return adam
        if isinstance(node, optax.ScaleByScheduleState):
            return optax.ScaleByScheduleState(count=fill.count)
        return node
    kinds = (optax.ScaleByAdamState, optax.ScaleByScheduleState)
    return jax.tree.map(fill, ref_state, is_leaf=lambda n: isinstance(n, kinds))


def adam_states(opt_state) -> list:
    """The `ScaleByAdamState`s of an optimiser state, group by group in key order."""
    return [n for n in jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(
        n, optax.ScaleByAdamState)) if isinstance(n, optax.ScaleByAdamState)]


def test_a_checkpoint_of_the_earlier_optimizer_layout_restores_converted(tmp_path, caplog):
    """A checkpoint whose optimiser state is the plain optax chain earlier versions saved (no
    finite check, no injected rates; three steps, one skipped) restores into the current
    layout: Adam's moments as saved, counts, rates and skip counters as the current optimiser
    holds them after the same steps, and two more steps reach the reference's parameters. A
    damaged checkpoint is still reported as damaged."""
    model, params, mesh, tx, step, (ref_tx, _, _), ref_step = _optimizer_pair()
    rng = np.random.default_rng(7)
    batches = [synthetic_batch(rng) for _ in range(5)]
    batches[1].labels["sts"][0] = np.nan  # skipped
    ref_params, ref_state = params, ref_tx.init(params)
    straight = create_state(jax.tree.map(jnp.asarray, params), tx, 0, mesh)
    for k in range(3):
        ref_params, ref_state = ref_step(ref_params, ref_state, k, batches[k])
        straight, _ = step(straight, shard_batch(batches[k], mesh))
    saved = jax.device_get(TrainState(step=np.int32(3), params=ref_params, opt_state=ref_state,
                                      rng=jax.random.PRNGKey(0)))
    ckpts = RunCheckpoints(tmp_path)
    ckpts.save(3, saved, {"step": 3})
    fresh = create_state(jax.tree.map(jnp.asarray, params), tx, 0, mesh)
    earlier = earlier_layout(fresh, group_schedules(PAIR_CONFIG, 6, 2))
    with caplog.at_level(logging.INFO, "bert_jax.checkpoints"):
        state, _, at = ckpts.restore(fresh, earlier=earlier)
    assert at == 3 and int(state.step) == 3
    assert "optimiser state was written by an earlier version and was converted" in caplog.text
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(straight.opt_state)
    for got, want in zip(adam_states(state.opt_state), adam_states(saved.opt_state)):
        for name in ("count", "mu", "nu"):  # as saved, to the bit
            jax.tree.map(np.testing.assert_array_equal, getattr(got, name), getattr(want, name))
    same = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7)
    jax.tree.map(same, jax.device_get(state.opt_state), jax.device_get(straight.opt_state))
    assert int(skipped_updates(state.opt_state)) == 1
    assert learning_rates(state.opt_state).keys() == learning_rates(straight.opt_state).keys()
    for k in (3, 4):
        state, _ = step(state, shard_batch(batches[k], mesh))
        ref_params, ref_state = ref_step(ref_params, ref_state, k, batches[k])
    jax.tree.map(same, jax.device_get(state.params), jax.device_get(ref_params))
    for path in (tmp_path / "last" / "3").rglob("*"):  # damaged: no layout restores it
        if path.is_file():
            path.write_bytes(b"\x00garbage")
    fresh = create_state(jax.tree.map(jnp.asarray, params), tx, 0, mesh)
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        ckpts.restore(fresh, earlier=earlier_layout(fresh, group_schedules(PAIR_CONFIG, 6, 2)))
    ckpts.close()
