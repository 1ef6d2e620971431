"""bert_jax.heads: every preset's pooling, heads and losses on a fixed batch against an
independent numpy computation from the encoder's outputs, and the baseline's untrained heads
stay untrained."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from bert_jax.batch_types import Batch, PaddedInputs, Sentences, TaskLabels
from bert_jax.config import PRESETS as MODEL_PRESETS
from bert_jax.heads import HeadConfig, MultitaskBert, init_multitask_params
from bert_jax.model import BertModel
from train.config import PRESETS
from train.optimizer import make_optimizer
from train.sharding import make_mesh, shard_batch
from train.step import create_state, make_train_step, task_losses

CONFIG = MODEL_PRESETS["tiny"].replace(vocab_size=100)


def fixed_batch(tasks=("sst", "para", "sts"), batch=4, length=12):
    rng = np.random.default_rng(7)
    inputs = {}
    for task in tasks:
        inputs[task] = []
        for k in ("1",) if task == "sst" else ("1", "2"):
            lengths = rng.integers(3, length + 1, size=batch)
            mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
            ids = rng.integers(5, 100, (batch, length)).astype(np.int32) * mask
            inputs[task].append(Sentences(ids, mask))
    labels = {"sst": rng.integers(0, 5, batch).astype(np.int32),
              "para": rng.integers(0, 2, batch).astype(np.int32),
              "sts": rng.uniform(0, 5, batch).astype(np.float32)}
    return Batch(PaddedInputs({t: tuple(s) for t, s in inputs.items()}),
                 TaskLabels({t: labels[t] for t in tasks}))


def np_dense(p, x):
    return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def reference_outputs(params, heads, batch):
    """The heads of the report, in float64 numpy, from the encoder's hidden states."""
    def embed(ids, mask):
        out = BertModel(CONFIG).apply({"params": params["bert"]}, ids, mask, np.zeros_like(ids))
        if heads.pooling == "cls":
            return np.asarray(out.pooler_output, np.float64)
        h, m = np.asarray(out.last_hidden_state, np.float64), mask[..., None].astype(np.float64)
        return (h * m).sum(1) / m.sum(1)

    emb = {(t, k): embed(s.input_ids, s.attention_mask) for t, k, s in batch.inputs.sides()}
    out = {"sst": np_dense(params["sst_classifier"], emb["sst", "1"])}
    u, v = emb["para", "1"], emb["para", "2"]
    if heads.para_head == "diff":
        out["para"] = np_dense(params["para_classifier"], u - v)[:, 0]
    else:
        hidden = np.maximum(np_dense(params["para_hidden"], np.concatenate([np.abs(u - v), u * v],
                                                                         -1)), 0)
        out["para"] = np_dense(params["para_classifier"], hidden)[:, 0]
    u, v = emb["sts", "1"], emb["sts", "2"]
    if heads.sts_head == "linear":
        out["sts"] = np_dense(params["sts_regressor"], u - v)[:, 0]
    else:
        out["sts"] = 5 * (u * v).sum(-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
    return out


def reference_losses(out, batch):
    logits = out["sst"] - out["sst"].max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -log_probs[np.arange(len(logits)), batch.labels["sst"]].mean()
    p = 1 / (1 + np.exp(-out["para"]))
    y = batch.labels["para"]
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    mse = ((out["sts"] - batch.labels["sts"]) ** 2).mean()
    return {"sst": ce, "para": bce, "sts": mse}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_preset_computes_the_reports_heads_and_losses(preset):
    heads = PRESETS[preset].head_config()
    params = init_multitask_params(CONFIG, heads, jax.random.PRNGKey(3))
    batch = fixed_batch()
    got = MultitaskBert(CONFIG, heads).apply({"params": params}, batch.inputs, deterministic=True)
    want = reference_outputs(params, heads, batch)
    for task in ("sst", "para", "sts"):
        np.testing.assert_allclose(np.asarray(got[task]), want[task], rtol=1e-4, atol=1e-5,
                                   err_msg=f"{preset} {task}")
    losses = task_losses(got, batch.labels, heads.tasks)
    for task, value in reference_losses(want, batch).items():
        assert float(losses[task]) == pytest.approx(value, rel=1e-4, abs=1e-5), (preset, task)
    # the parameters present are exactly the heads the preset names
    assert ("para_hidden" in params) == (heads.para_head == "concat")
    assert ("sts_regressor" in params) == (heads.sts_head == "linear")


def test_the_baselines_untrained_heads_stay_untrained():
    cfg = PRESETS["baseline"].replace(lr=1e-2)
    heads = cfg.head_config()
    model = MultitaskBert(CONFIG, heads)
    params = init_multitask_params(CONFIG, heads, jax.random.PRNGKey(0))
    before = jax.device_get(params)  # the step donates its state's buffers
    mesh = make_mesh(jax.devices()[:1])
    tx = make_optimizer(cfg, 10)
    state = create_state(params, tx, 0, mesh)
    step = make_train_step(model, tx, mesh)
    for _ in range(3):
        state, _ = step(state, shard_batch(fixed_batch(tasks=("sst",), batch=8), mesh))
    after = jax.device_get(state.params)
    for name in ("para_classifier", "sts_regressor"):
        jax.tree.map(np.testing.assert_array_equal, after[name], before[name])
    moved = np.abs(np.asarray(after["sst_classifier"]["kernel"])
                   - np.asarray(before["sst_classifier"]["kernel"])).max()
    assert moved > 1e-3  # while the SST head trains


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_parameters_are_berts_init_in_the_param_dtype(param_dtype):
    """Every parameter, the heads' too, is created in `param_dtype` with BERT's initialisation:
    kernels and embeddings normal(0, initializer_range) (each leaf's spread, and all of them
    pooled), biases 0, LayerNorm scales 1."""
    heads = HeadConfig(para_head="concat", sts_head="linear")  # every dense head
    for std in (0.02, 0.05):
        params = init_multitask_params(CONFIG.replace(initializer_range=std), heads,
                                       jax.random.PRNGKey(0), param_dtype=param_dtype)
        assert {"sst_classifier", "para_hidden", "para_classifier", "sts_regressor"} <= set(params)
        drawn = []
        for path, leaf in jax.tree_util.tree_leaves_with_path(params):
            name = jax.tree_util.keystr(path)
            assert leaf.dtype == np.dtype(param_dtype), name
            values = np.asarray(leaf, np.float64)
            if path[-1].key in ("kernel", "embedding"):
                assert abs(values.std() / std - 1) < 0.3 and abs(values.mean()) < std / 3, name
                drawn.append(values.ravel())
            else:
                want = 1.0 if path[-1].key == "scale" else 0.0
                np.testing.assert_array_equal(values, want, err_msg=name)
        drawn = np.concatenate(drawn)
        assert drawn.size > 20_000 and abs(drawn.std() / std - 1) < 0.02
        assert abs(drawn.mean()) < 0.02 * std
