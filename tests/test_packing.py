"""Sequence packing: the packer, the packed encoder against the padded one, and the packed train
steps the input pipeline plans for the real data."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.batch_types import Batch, PackedInputs
from bert_jax.heads import HeadConfig, MultitaskBert, init_multitask_params
from bert_jax.model import attention_keep
from bert_jax.packing import assign_rows, pack, rows_needed
from bert_jax.tasks import builtin_tasks
from bert_jax.tokenizer import pad_ids
from train.config import TrainConfig


def test_pack_places_every_sentence_once_with_restarting_positions():
    rng = np.random.default_rng(0)
    for trial in range(200):
        row_length = int(rng.choice([8, 16, 64]))
        sentences = [rng.integers(1, 1000, rng.integers(1, row_length + 1)).astype(np.int32)
                     for _ in range(rng.integers(1, 30))]
        out = pack(sentences, row_length)
        ids, seg, pos = out["input_ids"], out["segment_ids"], out["position_ids"]
        assert ids.shape == seg.shape == pos.shape == (rows_needed(
            [len(s) for s in sentences], row_length), row_length)
        for k, sentence in enumerate(sentences, start=1):
            rows, cols = np.nonzero(seg == k)
            assert len(set(rows)) == 1  # one row, contiguous
            assert np.all(np.diff(cols) == 1)
            np.testing.assert_array_equal(ids[rows, cols], sentence)
            np.testing.assert_array_equal(pos[rows, cols], np.arange(len(sentence)))
        assert np.all(ids[seg == 0] == 0) and np.all(pos[seg == 0] == 0)
        # First-fit decreasing never opens a row while an earlier one could take the sentence,
        # so no two rows are both at most half full, and the count is near the lower bound.
        total = sum(len(s) for s in sentences)
        assert len(ids) >= -(-total // row_length)
        fill = (seg > 0).sum(1)
        assert (fill <= row_length // 2).sum() <= 1, fill


def test_packed_attention_keeps_each_sentence_to_itself():
    """The packed rows' attention mask (`attention_keep`, from Flax's mask helpers) against
    numpy: query i sees key j when both are tokens of the same sentence; padding sees nothing."""
    rows = pack([np.ones(n, np.int32) for n in (3, 5, 2, 7, 1, 4)], 8, num_rows=4)
    seg = rows["segment_ids"]
    want = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)
    keep = np.asarray(attention_keep(None, jnp.asarray(seg)))
    assert keep.shape == (4, 1, 8, 8) and keep.dtype == bool
    np.testing.assert_array_equal(keep[:, 0], want)
    assert (seg == 0).any() and not keep[:, 0][seg == 0].any()  # padding rows see nothing
    mask = (seg > 0).astype(np.int32)  # padded rows: every query sees every token
    np.testing.assert_array_equal(np.asarray(attention_keep(jnp.asarray(mask)))[:, 0, 0],
                                  mask.astype(bool))


def test_pack_errors_name_the_problem():
    with pytest.raises(ValueError, match="sentence 1 has 9 tokens, more than the row length 8"):
        assign_rows([3, 9], 8)
    with pytest.raises(ValueError, match="need 2 rows of 8 tokens, more than the 1 given"):
        pack([np.ones(5, np.int32), np.ones(5, np.int32)], 8, num_rows=1)
    # Extra rows are padding.
    out = pack([np.ones(5, np.int32)], 8, num_rows=3)
    assert out["input_ids"].shape == (3, 8) and (out["segment_ids"] > 0).sum() == 5


def _real_sentences(tokenizer, data_dir, n=24):
    from bert_jax.cs224n import load_split
    ds = load_split(data_dir / "sts-dev.csv", "sts")
    texts = list(ds["sentence1"][:n // 2]) + list(ds["sentence2"][:n // 2])
    return tokenizer.encode_ids(texts)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_packed_encoder_equals_padded_encoder_on_the_default_model(default_model, tokenizer,
                                                                  data_dir, pooling):
    """Same sentences, dropout off: packed rows give each sentence the embedding (mean pooled or
    [CLS] pooler) and hidden states of a padded pass."""
    config, encoder = default_model
    heads = HeadConfig(pooling=pooling)
    model = MultitaskBert(config, heads)
    params = init_multitask_params(config, heads, jax.random.PRNGKey(0), encoder)
    sentences = _real_sentences(tokenizer, data_dir)
    ids, mask = pad_ids(sentences, max(map(len, sentences)))
    padded = model.apply({"params": params}, ids, mask, method=MultitaskBert.embed)
    packed_rows = pack(sentences, 64)
    assert len(packed_rows["input_ids"]) < len(sentences) / 2  # several sentences per row
    packed = model.apply({"params": params}, packed_rows["input_ids"], packed_rows["segment_ids"],
                         packed_rows["position_ids"], len(sentences),
                         method=MultitaskBert.embed_packed)
    np.testing.assert_allclose(np.asarray(packed), np.asarray(padded), atol=2e-5, rtol=1e-4)
    # Token level: every sentence's last hidden states equal the padded pass's.
    from bert_jax.model import BertModel
    bert = BertModel(config)
    h_pad = bert.apply({"params": encoder}, ids, mask).last_hidden_state
    h_pack = bert.apply({"params": encoder}, packed_rows["input_ids"], None, None,
                        position_ids=packed_rows["position_ids"],
                        segment_ids=packed_rows["segment_ids"],
                        num_segments=len(sentences)).last_hidden_state
    for k, sentence in enumerate(sentences):
        rows, cols = np.nonzero(packed_rows["segment_ids"] == k + 1)
        np.testing.assert_allclose(np.asarray(h_pack)[rows, cols],
                                   np.asarray(h_pad)[k, :len(sentence)], atol=1e-4)


def test_packed_bfloat16_pass_agrees_with_padded_float32(default_model, tokenizer, data_dir):
    """--dtype bfloat16 (the default on GPU/TPU) with packed rows: each sentence's mean-pooled
    embedding has cosine >= 0.999 with the padded float32 pass's, and keeps its own identity
    (closest to its own float32 embedding among all sentences)."""
    config, encoder = default_model
    heads = HeadConfig(pooling="mean")
    params = init_multitask_params(config, heads, jax.random.PRNGKey(0), encoder)
    sentences = _real_sentences(tokenizer, data_dir)
    ids, mask = pad_ids(sentences, max(map(len, sentences)))
    exact = np.asarray(MultitaskBert(config, heads).apply(
        {"params": params}, ids, mask, method=MultitaskBert.embed), np.float64)
    rows = pack(sentences, 64)
    half = MultitaskBert(config, heads, dtype=jnp.bfloat16)
    packed = np.asarray(half.apply({"params": params}, rows["input_ids"], rows["segment_ids"],
                                   rows["position_ids"], len(sentences),
                                   method=MultitaskBert.embed_packed), np.float64)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    similarity = unit(packed) @ unit(exact).T  # [n, n]
    assert np.diag(similarity).min() >= 0.999, np.diag(similarity).min()
    np.testing.assert_array_equal(similarity.argmax(1), np.arange(len(sentences)))
    assert not np.allclose(packed, exact, atol=1e-6)  # it did compute in bfloat16


def _as_packed(batch: Batch, shards: int, row_length: int) -> Batch:
    """A padded multitask batch repacked per shard, independently of the input pipeline."""
    per_shard = []
    sizes = tuple((t.name, len(batch.labels[t.name]) // shards, len(t.sides))
                  for t in builtin_tasks() if t.name in batch.inputs.tasks)
    for s in range(shards):
        sentences = []
        for task, n, _ in sizes:
            for side in batch.inputs[task]:
                ids = side.input_ids[s * n:(s + 1) * n]
                mask = side.attention_mask[s * n:(s + 1) * n]
                sentences += [row[:m.sum()] for row, m in zip(ids, mask)]
        per_shard.append(sentences)
    rows = max(rows_needed([len(x) for x in ss], row_length) for ss in per_shard)
    parts = [pack(ss, row_length, rows) for ss in per_shard]
    packed = PackedInputs(**{k: np.concatenate([p[k] for p in parts]) for k in parts[0]},
                          sizes=sizes)
    return Batch(packed, batch.labels)


@pytest.mark.slow
def test_packed_train_step_equals_padded_train_step():
    """Dropout off: one step on packed rows and one on padded sentences give the same losses,
    gradients' norm and parameters."""
    from tests.test_step import _tiny_setup, synthetic_batch
    from train.optimizer import make_optimizer
    from train.sharding import make_mesh, shard_batch
    from train.step import create_state, make_train_step
    batch = synthetic_batch(np.random.default_rng(5))
    results = []
    for arrays in (batch, _as_packed(batch, 1, 32)):
        model, params, cfg = _tiny_setup()
        mesh = make_mesh(jax.devices()[:1])
        tx = make_optimizer(cfg, 10)
        step = make_train_step(model, tx, mesh, deterministic=True)
        state, metrics = step(create_state(params, tx, 0, mesh), shard_batch(arrays, mesh))
        results.append((jax.device_get(state.params), jax.device_get(metrics)))
    (p_pad, m_pad), (p_pack, m_pack) = results
    for key in ("loss", "loss_sst", "loss_para", "loss_sts", "grad_norm"):
        assert float(m_pack[key]) == pytest.approx(float(m_pad[key]), rel=1e-5), key
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), p_pad, p_pack))
    assert max(diffs) < 1e-5  # of updates of size lr = 1e-3 (Adam: ~lr per parameter)


@pytest.mark.slow
def test_the_pipeline_packs_the_real_data_with_little_padding(data_dir, tokenizer):
    """On the real training files: the planned layout covers every step of a 10-epoch run (no
    shape compiles after the plan), each of 4 devices' rows hold its own examples in segment
    order (also when 2 processes build their halves), and on one device packing pads far less
    than a shared padded length."""
    from bert_jax.data import load_task
    from train.input_pipeline import (epoch_plan, make_step_batch, plan_layout, steps_per_epoch)
    cfg = TrainConfig()
    train = {t: load_task(data_dir, t, "train", tokenizer, skip_bad_rows=True)
             for t in cfg.tasks}
    total = cfg.epochs * steps_per_epoch(train, cfg)
    layout = plan_layout(train, cfg, total, shards=4)
    assert layout.packed and layout.num_shapes() <= 2 * cfg.num_buckets
    rows_for = dict(layout.row_buckets)
    assert set(rows_for) == {cfg.pack_length, cfg.max_length}
    one_device = plan_layout(train, cfg, total)
    padded_layout = plan_layout(train, cfg.replace(pack=False), total)
    plan = epoch_plan(train, cfg, 3)
    real = positions = padded_positions = 0
    for i in range(0, len(plan), 40):
        step = plan[i]
        arrays = make_step_batch(train, step, layout).arrays
        rows, length = arrays.inputs.input_ids.shape
        assert rows % 4 == 0 and rows // 4 in rows_for[length]
        seg = arrays.inputs.segment_ids
        shard = rows // 4
        for s in range(4):  # device s holds examples s*2 .. s*2+1 of each task, in order
            part = seg[s * shard:(s + 1) * shard]
            expected = [train[t].ids1[j] if k == "1" else train[t].ids2[j]
                        for t in cfg.tasks for k in train[t].spec.sides
                        for j in step[t][s * 2:(s + 1) * 2]]
            assert part.max() == len(expected)
            for k, sentence in enumerate(expected, start=1):
                got = arrays.inputs.input_ids[s * shard:(s + 1) * shard][part == k]
                np.testing.assert_array_equal(got, sentence)
        for t in cfg.tasks:
            labels = arrays.labels[t]
            np.testing.assert_array_equal(labels, train[t].labels[step[t]].astype(labels.dtype))
        packed = make_step_batch(train, step, one_device).arrays.inputs.segment_ids
        # Two processes of two devices each: same shapes, and together the one-process arrays.
        halves = [make_step_batch(train, step, layout, process_index=p, process_count=2).arrays
                  for p in range(2)]
        assert all(h.inputs.sizes == arrays.inputs.sizes for h in halves)  # static, per device
        jax.tree.map(lambda value, *parts: np.testing.assert_array_equal(np.concatenate(parts),
                                                                         value), arrays, *halves)
        real += int((packed > 0).sum())
        positions += packed.size
        padded = make_step_batch(train, step, padded_layout).arrays
        padded_positions += sum(s.attention_mask.size for _, _, s in padded.inputs.sides())
    # One device: about 8% padding packed, over 50% with one shared padded length per step.
    assert 1 - real / positions < 0.15
    assert 1 - real / padded_positions > 0.4


def test_cudnn_attention_refuses_packed_rows():
    with pytest.raises(ValueError, match="--no-pack"):
        TrainConfig(attention_impl="cudnn")
    TrainConfig(attention_impl="cudnn", pack=False)
